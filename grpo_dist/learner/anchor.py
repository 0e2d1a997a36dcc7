"""Which log-probabilities a step's PPO ratio is taken against, its *anchor*: decided once, here, for the
controller (which has the ranks compute what the anchor needs before the update) and for the ranks.

* ``current``: the ranks' own logprobs of the batch as they compute the loss. With one optimizer step per
  training step the policy has not moved by then, so these are exactly the learner's old logprobs, at no
  extra forward pass.
* ``recomputed``: the learner's logprobs computed before the update (several optimizer steps per step).
* ``engine``: the engines' sampling logprobs (``algo.rollout_correction.bypass``, or
  ``learner.recompute_old_logprobs = false``).

With a learner anchor (``current``, ``recomputed``) the learner's weights version is the proximal policy of
decoupled PPO: tokens sampled with older weights (the overlapping modes, partial rollouts) are pulled to
it by the rollout correction, with the engine's logprobs as their behaviour policy (the correction weighs
every token alike: for an on-policy token it only absorbs the kernel mismatch). Which tokens are off-policy
is read off the batch's per-token versions against the version the ranks hold (``on_policy_tokens``, the
``learner/off_policy_token_frac`` figure), not assumed from the mode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

from grpo_dist import algo
from grpo_dist.config import Config

if TYPE_CHECKING:
    from grpo_dist.learner.batch import TrainBatch

__all__ = ["Anchor", "anchor_and_correction", "on_policy_tokens", "ppo_anchor"]

Anchor = Literal["current", "recomputed", "engine"]


def ppo_anchor(cfg: Config) -> Anchor:
    lc, rc = cfg.learner, cfg.algo.rollout_correction
    if rc.bypass or not lc.recompute_old_logprobs:
        return "engine"
    optimizer_steps = lc.ppo_epochs * (cfg.data.train_batch_size // lc.mini_batch_size)
    return "recomputed" if optimizer_steps > 1 else "current"


def on_policy_tokens(versions: torch.Tensor | None, mask: torch.Tensor, *, learner_version: int) -> torch.Tensor:
    """``[n, T]`` bool: the loss-mask tokens sampled with the weights the learner holds (``versions`` None,
    a batch that records none: every token)."""
    valid = mask.bool()
    return valid if versions is None else valid & (versions == learner_version)


def anchor_and_correction(
    lp: torch.Tensor, micro: TrainBatch, cfg: Config, *, reuse_current: bool, measure: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None, algo.MismatchStats | None]:
    """A micro-batch's PPO anchor (old logprobs ``[n, T]``), its rollout-correction weights (``[n, T]``,
    None for mode ``none``) and, if ``measure``, its rollout/learner mismatch statistics.

    The anchor is the learner's own current logprobs ``lp`` when the policy has not moved (``reuse_current``),
    else the recomputed old ones, else (``algo.rollout_correction.bypass``, or no recomputation) the
    engine's. The correction and the mismatch compare the learner's side with the engine's: the anchor,
    or the current logprobs where the anchor is the engine's itself.
    """
    rc = cfg.algo.rollout_correction
    engine_lp = micro.engine_logprobs.to(lp)
    mask = micro.loss_mask.to(lp)
    engine_anchor = not reuse_current and (micro.old_logprobs is None or rc.bypass)
    if reuse_current:
        old = lp.detach()
    elif engine_anchor:
        old = engine_lp
    else:
        assert micro.old_logprobs is not None
        old = micro.old_logprobs.to(lp)
    learner_lp = lp.detach() if engine_anchor else old
    weights, affected = algo.rollout_is_weights(
        learner_lp,
        engine_lp,
        mask,
        mode=rc.mode,
        tis_clip=rc.tis_clip,
        icepop_low=rc.icepop_low,
        icepop_high=rc.icepop_high,
        seq_mask_low=rc.seq_mask_low,
        seq_mask_high=rc.seq_mask_high,
        sample_index=micro.sample_index,
    )
    stats = algo.mismatch_stats(learner_lp, engine_lp, mask, affected) if measure else None
    return old, None if rc.mode == "none" else weights, stats
