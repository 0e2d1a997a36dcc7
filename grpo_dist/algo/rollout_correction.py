"""Rollout correction: the engine that sampled a batch is not exactly the policy the learner trains.

The rollout engines and the learner compute a token's log-probability with different kernels, precisions
and batch shapes, so even with identical weights ``pi_engine != pi_learner``: the batch is slightly
off-policy. With the learner's old log-probs ``old`` (the behaviour policy as the learner computes it) and
the engine's sampling log-probs ``engine`` (both after temperature), per loss-mask token:

    r_t = old_t - engine_t            log of the token importance ratio
    rho_t = exp(r_t)                  pi_old / pi_engine (r clamped to +-LOG_RATIO_CLAMP first)

Correction modes give a weight ``w_t`` (detached) that multiplies the token's policy-gradient term:

* ``none``: ``w_t = 1``.
* ``tis`` (truncated importance sampling; Yao et al. 2025, verl's token TIS, TRL's ``token_truncate``):
  ``w_t = min(rho_t, C)`` with ``C = tis_clip``.
* ``icepop`` (IcePop, Ring-1T): a two-sided token mask on the calibrated ratio,
  ``w_t = rho_t if low <= rho_t <= high else 0``.
* ``seq_mask_tis`` (verl's geometric rejection + token TIS): a sequence is kept only if its geometric-mean
  ratio ``g_i = exp(mean_t r_it)`` lies in ``[low, high]``, and each kept token gets the TIS weight:
  ``w_t = 1[low <= g_i <= high] * min(rho_t, C)``.

A token with ``w_t = 0`` leaves the loss's numerator but keeps its place in the denominator (the global
token or sequence count of ``aggregation.py``), as TRL does: the correction never changes a count, so the
loss stays independent of how the batch is split into micro-batches and ranks.

Mismatch metrics (``MismatchStats``) are kept as sums, counts and extrema over loss-mask tokens, so that
micro-batches and ranks merge exactly (sums add, maxima take the max), and are named:

* ``rollout_corr/logp_diff_mean``, ``rollout_corr/logp_diff_max``: mean and max of ``|r_t|``.
* ``rollout_corr/kl_k1`` ``= mean(-r_t)`` and ``rollout_corr/kl_k3`` ``= mean(rho_t - r_t - 1)``: estimates of
  KL(pi_engine || pi_old) from tokens sampled by the engine (verl's ``rollout_corr/kl`` and ``k3_kl``).
* ``rollout_corr/is_ratio_mean``, ``_min``, ``_max``: the raw ``rho_t`` (before truncation or masking).
* ``rollout_corr/frac_clipped``: the fraction of tokens the correction truncated or masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpo_dist.algo._checks import check_choice, check_finite_number, check_same_shape
from grpo_dist.algo._masking import masked, masked_max, sample_mean
from grpo_dist.algo.kl import LOG_RATIO_CLAMP

CORRECTION_MODES: tuple[str, ...] = ("none", "tis", "icepop", "seq_mask_tis")

LOGP_DIFF_MEAN = "rollout_corr/logp_diff_mean"
LOGP_DIFF_MAX = "rollout_corr/logp_diff_max"
KL_K1 = "rollout_corr/kl_k1"
KL_K3 = "rollout_corr/kl_k3"
IS_RATIO_MEAN = "rollout_corr/is_ratio_mean"
IS_RATIO_MIN = "rollout_corr/is_ratio_min"
IS_RATIO_MAX = "rollout_corr/is_ratio_max"
FRAC_CLIPPED = "rollout_corr/frac_clipped"


def _check_logprobs(old_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor) -> None:
    if old_logprobs.dim() != 2:
        raise ValueError(f"old_logprobs must have shape [B, T], got shape {tuple(old_logprobs.shape)}")
    check_same_shape("engine_logprobs", engine_logprobs, "old_logprobs", old_logprobs)
    check_same_shape("mask", mask, "old_logprobs", old_logprobs)


def _check_band(low_name: str, low: float, high_name: str, high: float) -> None:
    check_finite_number(low_name, low, minimum=0.0)
    check_finite_number(high_name, high, minimum=0.0, strict=True)
    if low >= high:
        raise ValueError(f"{low_name}={low!r} must be < {high_name}={high!r}")


def rollout_log_ratio(old_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` detached ``r = old - engine`` at loss-mask tokens, 0 elsewhere (where, so padding garbage
    cannot leak in)."""
    _check_logprobs(old_logprobs, engine_logprobs, mask)
    valid = mask.bool()  # [B, T]
    r = old_logprobs.detach() - engine_logprobs.detach().to(old_logprobs.dtype)  # [B, T]
    return masked(r, valid)


