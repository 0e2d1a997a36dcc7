"""User-style reward functions for the reward tests, imported by path (``reward_fixtures:<name>``).

They live in their own module (not a ``test_*`` file, so pytest does not collect it) because the scorer's
child process imports functions by ``module:function``, exactly as it would a user's. ``behave`` and
``batched_behave`` misbehave on command, chosen by the completion text, so one scorer can meet a raise,
a hang, a crash and each kind of invalid output without restarting the test.
"""

from __future__ import annotations

import math
import os
import signal
import time
from fractions import Fraction
from typing import Any

import numpy as np

not_callable = 42


def length(
    data_source: str | None,
    solution_str: str,
    ground_truth: str | None,
    extra_info: dict[str, Any],
    *,
    scale: float = 1.0,
) -> float:
    """A well-behaved reward: the completion's length in characters, times ``scale``."""
    return scale * len(solution_str)


_NORMAL = object()


def _misbehave(command: str) -> Any:
    """What ``behave`` returns (or does) for a command; ``_NORMAL`` when the text is not a command."""
    if command == "raise":
        raise RuntimeError("boom")
    if command == "hang":
        time.sleep(3600)
    if command == "spin":  # a hang that holds the GIL: only a kill stops it
        while True:
            pass
    if command == "exit":
        os._exit(3)
    if command == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    outputs: dict[str, Any] = {
        "nan": math.nan,
        "inf": math.inf,
        "str": "1.0",
        "bool": True,
        "none": None,
        "list": [1.0],
        "int": 7,
        "numpy": np.float32(0.25),
        "numpy_int": np.int64(3),
        "numpy_bool": np.bool_(True),
        "fraction": Fraction(1, 4),
    }
    return outputs.get(command, _NORMAL)


def behave(data_source: str | None, solution_str: str, ground_truth: str | None, extra_info: dict[str, Any]) -> Any:
    """``len(solution_str)``, unless the text is a command (see ``_misbehave``)."""
    out = _misbehave(solution_str)
    return float(len(solution_str)) if out is _NORMAL else out


def batched_behave(
    data_sources: list[str | None],
    solution_strs: list[str],
    ground_truths: list[str | None],
    extra_infos: list[dict[str, Any]],
) -> Any:
    """Batched ``len`` per sample; a command in any text changes the whole call."""
    if "hang" in solution_strs:
        time.sleep(3600)
    if "raise" in solution_strs:
        raise RuntimeError("batch boom")
    if "exit" in solution_strs:
        os._exit(4)
    if "short" in solution_strs:
        return [0.0] * (len(solution_strs) - 1)
    if "scalar" in solution_strs:
        return 1.0
    if "array" in solution_strs:
        return np.arange(len(solution_strs), dtype=np.float64)
    return [math.nan if s == "nan" else float(len(s)) for s in solution_strs]


def with_context(
    data_source: str | None,
    solution_str: str,
    ground_truth: str | None,
    extra_info: dict[str, Any],
    *,
    response_length: int,
    max_response_length: int,
    finish_reason: str,
    prompt: str,
) -> float:
    """Packs every context parameter into one number so a test can check each was filled."""
    return response_length + 100 * max_response_length + 10_000 * (finish_reason == "length") + 100_000 * len(prompt)


def batched_context(
    data_sources: list[str | None],
    solution_strs: list[str],
    ground_truths: list[str | None],
    extra_infos: list[dict[str, Any]],
    *,
    response_length: list[int],
    max_response_length: int,
) -> list[float]:
    return [n / max_response_length for n in response_length]


def from_row(data_source: str | None, solution_str: str, ground_truth: str | None, extra_info: dict[str, Any]) -> float:
    """Reads the row fields, to check they reach the function unchanged."""
    assert data_source == "unit/test", data_source
    return float(extra_info["bonus"]) + (1.0 if solution_str == ground_truth else 0.0)


def needs_kwarg(
    data_source: str | None, solution_str: str, ground_truth: str | None, extra_info: dict[str, Any], *, required: int
) -> float:
    return float(required)


def takes_any(
    data_source: str | None, solution_str: str, ground_truth: str | None, extra_info: dict[str, Any], **kwargs: Any
) -> float:
    return float(len(kwargs))


def sleepy(data_source: str | None, solution_str: str, ground_truth: str | None, extra_info: dict[str, Any]) -> float:
    """Sleeps for the number of seconds written in the completion, then returns 1.0."""
    time.sleep(float(solution_str))
    return 1.0
