"""The typed configuration tree of a grpo-dist run.

One pydantic model per component (data, model, rollout, reward, algo, learner, sync, trainer, eval,
cluster, logging). Every field carries a docstring; every model forbids unknown keys and checks types
strictly, so a typo in a YAML file or an override fails before any actor starts, with a message that
names the dotted field, the value and what is allowed.

Modules: ``sections`` and ``algo`` (the sections; ``algo`` with the named presets), ``root`` (``Config``,
the whole run), ``checks`` (checks across sections), ``loading`` (YAML, dotted overrides) and ``errors``
(``ConfigError`` and the wording of every message). This package imports no role package (rollout,
reward, learner, sync): validating a config loads neither Ray nor a model.
"""

from __future__ import annotations

from grpo_dist.config.algo import PRESETS, AlgoConfig, RolloutCorrectionConfig
from grpo_dist.config.checks import (
    BUILTIN_REWARD_NAMES,
    cross_field_errors,
    max_staleness,
    model_context_length,
    segment_tokens,
)
from grpo_dist.config.errors import ConfigError
from grpo_dist.config.loading import apply_overrides, load_config, parse_config, read_yaml
from grpo_dist.config.root import Config
from grpo_dist.config.sections import (
    ClusterConfig,
    DataConfig,
    EvalConfig,
    LearnerConfig,
    LoggingConfig,
    ModelConfig,
    RewardConfig,
    RewardFunctionConfig,
    RolloutConfig,
    SyncConfig,
    TrainerConfig,
    WandbConfig,
)

__all__ = [
    "BUILTIN_REWARD_NAMES",
    "PRESETS",
    "AlgoConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LearnerConfig",
    "LoggingConfig",
    "ModelConfig",
    "RewardConfig",
    "RewardFunctionConfig",
    "RolloutConfig",
    "RolloutCorrectionConfig",
    "SyncConfig",
    "TrainerConfig",
    "WandbConfig",
    "apply_overrides",
    "cross_field_errors",
    "load_config",
    "max_staleness",
    "model_context_length",
    "parse_config",
    "read_yaml",
    "segment_tokens",
]
