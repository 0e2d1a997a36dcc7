"""From a step's scored groups to what the learner trains on, and the stop for a run of non-finite updates.

Kept apart from the controller's step loop: these decide *what* a step trains on, the loop decides when.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from grpo_dist.config import Config
from grpo_dist.faults import TrainingAborted
from grpo_dist.scored_batch import ScoredBatch

__all__ = ["check_nonfinite", "prepare_train_batch"]


def prepare_train_batch(scored: ScoredBatch, cfg: Config, learners: Any, *, pad_token_id: int) -> Any:
    """The learner's batch for a step: collated, with the old logprobs recomputed where the PPO anchor needs
    them (several optimizer steps, not bypassed) and the reference logprobs where the KL term needs them."""
    from grpo_dist.learner.anchor import ppo_anchor
    from grpo_dist.learner.batch import collate

    batch = collate(scored.groups, scored.advantages.flatten().float(), pad_token_id=pad_token_id)
    updates: dict[str, Any] = {}
    if ppo_anchor(cfg) == "recomputed":
        updates["old_logprobs"] = learners.compute_logprobs(batch)
    if cfg.algo.kl_coef > 0:
        updates["ref_logprobs"] = learners.compute_logprobs(batch, reference=True)
    return replace(batch, **updates) if updates else batch


def check_nonfinite(step: int, train_metrics: dict[str, float], max_steps: int) -> None:
    """Abort once ``max_steps`` consecutive steps had their update skipped for a non-finite loss/gradient."""
    run = int(train_metrics.get("consecutive_nonfinite", 0))
    if run >= max_steps:
        raise TrainingAborted(
            f"step {step}: the loss or gradient was non-finite in {run} consecutive steps, each update skipped "
            f"(learner.max_nonfinite_steps = {max_steps}); lower learner.lr or check the rewards and data"
        )
