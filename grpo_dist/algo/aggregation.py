"""Reducing a per-token objective ``[B, T]`` to the scalar loss, micro-batch and data-parallel safe.

Every mode is written as ``numerator / denominator`` where the numerator is a plain SUM over this
micro-batch's sequences (so it is additive across micro-batches and ranks) and the denominator is a
count: masked tokens for ``token-mean``, sequences for the ``seq-mean-*`` modes.

``loss_agg_mode`` (numerator per sequence i with n_i masked tokens; denominator):

* ``token-mean`` (DAPO): every token weighs the same: ``sum_t v_it``; number of masked tokens.
* ``seq-mean-token-mean`` (DeepSeekMath GRPO): every sequence weighs the same: ``sum_t v_it / n_i``;
  number of sequences.
* ``seq-mean-token-sum``: ``sum_t v_it``; number of sequences.
* ``seq-mean-token-sum-norm`` (Dr. GRPO): ``sum_t v_it / max_response_length``, a constant normaliser that
  removes the length bias of the per-sequence mean; number of sequences.

Sequences with no masked token contribute 0 to the numerator and are NOT counted as sequences, so
padding rows (added to even out micro-batches or ranks) change neither the loss nor the gradient.

Samples of several rows. A forked multi-turn trajectory is one sample in several rows (its segments),
which may land in different micro-batches or ranks. ``sample_tokens`` ``[B]`` gives each row the masked
tokens of its whole sample; in the ``seq-mean-*`` modes a row then counts as ``n_i / sample_tokens_i`` of a
sequence (its rows sum to one) and ``seq-mean-token-mean`` divides by ``sample_tokens_i``: the loss is the
one of the sample as a single sequence. None: every row is a sample of its own.

The micro-batch / data-parallel rule. Averaging per-micro-batch means is not the mean of the
mini-batch when micro-batches hold different token (or sequence) counts, so instead every micro-batch
is divided by the mini-batch's GLOBAL count and the pieces are summed:

1. For each micro-batch, ``loss_denominator(mask, mode)`` gives its count; each rank sums these over
   all micro-batches of the optimizer step, and an all-reduce(SUM) over the data-parallel group gives
   the global count ``C``.
2. Pass ``loss_scale_denominator=data_parallel_denominator(C, world_size=W)`` to every micro-batch's
   loss and call ``backward`` on each one (gradient accumulation sums them).
3. The data-parallel gradient all-reduce AVERAGES over the W ranks (DDP, DeepSpeed and FSDP all do),
   which is why the denominator is ``C / W``: sum over ranks and micro-batches of
   ``grad(numerator_k) / (C / W)``, divided by W, is ``grad(sum numerator) / C``, the gradient of the
   whole mini-batch. If the engine also divides each micro-batch loss by the number of accumulation
   steps (DeepSpeed's ``engine.backward`` does by default), pass that number as ``engine_loss_divisor``.
"""

from __future__ import annotations

import torch

from grpo_dist.algo._checks import check_choice, check_finite_number, check_same_shape

LOSS_AGG_MODES: tuple[str, ...] = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)


