"""Rewards: built-in reward functions, the process-isolated scorer, and the Ray workers that run it.

``RewardScorer`` scores rollout groups in-process (its reward functions run in a child process it owns);
``RewardPool`` spreads that work over ``reward.num_workers`` Ray actors. See ``scorer`` for the failure
policies and ``builtins`` for the reward-function signature and its context parameters.
"""

from __future__ import annotations

from grpo_dist.reward.builtins import (
    BUILTINS,
    CONTEXT_PARAMETERS,
    EXTRACT_MODES,
    FunctionSpec,
    context_parameters,
    exact_match,
    extract_answer,
    format_reward,
    overlong,
    parse_number,
    resolve,
)
from grpo_dist.reward.scorer import FAILURE_POLICIES, RewardFunctionError, RewardScorer
from grpo_dist.reward.worker import RewardPool, RewardWorker, reward_worker_class

__all__ = [
    "BUILTINS",
    "CONTEXT_PARAMETERS",
    "EXTRACT_MODES",
    "FAILURE_POLICIES",
    "FunctionSpec",
    "RewardFunctionError",
    "RewardPool",
    "RewardScorer",
    "RewardWorker",
    "context_parameters",
    "exact_match",
    "extract_answer",
    "format_reward",
    "overlong",
    "parse_number",
    "resolve",
    "reward_worker_class",
]
