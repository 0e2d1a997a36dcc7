"""Pure-torch GRPO algorithm core: advantages, log-probs, KL estimators, rollout correction and the policy loss.

Nothing here knows about Ray, vLLM or DeepSpeed; the learner and the rollout code call these functions
on plain tensors, which keeps the maths unit-testable on a CPU.
"""

from __future__ import annotations

from grpo_dist.algo.advantages import (
    BASELINES,
    STD_CORRECTIONS,
    compute_advantages,
    group_reward_std,
    masked_group_advantages,
    zero_std_group_mask,
)
from grpo_dist.algo.aggregation import (
    LOSS_AGG_MODES,
    aggregate_loss,
    data_parallel_denominator,
    loss_denominator,
)
from grpo_dist.algo.kl import KL_ESTIMATORS, LOG_RATIO_CLAMP, kl_penalty
from grpo_dist.algo.logprobs import DEFAULT_CHUNK_SIZE, sequence_logprob_sums, token_entropy, token_logprobs
from grpo_dist.algo.losses import RATIO_LEVELS, importance_log_ratio, policy_loss
from grpo_dist.algo.rollout_correction import (
    CORRECTION_MODES,
    MismatchStats,
    mismatch_stats,
    rollout_is_weights,
    rollout_log_ratio,
)

__all__ = [
    "BASELINES",
    "CORRECTION_MODES",
    "DEFAULT_CHUNK_SIZE",
    "KL_ESTIMATORS",
    "LOG_RATIO_CLAMP",
    "LOSS_AGG_MODES",
    "RATIO_LEVELS",
    "STD_CORRECTIONS",
    "MismatchStats",
    "aggregate_loss",
    "compute_advantages",
    "data_parallel_denominator",
    "group_reward_std",
    "importance_log_ratio",
    "kl_penalty",
    "loss_denominator",
    "masked_group_advantages",
    "mismatch_stats",
    "policy_loss",
    "rollout_is_weights",
    "rollout_log_ratio",
    "sequence_logprob_sums",
    "token_entropy",
    "token_logprobs",
    "zero_std_group_mask",
]
