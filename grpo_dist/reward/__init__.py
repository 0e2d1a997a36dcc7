"""Rewards: built-in reward functions, the process-isolated scorer, and the Ray workers that run it.

``RewardScorer`` scores rollout groups in-process (its reward functions run in a child process it owns);
``RewardPool`` spreads that work over ``reward.num_workers`` Ray actors. See ``scorer`` for the failure
policies and ``builtins`` for the reward-function signature and its context parameters.

The names below are imported on first use (PEP 562), so that importing one light module of this package
(``grpo_dist.reward.builtins``, which ``grpo-dist validate`` and the scorer's child process need) does not
load the scorer, the Ray worker module or the code sandbox.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BUILTINS": "builtins",
    "CONTEXT_PARAMETERS": "builtins",
    "EXTRACT_MODES": "builtins",
    "FunctionSpec": "builtins",
    "context_parameters": "builtins",
    "exact_match": "builtins",
    "extract_answer": "builtins",
    "format_reward": "builtins",
    "overlong": "builtins",
    "parse_number": "builtins",
    "resolve": "builtins",
    "FAILURE_POLICIES": "scorer",
    "RewardFunctionError": "scorer",
    "RewardScorer": "scorer",
    "FAULT_STATS_KEYS": "pool",
    "RewardPool": "pool",
    "RewardWorker": "worker",
    "reward_worker_class": "worker",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
