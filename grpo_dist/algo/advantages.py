"""Group-relative advantages: GRPO's replacement for a learned value function.

GRPO samples G completions per prompt and uses the group's own rewards as the baseline, so the
advantage of a completion says how much better it was than its siblings. Everything here works on a
``[num_prompts, G]`` view of the rewards; a flat ``[num_prompts * G]`` tensor (groups stored
contiguously, as a rollout batch usually is) is accepted too and the result keeps the input's shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from grpo_dist.algo._checks import check_choice, check_finite_number

BASELINES: tuple[str, ...] = ("mean", "loo")
STD_CORRECTIONS: tuple[int, ...] = (0, 1)
"""Bessel corrections of the group std: 0 is the population std, 1 the sample std (``torch.std``'s default)."""


def _check_std_correction(std_correction: int) -> None:
    if isinstance(std_correction, bool) or std_correction not in STD_CORRECTIONS:
        raise ValueError(
            f"std_correction={std_correction!r} is not supported; allowed values are {list(STD_CORRECTIONS)} "
            "(0: population std, 1: sample std)"
        )


def _as_groups(rewards: torch.Tensor | Sequence[float], group_size: int | None) -> torch.Tensor:
    """Validate ``rewards`` and return them as a floating ``[num_prompts, G]`` tensor (a view if possible)."""
    r = torch.as_tensor(rewards)
    if not r.is_floating_point():
        r = r.to(torch.float32)
    if r.dim() == 2:
        if group_size is not None and group_size != r.shape[1]:
            raise ValueError(
                f"group_size={group_size} does not match rewards of shape {tuple(r.shape)}; for 2-D rewards "
                f"the group size is the second dimension ({r.shape[1]}), so pass group_size=None or {r.shape[1]}"
            )
        groups = r
    elif r.dim() == 1:
        if group_size is None:
            raise ValueError(
                f"group_size is required for flat rewards of shape {tuple(r.shape)}; pass the number of "
                "completions per prompt, or pass rewards shaped [num_prompts, group_size]"
            )
        if group_size < 1 or r.shape[0] % group_size != 0:
            raise ValueError(
                f"group_size={group_size} must be a positive divisor of the number of rewards ({r.shape[0]})"
            )
        groups = r.view(-1, group_size)
    else:
        raise ValueError(
            f"rewards must be 1-D [num_prompts * group_size] or 2-D [num_prompts, group_size], "
            f"got shape {tuple(r.shape)}"
        )
    if groups.shape[1] < 2:
        raise ValueError(
            f"group size {groups.shape[1]} is too small: a group-relative advantage needs at least 2 "
            "completions per prompt (with one, every advantage is 0 and nothing is learned)"
        )
    if groups.numel() > 0 and not bool(torch.isfinite(groups).all()):
        raise ValueError("rewards contain NaN or infinite values; every reward must be finite")
    return groups


def _zero_std(groups: torch.Tensor) -> torch.Tensor:
    """``[P, G] -> [P]`` bool: True where every reward in the group is identical.

    Tested by exact equality rather than ``std == 0`` because the floating-point mean of identical
    values need not equal them, which would leave a tiny non-zero std and tiny non-zero advantages.
    """
    return (groups == groups[:, :1]).all(dim=-1)  # [P]


def compute_advantages(
    rewards: torch.Tensor | Sequence[float],
    group_size: int | None = None,
    *,
    scale_by_std: bool = True,
    eps: float = 1e-6,
    baseline: str = "mean",
    std_correction: int = 0,
) -> torch.Tensor:
    """Group-normalised advantages, same shape as ``rewards``.

    ``baseline="mean"``: ``A_i = r_i - mean(r)`` (GRPO). ``baseline="loo"``: ``A_i = r_i - mean_{j != i} r_j``
    (RLOO's leave-one-out baseline, which keeps the baseline independent of the sample it scores; it equals
    ``G / (G - 1) * (r_i - mean(r))``). With ``scale_by_std`` the result is divided by the group's std plus
    ``eps``: ``sqrt(sum_i (r_i - mean)^2 / (G - std_correction))``, the population std for
    ``std_correction=0`` (ddof 0) or the sample std for ``1`` (ddof 1, ``torch.std``'s default, as verl and
    TRL use); the ddof-1 advantages are ``sqrt((G - 1) / G)`` times the ddof-0 ones (up to ``eps``). Dr. GRPO
    argues for ``scale_by_std=False`` because the division up-weights prompts that are nearly always solved
    or always failed.

    A group whose rewards are all equal carries no learning signal; its advantages are exactly 0 (never
    NaN, never a rounding residue), whatever ``eps`` is.
    """
    check_choice("baseline", baseline, BASELINES)
    check_finite_number("eps", eps, minimum=0.0)
    _check_std_correction(std_correction)
    input_shape = torch.as_tensor(rewards).shape
    r = _as_groups(rewards, group_size)  # [P, G]
    g = r.shape[1]
    mean = r.mean(dim=-1, keepdim=True)  # [P, 1]
    if baseline == "mean":
        adv = r - mean  # [P, G]
    else:
        loo_mean = (r.sum(dim=-1, keepdim=True) - r) / (g - 1)  # [P, G]
        adv = r - loo_mean
    if scale_by_std:
        std = r.std(dim=-1, correction=std_correction, keepdim=True)  # [P, 1]
        adv = adv / (std + eps)
    adv = torch.where(_zero_std(r).unsqueeze(-1), torch.zeros_like(adv), adv)  # [P, G]
    return adv.reshape(input_shape)


def group_reward_std(
    rewards: torch.Tensor | Sequence[float], group_size: int | None = None, *, std_correction: int = 0
) -> torch.Tensor:
    """``[num_prompts]`` std of each group's rewards, as used by ``scale_by_std``: population (ddof 0) for
    ``std_correction=0``, sample (ddof 1) for ``1``; exactly 0 for a group of identical rewards."""
    _check_std_correction(std_correction)
    r = _as_groups(rewards, group_size)  # [P, G]
    std = r.std(dim=-1, correction=std_correction)  # [P]
    return torch.where(_zero_std(r), torch.zeros_like(std), std)


def zero_std_group_mask(rewards: torch.Tensor | Sequence[float], group_size: int | None = None) -> torch.Tensor:
    """``[num_prompts]`` bool, True for groups whose rewards are all identical.

    Such groups have zero advantage and contribute no policy gradient: their mean is the metric
    ``reward/frac_zero_std``, and DAPO's dynamic sampling drops them and samples more prompts.
    """
    return _zero_std(_as_groups(rewards, group_size))


def masked_group_advantages(
    rewards: torch.Tensor,
    valid: torch.Tensor,
    *,
    scale_by_std: bool = True,
    eps: float = 1e-6,
    baseline: str = "mean",
    std_correction: int = 0,
) -> torch.Tensor:
    """``[P, G]`` advantages where only ``valid`` samples form each group's statistics.

    A sample masked by the reward failure policy has no reward (NaN): it must neither shift its group's
    baseline nor receive a gradient, so its advantage is 0 and the group is normalised over the valid
    samples alone (G in the std is the number of valid samples). A group with fewer than 2 valid samples
    has no relative signal: all zeros (never the NaN a sample std of one value would give).
    """
    _check_std_correction(std_correction)
    r = torch.as_tensor(rewards, dtype=torch.float64)  # [P, G]
    ok = torch.as_tensor(valid, dtype=torch.bool)  # [P, G]
    if r.shape != ok.shape or r.dim() != 2:
        raise ValueError(f"rewards {tuple(r.shape)} and valid {tuple(ok.shape)} must both be [num_prompts, G]")
    out = torch.zeros_like(r)
    full = ok.all(dim=-1)  # [P] the common case: one batched call
    if full.any():
        out[full] = compute_advantages(
            r[full], scale_by_std=scale_by_std, eps=eps, baseline=baseline, std_correction=std_correction
        )
    for p in torch.nonzero(~full).flatten().tolist():
        idx = torch.nonzero(ok[p]).flatten()
        if idx.numel() >= 2:
            out[p, idx] = compute_advantages(
                r[p, idx],
                idx.numel(),
                scale_by_std=scale_by_std,
                eps=eps,
                baseline=baseline,
                std_correction=std_correction,
            )
    return out
