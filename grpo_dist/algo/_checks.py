"""Argument validation shared by the algorithm modules.

User mistakes (a wrong option name, mismatched shapes, an out-of-range coefficient) must surface as a
``ValueError`` that names the argument, the value received and what is allowed, at the call that made
them, instead of as a broadcasting accident or a NaN several steps later.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def check_choice(name: str, value: str, allowed: Iterable[str]) -> None:
    """Reject an option that is not one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values are {list(allowed)}")


def check_same_shape(name: str, tensor: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """Reject ``tensor`` unless its shape equals ``ref``'s (no silent broadcasting)."""
    if tensor.shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)} but must match {ref_name}'s shape {tuple(ref.shape)}")


def check_finite_number(name: str, value: float, *, minimum: float | None = None, strict: bool = False) -> None:
    """Reject a non-finite scalar, or one below ``minimum`` (or equal to it when ``strict``)."""
    if not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number")
    if minimum is None:
        return
    if strict and value <= minimum:
        raise ValueError(f"{name}={value!r} must be > {minimum}")
    if not strict and value < minimum:
        raise ValueError(f"{name}={value!r} must be >= {minimum}")