def rollout_is_weights(
    old_logprobs: torch.Tensor,
    engine_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    mode: str = "tis",
    tis_clip: float = 2.0,
    icepop_low: float = 0.5,
    icepop_high: float = 5.0,
    seq_mask_low: float = 0.999,
    seq_mask_high: float = 1.001,
    sample_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights, affected)``, both ``[B, T]``: the detached correction weight ``w_t`` of ``mode`` (see the
    module docstring; 0 outside ``mask``) and a bool, True at loss-mask tokens it truncated or masked.

    Thresholds are inclusive: a ratio exactly at ``tis_clip`` is not truncated, one exactly at a band's
    bound is kept. With ``old == engine`` every mode's weights are exactly 1. ``sample_index`` ``[B]``: rows
    that are segments of one sample (a forked trajectory, all its rows in this batch) share its ``g_i``.
    """
    check_choice("mode", mode, CORRECTION_MODES)
    check_finite_number("tis_clip", tis_clip, minimum=0.0, strict=True)
    _check_band("icepop_low", icepop_low, "icepop_high", icepop_high)
    _check_band("seq_mask_low", seq_mask_low, "seq_mask_high", seq_mask_high)
    valid = mask.bool()  # [B, T]
    r = rollout_log_ratio(old_logprobs, engine_logprobs, mask)  # [B, T]
    rho = torch.exp(r.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [B, T]; 1 outside mask
    zeros = torch.zeros_like(rho)
    if mode == "none":
        return torch.where(valid, torch.ones_like(rho), zeros), torch.zeros_like(valid)
    if mode == "icepop":
        keep = (rho >= icepop_low) & (rho <= icepop_high)  # [B, T]
        return torch.where(valid & keep, rho, zeros), valid & ~keep
    truncated = valid & (rho > tis_clip)  # [B, T]
    weights = torch.where(valid, rho.clamp(max=tis_clip), zeros)  # [B, T]
    if mode == "tis":
        return weights, truncated
    geo = torch.exp(sample_mean(r, valid, sample_index).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [B, 1]
    keep_seq = (geo >= seq_mask_low) & (geo <= seq_mask_high)  # [B, 1]
    return torch.where(keep_seq, weights, zeros), valid & (truncated | ~keep_seq)


@dataclass(frozen=True)
class MismatchStats:
    """Additive statistics of the rollout/learner mismatch over loss-mask tokens.

    ``sums`` ``[6]`` float64: tokens, ``sum |r|``, ``sum -r``, ``sum (rho - r - 1)``, ``sum rho``, tokens
    truncated or masked. ``maxima`` ``[3]`` float64: ``max |r|``, ``max rho``, ``-min rho`` (``-inf`` when
    there is no token). Merge by adding ``sums`` and taking the elementwise max of ``maxima`` (across ranks:
    all-reduce SUM and MAX), then read the figures with ``metrics()``.
    """

    sums: torch.Tensor  # [6]
    maxima: torch.Tensor  # [3]

    @staticmethod
    def empty(device: torch.device | str | None = None) -> MismatchStats:
        return MismatchStats(
            torch.zeros(6, dtype=torch.float64, device=device),
            torch.full((3,), float("-inf"), dtype=torch.float64, device=device),
        )

    def merged(self, other: MismatchStats) -> MismatchStats:
        sums = self.sums + other.sums.to(self.sums)
        return MismatchStats(sums, torch.maximum(self.maxima, other.maxima.to(self.maxima)))

    def metrics(self) -> dict[str, float]:
        """The ``rollout_corr/*`` figures (one device sync); with no token: diffs and KL 0, ratios 1."""
        values = torch.cat([self.sums, self.maxima]).tolist()
        num, abs_sum, k1_sum, k3_sum, ratio_sum, num_affected, abs_max, ratio_max, neg_ratio_min = values
        if num == 0:
            return {
                LOGP_DIFF_MEAN: 0.0,
                LOGP_DIFF_MAX: 0.0,
                KL_K1: 0.0,
                KL_K3: 0.0,
                IS_RATIO_MEAN: 1.0,
                IS_RATIO_MIN: 1.0,
                IS_RATIO_MAX: 1.0,
                FRAC_CLIPPED: 0.0,
            }
        return {
            LOGP_DIFF_MEAN: abs_sum / num,
            LOGP_DIFF_MAX: abs_max,
            KL_K1: k1_sum / num,
            KL_K3: k3_sum / num,
            IS_RATIO_MEAN: ratio_sum / num,
            IS_RATIO_MIN: -neg_ratio_min,
            IS_RATIO_MAX: ratio_max,
            FRAC_CLIPPED: num_affected / num,
        }


def mismatch_stats(
    old_logprobs: torch.Tensor,
    engine_logprobs: torch.Tensor,
    mask: torch.Tensor,
    affected: torch.Tensor | None = None,
) -> MismatchStats:
    """This micro-batch's ``MismatchStats`` (``affected``: the tokens the correction truncated or masked,
    as returned by ``rollout_is_weights``; None counts none). Computed in float64; ``rho`` and k3 use ``r``
    clamped to +-``LOG_RATIO_CLAMP``, ``|r|`` does not."""
    r = rollout_log_ratio(old_logprobs, engine_logprobs, mask).to(torch.float64)  # [B, T]
    valid = mask.bool()  # [B, T]
    if affected is not None:
        check_same_shape("affected", affected, "mask", mask)
    rc = r.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    rho = torch.exp(rc)  # [B, T]
    zeros = torch.zeros_like(r)
    num_affected = (valid & affected.bool()).sum() if affected is not None else valid.new_zeros((), dtype=torch.long)
    sums = torch.stack(
        [
            valid.sum().to(torch.float64),
            r.abs().sum(),
            (-r).sum(),
            torch.where(valid, rho - rc - 1.0, zeros).sum(),
            torch.where(valid, rho, zeros).sum(),
            num_affected.to(torch.float64),
        ]
    )  # [6]
    inf = float("-inf")  # no token: -inf, the identity of the MAX merge
    maxima = torch.stack([masked_max(x, valid, default=inf) for x in (r.abs(), rho, -rho)])  # [3]
    return MismatchStats(sums, maxima)
