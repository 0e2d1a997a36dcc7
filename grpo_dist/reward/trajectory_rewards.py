"""Rewards of multi-turn trajectories: what the environment said at each step, read from ``trajectory``.

``trajectory`` is a context parameter the scorer fills for every sample: the list of its turns (the model's
text and token count, the environment's messages, the step reward, the tool calls), empty for a
single-turn answer. Any reward function may declare it; ``env_reward`` is the built-in that turns the
environment's step rewards into a reward component (``sum`` or ``last``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ENV_REWARD_MODES = ("sum", "last")


def env_reward(
    data_source: str | None,
    solution_str: str,
    ground_truth: str | None,
    extra_info: Mapping[str, Any] | None,
    *,
    trajectory: Sequence[Mapping[str, Any]],
    mode: str = "sum",
) -> float:
    """The environment's step rewards of a trajectory, summed (``mode: sum``) or the last one (``last``);
    0 for an answer without turns."""
    del data_source, solution_str, ground_truth, extra_info
    if mode not in ENV_REWARD_MODES:
        raise ValueError(f"env_reward: mode = {mode!r}: expected one of {list(ENV_REWARD_MODES)}")
    rewards = [float(t.get("reward", 0.0)) for t in trajectory]
    if not rewards:
        return 0.0
    return sum(rewards) if mode == "sum" else rewards[-1]


def check_env_reward(kwargs: Mapping[str, Any], where: str, max_response_length: int | None) -> None:
    if kwargs.get("mode", "sum") not in ENV_REWARD_MODES:
        raise ValueError(f"{where}.kwargs.mode = {kwargs['mode']!r}: expected one of {list(ENV_REWARD_MODES)}")
