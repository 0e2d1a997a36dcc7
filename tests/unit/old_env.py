"""An environment written against the first interface (``reset(prompt)``, no seed), for the refusal test."""

from __future__ import annotations

from grpo_dist.envs import Environment, EnvReply, ModelTurn
from grpo_dist.types import Prompt


class OldEnv(Environment):
    def reset(self, prompt: Prompt) -> None:  # type: ignore[override]
        pass

    def step(self, turn: ModelTurn) -> EnvReply:
        return EnvReply(done=True)
