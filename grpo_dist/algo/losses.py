"""The GRPO policy loss: clipped importance-weighted surrogate, KL to a reference, entropy bonus.

One function covers the published variants through options rather than separate code paths:

* REINFORCE with group baselines (``old_logprobs=None``): on-policy, one gradient step per rollout.
* PPO-style clipping (GRPO, DeepSeekMath) with DAPO's asymmetric "clip-higher" bounds and dual clip.
* GSPO (``ratio_level="sequence"``): one length-normalised importance ratio per sequence.
* KL inside the per-token objective (DeepSeekMath) with the k1/k2/k3 estimators of ``kl.py``.
* The aggregation modes of ``aggregation.py`` (DAPO token-mean, GRPO seq-mean-token-mean, Dr. GRPO).
* Rollout-correction weights of ``rollout_correction.py`` (TIS, IcePop, ...) on the policy-gradient term.

Masked-out positions never influence the loss or its gradient: every per-token input is replaced by 0
there with ``where`` before any arithmetic, so padding garbage (even inf or NaN) cannot leak in through
``0 * inf`` in the forward or backward pass.
"""

from __future__ import annotations

import torch

from grpo_dist.algo._checks import check_choice, check_finite_number, check_same_shape
from grpo_dist.algo._masking import masked, masked_max, masked_mean, sample_mean
from grpo_dist.algo.aggregation import aggregate_loss, check_loss_agg_args
from grpo_dist.algo.kl import KL_ESTIMATORS, LOG_RATIO_CLAMP, kl_penalty

RATIO_LEVELS: tuple[str, ...] = ("token", "sequence")


