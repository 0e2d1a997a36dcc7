"""A user reward function imported by path in the integration tests (``tests.integration.reward_fns:...``).

It rewards digits, so that even a random-init model gets rewards that differ within a group and the
policy gradient is not zero.
"""

from __future__ import annotations

from typing import Any


def digit_fraction(data_source: str | None, solution_str: str, ground_truth: str | None, extra_info: Any) -> float:
    return sum(ch.isdigit() for ch in solution_str) / max(1, len(solution_str))
