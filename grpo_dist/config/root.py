"""``Config``: the whole run, one field per section, checked across sections once every section is valid."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import Field, model_validator

from grpo_dist.config.algo import AlgoConfig
from grpo_dist.config.base import Section
from grpo_dist.config.checks import cross_field_errors
from grpo_dist.config.sections import (
    ClusterConfig,
    DataConfig,
    EvalConfig,
    LearnerConfig,
    LoggingConfig,
    ModelConfig,
    RewardConfig,
    RolloutConfig,
    SyncConfig,
    TrainerConfig,
)


class Config(Section):
    """The whole run."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    sync: SyncConfig = Field(default_factory=SyncConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _check_across_sections(self) -> Config:
        errors = cross_field_errors(self)
        if errors:
            raise ValueError("\n".join(errors))
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
