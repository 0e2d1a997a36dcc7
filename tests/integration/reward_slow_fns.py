"""Slow user-style reward functions for the reward-pool fault tests (``reward_slow_fns:<name>``).

A worker can only be caught holding work if its work takes a while: each call here sleeps, so a test has
time to SIGKILL or SIGSTOP the actor mid-batch. A module of its own (not a ``test_*`` file) because the
scorer's child imports reward functions by ``module:function``, as it would a user's.
"""

from __future__ import annotations

import time
from typing import Any

SECONDS_PER_SAMPLE = 0.5


def slow_length(
    data_source: str | None, solution_str: str, ground_truth: str | None, extra_info: dict[str, Any]
) -> float:
    """``len(solution_str)`` after ``SECONDS_PER_SAMPLE`` of sleep: a known reward that takes known time."""
    time.sleep(SECONDS_PER_SAMPLE)
    return float(len(solution_str))