def _count(mask: torch.Tensor, loss_agg_mode: str, sample_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Scalar tensor: masked tokens (token-mean) or non-empty sequences (seq-mean-*) in ``mask``, a row of
    a several-row sample counting as its share of it."""
    valid = mask.bool()  # [B, T]
    if loss_agg_mode == "token-mean":
        return valid.sum()
    if sample_tokens is None:
        return valid.any(dim=-1).sum()
    return (valid.sum(dim=-1) / sample_tokens.clamp(min=1)).sum()


def _at_least_one(count: torch.Tensor) -> torch.Tensor:
    """``count``, or 1 where it is 0 (an empty micro-batch's mean is 0); a fractional count stays as it is."""
    return torch.where(count > 0, count, torch.ones_like(count))


def _check_sample_tokens(sample_tokens: torch.Tensor | None, mask: torch.Tensor) -> None:
    if sample_tokens is not None and tuple(sample_tokens.shape) != tuple(mask.shape[:1]):
        shape = tuple(sample_tokens.shape)
        raise ValueError(f"sample_tokens must have shape [B] = {tuple(mask.shape[:1])}, got {shape}")


def loss_denominator(mask: torch.Tensor, loss_agg_mode: str, sample_tokens: torch.Tensor | None = None) -> float:
    """This micro-batch's share of the global loss denominator (see the module docstring for the rule).

    ``token-mean``: the number of masked tokens; ``seq-mean-*``: the number of sequences with at least one
    masked token (with ``sample_tokens``, each row's share of its sample). Sum it over micro-batches and
    all-reduce(SUM) it across ranks.
    """
    check_choice("loss_agg_mode", loss_agg_mode, LOSS_AGG_MODES)
    if mask.dim() != 2:
        raise ValueError(f"mask must have shape [B, T], got shape {tuple(mask.shape)}")
    _check_sample_tokens(sample_tokens, mask)
    return float(_count(mask, loss_agg_mode, sample_tokens))


def data_parallel_denominator(
    global_count: float, *, world_size: int = 1, grads_averaged: bool = True, engine_loss_divisor: int = 1
) -> float:
    """The ``loss_scale_denominator`` every micro-batch of every rank must use.

    ``global_count`` is the all-reduced SUM of ``loss_denominator`` over every micro-batch of every rank for
    one optimizer step. It is clamped to at least 1 so an all-empty mini-batch gives a 0 loss, not 0/0.
    When the gradient all-reduce averages (``grads_averaged``, the default of DDP/DeepSpeed/FSDP) the
    denominator is divided by ``world_size`` to undo that average; an engine that divides each micro-batch
    loss by a constant (``engine_loss_divisor``, e.g. DeepSpeed's gradient_accumulation_steps) is undone
    the same way.
    """
    check_finite_number("global_count", global_count, minimum=0.0)
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be >= 1")
    if engine_loss_divisor < 1:
        raise ValueError(f"engine_loss_divisor={engine_loss_divisor} must be >= 1")
    denominator = max(float(global_count), 1.0)
    if grads_averaged:
        denominator /= world_size
    return denominator / engine_loss_divisor


def check_loss_agg_args(
    loss_agg_mode: str, max_response_length: int | None, loss_scale_denominator: float | None
) -> None:
    """Validate the aggregation options once, before any tensor work."""
    check_choice("loss_agg_mode", loss_agg_mode, LOSS_AGG_MODES)
    if loss_agg_mode == "seq-mean-token-sum-norm" and max_response_length is None:
        raise ValueError(
            "max_response_length is required for loss_agg_mode='seq-mean-token-sum-norm' "
            "(Dr. GRPO divides every sequence's token sum by this constant)"
        )
    if max_response_length is not None and max_response_length < 1:
        raise ValueError(f"max_response_length={max_response_length} must be a positive number of tokens")
    if loss_scale_denominator is not None:
        check_finite_number("loss_scale_denominator", loss_scale_denominator, minimum=0.0, strict=True)


def aggregate_loss(
    values: torch.Tensor,
    mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    *,
    max_response_length: int | None = None,
    loss_scale_denominator: float | None = None,
    sample_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, T] -> []``: reduce a per-token objective over the masked tokens with ``loss_agg_mode``.

    With ``loss_scale_denominator=None`` the micro-batch's own count is used (a plain mean; an empty
    micro-batch gives 0); otherwise the given global denominator is used and the result is this
    micro-batch's additive share of the mini-batch loss. ``sample_tokens`` ``[B]``: rows that are parts of
    one sample (see the module docstring).
    """
    check_loss_agg_args(loss_agg_mode, max_response_length, loss_scale_denominator)
    if values.dim() != 2:
        raise ValueError(f"values must have shape [B, T], got shape {tuple(values.shape)}")
    check_same_shape("mask", mask, "values", values)
    _check_sample_tokens(sample_tokens, mask)
    valid = mask.bool()  # [B, T]
    v = torch.where(valid, values, torch.zeros_like(values))  # [B, T]; where, not *, so NaN/inf pads vanish
    if loss_agg_mode == "token-mean":
        numerator = v.sum()
    else:
        per_seq = v.sum(dim=-1)  # [B]
        if loss_agg_mode == "seq-mean-token-mean":
            tokens = valid.sum(dim=-1) if sample_tokens is None else sample_tokens
            per_seq = per_seq / tokens.clamp(min=1).to(v.dtype)
        elif loss_agg_mode == "seq-mean-token-sum-norm":
            assert max_response_length is not None  # checked above
            per_seq = per_seq / max_response_length
        numerator = per_seq.sum()
    if loss_scale_denominator is None:
        return numerator / _at_least_one(_count(mask, loss_agg_mode, sample_tokens)).to(v.dtype)
    return numerator / loss_scale_denominator
