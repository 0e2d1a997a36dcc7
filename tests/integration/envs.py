"""Environments the integration tests name by import path (as a user names theirs)."""

from __future__ import annotations

from grpo_dist.envs import Environment, EnvReply, ModelTurn
from grpo_dist.types import Prompt


class TwoTurns(Environment):
    """Answers the model's first turn with a fixed message, and ends after the second; raises at the turn a
    row's ``extra_info["raise_at_turn"]`` names (a broken environment)."""

    def reset(self, prompt: Prompt, seed: int) -> None:
        self.prompt = prompt

    def step(self, turn: ModelTurn) -> EnvReply:
        if self.prompt.extra_info.get("raise_at_turn") == turn.index:
            raise RuntimeError("the tool broke")
        if turn.index == 0:
            return EnvReply(messages=[{"role": "user", "content": " 12+30="}], reward=0.5)
        return EnvReply(done=True, reward=1.0)