def importance_log_ratio(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    mask: torch.Tensor,
    ratio_level: str = "token",
    sample_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, T]`` log of the importance ratio applied at each token (0 at masked positions).

    ``token``: ``lp - old`` per token (PPO/GRPO). ``sequence`` (GSPO): every token of sequence i gets
    ``log s_i = mean_t (lp - old)`` over its masked tokens, written as ``sg[log s_i] + lp - sg[lp]``.
    That has value ``log s_i`` and gradient ``d lp_t`` at each token, so with per-sequence advantages and
    ``seq-mean-token-mean`` aggregation the loss and its gradient are exactly GSPO's sequence objective
    (``d s_i = s_i * mean_t d lp_t``), and it stays correct if advantages are per-token (GSPO-token).
    Both are clamped to +-``LOG_RATIO_CLAMP`` and the gradient past the clamp is 0: per token for
    ``token``; for ``sequence`` every token of a sequence whose ``|log s_i|`` exceeds the clamp, through the
    indicator in ``sg[clamp(log s_i)] + 1[|log s_i| <= LOG_RATIO_CLAMP] * (lp - sg[lp])`` (at the bound
    itself the gradient is the unclamped one). ``sample_index`` ``[B]``: rows that are segments of one sample
    (a forked trajectory) share its ``log s_i``, the mean over all their tokens.
    """
    check_choice("ratio_level", ratio_level, RATIO_LEVELS)
    valid = mask.bool()  # [B, T]
    token_lr = masked(logprobs - old_logprobs, valid)  # [B, T]
    if ratio_level == "token":
        return token_lr.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    seq_lr = sample_mean(token_lr, valid, sample_index).detach()  # [B, 1]
    inside = (seq_lr.abs() <= LOG_RATIO_CLAMP).to(token_lr.dtype)  # [B, 1]; 0 past the clamp: no gradient
    lp = masked(logprobs, valid)  # [B, T]
    clamped = seq_lr.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, 1]
    return masked(clamped + inside * (lp - lp.detach()), valid)  # [B, T]


def _check_policy_loss_args(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    entropy: torch.Tensor | None,
    rollout_is_weights: torch.Tensor | None,
    sample_index: torch.Tensor | None,
    *,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float | None,
    ratio_level: str,
    kl_coef: float,
    kl_estimator: str,
    entropy_coef: float,
) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must have shape [B, T], got shape {tuple(logprobs.shape)}")
    check_same_shape("mask", mask, "logprobs", logprobs)
    for name, t in (
        ("old_logprobs", old_logprobs),
        ("ref_logprobs", ref_logprobs),
        ("entropy", entropy),
        ("rollout_is_weights", rollout_is_weights),
    ):
        if t is not None:
            check_same_shape(name, t, "logprobs", logprobs)
    if sample_index is not None and tuple(sample_index.shape) != tuple(logprobs.shape[:1]):
        raise ValueError(
            f"sample_index must have shape [B] = {tuple(logprobs.shape[:1])}, got {tuple(sample_index.shape)}"
        )
    if advantages.shape not in (logprobs.shape[:1], logprobs.shape):
        raise ValueError(
            f"advantages has shape {tuple(advantages.shape)}; expected [B] = {tuple(logprobs.shape[:1])} "
            f"(one per sequence) or [B, T] = {tuple(logprobs.shape)} (one per token)"
        )
    check_choice("ratio_level", ratio_level, RATIO_LEVELS)
    check_choice("kl_estimator", kl_estimator, KL_ESTIMATORS)
    check_finite_number("clip_ratio_low", clip_ratio_low, minimum=0.0)
    check_finite_number("clip_ratio_high", clip_ratio_high, minimum=0.0)
    if clip_ratio_c is not None:
        check_finite_number("clip_ratio_c", clip_ratio_c, minimum=1.0, strict=True)
    check_finite_number("kl_coef", kl_coef, minimum=0.0)
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError(f"kl_coef={kl_coef} > 0 needs ref_logprobs (the reference policy's log-probs)")
    check_finite_number("entropy_coef", entropy_coef)
    if entropy_coef != 0 and entropy is None:
        raise ValueError(f"entropy_coef={entropy_coef} != 0 needs entropy (per-token entropies, [B, T])")


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float | None = None,
    loss_agg_mode: str = "token-mean",
    ratio_level: str = "token",
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    max_response_length: int | None = None,
    loss_scale_denominator: float | None = None,
    rollout_is_weights: torch.Tensor | None = None,
    sample_tokens: torch.Tensor | None = None,
    sample_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO loss to minimise and its metrics.

    Shapes: ``logprobs``, ``old_logprobs``, ``ref_logprobs``, ``entropy``, ``mask``: ``[B, T]``;
    ``advantages``: ``[B]`` or ``[B, T]``. Only ``logprobs`` (and ``entropy``, for a bonus) carry gradient;
    old/ref log-probs and advantages are treated as data (detached). ``mask`` is boolean or 0/1.

    Per-token objective (minimised), aggregated by ``loss_agg_mode``:

    * ``old_logprobs=None``: ``-A * lp`` (REINFORCE). Its gradient equals the clipped form's at ratio 1.
    * otherwise ``max(-A * r, -A * clip(r, 1 - clip_ratio_low, 1 + clip_ratio_high))`` with ``r`` the
      importance ratio (per token, or per sequence for ``ratio_level="sequence"``, see
      ``importance_log_ratio``); with ``clip_ratio_c`` (> 1), tokens with ``A < 0`` are further capped at
      ``-A * clip_ratio_c`` (dual clip) so a huge ratio on a bad token cannot dominate the step.
    * ``rollout_is_weights`` ``[B, T]`` (optional, treated as data): the rollout correction's per-token
      weights (``rollout_correction.rollout_is_weights``); each token's policy-gradient term above is
      multiplied by its weight. A weight of 0 drops the token from the numerator while the denominators
      (token or sequence counts) are unchanged, so split invariance holds.
    * ``+ kl_coef * kl_penalty(lp, ref, kl_estimator)`` and ``- entropy_coef * entropy``.

    ``sample_tokens`` ``[B]``: where rows are parts of one sample (a forked multi-turn trajectory), each
    row's sample's masked tokens, so that the ``seq-mean-*`` modes count the sample once
    (``aggregation.py``); ``sample_index`` ``[B]``, which rows share a sample, so that GSPO's sequence ratio
    is the sample's (all of a sample's rows must then be in this batch, as ``learner.work`` plans them).

    ``loss_scale_denominator``: ``None`` normalises by this micro-batch (a plain mean). For gradient
    accumulation and data parallelism pass ``data_parallel_denominator(C, world_size=W)`` where ``C`` is
    the all-reduced sum of ``loss_denominator(mask, loss_agg_mode)`` over the whole mini-batch; then the
    per-micro-batch losses are additive and the averaged gradient is the full mini-batch's (see
    ``aggregation.py``).

    Metrics (python floats, micro-batch-local means over masked tokens, so they can be averaged for
    logging whatever the denominator): ``loss``, ``pg_loss`` (the policy-gradient term aggregated with
    ``loss_agg_mode`` over this micro-batch alone), ``kl`` (mean ``kl_estimator`` value, 0 without
    ref_logprobs), ``approx_kl`` (mean ``0.5 * (lp - old)**2``, the k2 estimate of the drift from the
    behaviour policy; 0 without old_logprobs), ``clip_fraction`` (tokens where the clipped branch is taken
    and differs), ``clip_fraction_low``/``clip_fraction_high`` (the same, split by which bound),
    ``dual_clip_fraction``, ``ratio_mean``, ``ratio_max`` (1.0 when there is nothing to measure),
    ``entropy`` (if given), ``num_tokens``, ``num_sequences`` (non-empty ones).
    """
    _check_policy_loss_args(
        logprobs, old_logprobs, advantages, mask, ref_logprobs, entropy, rollout_is_weights, sample_index,
        clip_ratio_low=clip_ratio_low, clip_ratio_high=clip_ratio_high, clip_ratio_c=clip_ratio_c,
        ratio_level=ratio_level, kl_coef=kl_coef, kl_estimator=kl_estimator, entropy_coef=entropy_coef,
    )  # fmt: skip
    check_loss_agg_args(loss_agg_mode, max_response_length, loss_scale_denominator)
    valid = mask.bool()  # [B, T]
    adv = advantages.detach().to(logprobs.dtype)
    adv = masked(adv.unsqueeze(-1).expand_as(logprobs) if adv.dim() == 1 else adv, valid)  # [B, T]
    lp = masked(logprobs, valid)  # [B, T]

    if old_logprobs is None:
        ratio = torch.ones_like(lp)  # [B, T] for metrics only
        pg = -adv * lp  # [B, T]
        clipped_low = clipped_high = dual = torch.zeros_like(valid)
        approx_kl = lp.new_zeros(())
    else:
        old = masked(old_logprobs.detach().to(lp.dtype), valid)  # [B, T]
        ratio = torch.exp(importance_log_ratio(lp, old, valid, ratio_level, sample_index))  # [B, T]
        pg_unclipped = -adv * ratio  # [B, T]
        pg_clipped = -adv * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)  # [B, T]
        pg = torch.maximum(pg_unclipped, pg_clipped)  # [B, T]
        clipped = valid & (pg_clipped > pg_unclipped)  # [B, T]
        clipped_low = clipped & (ratio < 1.0 - clip_ratio_low)
        clipped_high = clipped & (ratio > 1.0 + clip_ratio_high)
        dual = torch.zeros_like(valid)
        if clip_ratio_c is not None:
            cap = -adv * clip_ratio_c  # [B, T]
            dual = valid & (adv < 0) & (pg > cap)
            pg = torch.where(adv < 0, torch.minimum(pg, cap), pg)
        with torch.no_grad():
            approx_kl = masked_mean(0.5 * (lp - old).square(), valid)
    if rollout_is_weights is not None:
        pg = pg * masked(rollout_is_weights.detach().to(lp.dtype), valid)  # [B, T]

    objective = pg  # [B, T]
    kl = None
    if ref_logprobs is not None:
        ref = masked(ref_logprobs.detach().to(lp.dtype), valid)  # [B, T]
        kl = kl_penalty(lp, ref, kl_estimator)  # [B, T]
        if kl_coef > 0:
            objective = objective + kl_coef * kl
    ent = None
    if entropy is not None:
        ent = masked(entropy.to(lp.dtype), valid)  # [B, T]
        if entropy_coef != 0:
            objective = objective - entropy_coef * ent

    loss = aggregate_loss(
        objective,
        valid,
        loss_agg_mode,
        max_response_length=max_response_length,
        loss_scale_denominator=loss_scale_denominator,
        sample_tokens=sample_tokens,
    )

    with torch.no_grad():
        # every metric stays a tensor until the single .tolist() below: one device sync in total
        metrics_t: dict[str, torch.Tensor] = {
            "loss": aggregate_loss(
                objective, valid, loss_agg_mode, max_response_length=max_response_length, sample_tokens=sample_tokens
            ),
            "pg_loss": aggregate_loss(
                pg, valid, loss_agg_mode, max_response_length=max_response_length, sample_tokens=sample_tokens
            ),
            "kl": masked_mean(kl, valid) if kl is not None else lp.new_zeros(()),
            "approx_kl": approx_kl,
            "clip_fraction": masked_mean((clipped_low | clipped_high).to(lp.dtype), valid),
            "clip_fraction_low": masked_mean(clipped_low.to(lp.dtype), valid),
            "clip_fraction_high": masked_mean(clipped_high.to(lp.dtype), valid),
            "dual_clip_fraction": masked_mean(dual.to(lp.dtype), valid),
            "ratio_mean": torch.where(valid.any(), masked_mean(ratio, valid), lp.new_ones(())),
            "ratio_max": masked_max(ratio, valid, default=1.0),
            "num_tokens": valid.sum().to(lp.dtype),
            "num_sequences": valid.any(dim=-1).sum().to(lp.dtype),
        }
        if ent is not None:
            metrics_t["entropy"] = masked_mean(ent, valid)
        values = torch.stack([v.detach().to(torch.float64) for v in metrics_t.values()]).tolist()
    return loss, dict(zip(metrics_t.keys(), values, strict=True))
