"""``SingleTurn``: one model answer and done: today's rollout, expressed as an environment."""

from __future__ import annotations

from grpo_dist.envs.base import Environment, EnvReply, ModelTurn
from grpo_dist.types import Prompt


class SingleTurn(Environment):
    def reset(self, prompt: Prompt, seed: int) -> None:
        pass

    def step(self, turn: ModelTurn) -> EnvReply:
        return EnvReply(done=True)
