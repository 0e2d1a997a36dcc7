"""Attention over packed rows, one sequence at a time: transformers' ``sdpa`` without the quadratic mask.

transformers runs a packed row under ``sdpa`` or ``eager`` with a block-diagonal ``[S, S]`` mask: exact,
but the attention then costs ``S^2`` for a row of ``S`` tokens instead of ``sum(len_i^2)`` (8x more for
eight sequences), and on CPU sdpa's masked path keeps the full ``[heads, S, S]`` weights for backward.
flash-attention's varlen kernel avoids that on GPUs where it is installed; this is the same idea with
PyTorch's own kernel, for CPUs and GPUs without it.

It is registered in transformers' attention registry under ``VARLEN_SDPA`` (a supported extension
point). Each layer finds the sequences of the packed row from the ``position_ids`` the model passes down
(a new sequence starts where the position is 0) and runs ``scaled_dot_product_attention`` causally on
each one's queries, keys and values; a sliding window becomes a band mask within its sequence. Any call
that is not a single packed row (padded batches, generation, a soft-capped model) goes to transformers'
``sdpa`` unchanged, so loading a model with it never changes what it computes.
"""

from __future__ import annotations

from typing import Any

import torch

VARLEN_SDPA = "grpo_varlen_sdpa"


def sequence_bounds(position_ids: torch.Tensor | None, length: int) -> list[tuple[int, int]] | None:
    """``[(start, end), ...]`` of the sequences in a single packed row, or None when it is not one."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1:
        return None
    if position_ids.shape[1] != length:
        return None
    starts = torch.nonzero(position_ids[0] == 0).flatten().tolist()
    if not starts or starts[0] != 0:
        return None
    return list(zip(starts, [*starts[1:], length]))


def _band(length: int, window: int, device: torch.device) -> torch.Tensor:
    """``[L, L]`` bool: causal and within ``window`` (query i sees key j when ``0 <= i - j < window``)."""
    i = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None, :]
    return (j <= i) & (i - j < window)


def varlen_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # [1, H, S, D]
    key: torch.Tensor,  # [1, H_kv, S, D]
    value: torch.Tensor,  # [1, H_kv, S, D]
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = sequence_bounds(kwargs.get("position_ids"), query.shape[2])
    unusual = kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None
    if bounds is None or len(bounds) < 2 or unusual or not getattr(module, "is_causal", True):
        if sliding_window is not None:
            kwargs["sliding_window"] = sliding_window
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    p = dropout if module.training else 0.0
    parts = []
    for a, b in bounds:
        mask = None
        if sliding_window is not None and b - a > sliding_window:
            mask = _band(b - a, sliding_window, query.device)
        parts.append(
            torch.nn.functional.scaled_dot_product_attention(
                query[:, :, a:b],
                key[:, :, a:b],
                value[:, :, a:b],
                attn_mask=mask,
                is_causal=mask is None,
                dropout_p=p,
                scale=scaling,
            )
        )
    out = torch.cat(parts, dim=2)  # [1, H, S, D]
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register the attention (and, for its fallback calls, sdpa's mask) with transformers; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_SDPA, sdpa_mask)
    return VARLEN_SDPA
