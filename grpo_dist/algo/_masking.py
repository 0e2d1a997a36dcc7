"""Reductions over the valid (loss-mask) positions of a tensor, shared by the loss and the rollout correction.

``where``, never multiply, so that garbage at masked positions (even inf or NaN) cannot leak in.
"""

from __future__ import annotations

import torch


def masked(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Zero ``x`` outside ``valid`` (where, not multiply: 0 * inf would be NaN)."""
    return torch.where(valid, x, torch.zeros_like(x))


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ``valid`` positions; 0 when there are none."""
    return masked(x, valid).sum() / valid.sum().clamp(min=1).to(x.dtype)


def masked_max(x: torch.Tensor, valid: torch.Tensor, default: float) -> torch.Tensor:
    """Max of ``x`` over ``valid`` positions; ``default`` when there are none (even for B == 0)."""
    if x.numel() == 0:
        return x.new_full((), default)
    largest = torch.where(valid, x, torch.full_like(x, float("-inf"))).amax()
    return torch.where(valid.any(), largest, x.new_full((), default))
