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

from typing import Literal

import torch

from grpo_dist.config import Config

__all__ = ["Anchor", "on_policy_tokens", "ppo_anchor"]

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
