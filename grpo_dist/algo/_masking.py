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


def sample_mean(x: torch.Tensor, valid: torch.Tensor, sample_index: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, T] -> [B, 1]``: each row's mean of ``x`` over the ``valid`` positions of its sample (0 where there
    are none). A sample is one row unless ``sample_index`` ``[B]`` says which rows share one (a forked
    multi-turn trajectory's segments, all in this batch): a sequence-level quantity then spans all of them."""
    sums = masked(x, valid).sum(dim=-1)  # [B]
    counts = valid.sum(dim=-1).to(x.dtype)  # [B]
    if sample_index is not None:
        _, local = torch.unique(sample_index, return_inverse=True)  # [B]: 0 .. samples-1
        local = local.to(x.device)
        sums = torch.zeros_like(sums).index_add(0, local, sums)[local]
        counts = torch.zeros_like(counts).index_add(0, local, counts)[local]
    return (sums / counts.clamp(min=1)).unsqueeze(-1)
