"""A step's scored groups turned into advantages and rollout metrics: pure functions, no actors.

Also the rule DAPO's dynamic sampling applies to groups: a group whose valid rewards are all equal carries
no learning signal (every advantage is 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from grpo_dist import algo, metric_names
from grpo_dist.config import AlgoConfig
from grpo_dist.run_state import BatchTicket
from grpo_dist.types import ScoredGroup

__all__ = [
    "SampledBatch",
    "ScoredBatch",
    "rollout_metrics",
    "score_batch",
    "split_by_signal",
    "staleness_metrics",
    "zero_std",
]


@dataclass
class SampledBatch:
    """A step's batch as it comes back from the engines and reward workers, with its ticket."""

    ticket: BatchTicket
    groups: list[ScoredGroup]
    timing: dict[str, float]
    """Seconds of its rollout and reward phases."""
    rounds: int
    """Generation rounds (more than one under dynamic sampling)."""
    started: float
    """``time.perf_counter()`` when its sampling began."""
    epoch: int = 0
    """The cursor's epoch once the batch was drawn (what the step reports as ``data/epoch``)."""
    prefetched: bool = False
    """Generated during an earlier step (the overlapping modes): its sampling is not this step's time."""


@dataclass
class ScoredBatch:
    """What one step produced, before it is trained on and logged."""

    groups: list[ScoredGroup]
    advantages: torch.Tensor  # [P, G]
    metrics: dict[str, float]


def score_batch(groups: list[ScoredGroup], algo_cfg: AlgoConfig) -> ScoredBatch:
    """Group-relative advantages over each group's valid samples, and the step's rollout metrics."""
    rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float64)  # [P, G], NaN where invalid
    valid = torch.tensor([g.valid for g in groups], dtype=torch.bool)  # [P, G]
    adv = algo.masked_group_advantages(
        torch.where(valid, rewards, torch.zeros_like(rewards)),
        valid,
        scale_by_std=algo_cfg.norm_adv_by_std,
        eps=algo_cfg.adv_eps,
        baseline=algo_cfg.baseline,
        std_correction=algo_cfg.std_correction,
    )
    return ScoredBatch(groups, adv, rollout_metrics(groups, valid, rewards))


def zero_std(group: ScoredGroup) -> bool:
    """The group's valid rewards are all equal (or fewer than two are valid): no learning signal."""
    values = [r for r, ok in zip(group.rewards, group.valid) if ok]
    return len(values) < 2 or all(v == values[0] for v in values)


def split_by_signal(groups: list[ScoredGroup]) -> tuple[list[ScoredGroup], list[ScoredGroup]]:
    """Groups whose valid rewards differ (a learning signal), and those whose rewards are all equal."""
    keep: list[ScoredGroup] = []
    dropped: list[ScoredGroup] = []
    for g in groups:
        (dropped if zero_std(g) else keep).append(g)
    return keep, dropped


def rollout_metrics(groups: list[ScoredGroup], valid: torch.Tensor, rewards: torch.Tensor) -> dict[str, float]:
    """``reward/*`` and ``response_length/*`` of a step; ``valid`` and ``rewards`` are ``[P, G]``."""
    ok = rewards[valid]
    completions = [c for g in groups for c in g.group.completions]
    lengths = [c.num_model_tokens for c in completions]  # the model's own tokens (a trajectory's tool output not)
    out: dict[str, float] = {
        metric_names.REWARD_MEAN: float(ok.mean()) if ok.numel() else math.nan,
        metric_names.REWARD_STD: float(ok.std(correction=0)) if ok.numel() else math.nan,
        metric_names.REWARD_FRAC_ZERO_STD: sum(zero_std(g) for g in groups) / len(groups),
        metric_names.RESPONSE_LEN: sum(lengths) / len(lengths),
        metric_names.RESPONSE_CLIP: sum(c.finish_reason == "length" for c in completions) / len(lengths),
        metric_names.RESPONSE_LEN_MAX: float(max(lengths)),
        metric_names.REWARD_NUM_MASKED: float((~valid).sum()),
    }
    if any(c.turns for c in completions):
        out[metric_names.ROLLOUT_NUM_TURNS_MEAN] = sum(len(c.turns) for c in completions) / len(completions)
        calls = [sum(int(t.get("tool_calls", 0)) for t in c.turns) for c in completions]
        out[metric_names.ROLLOUT_TOOL_CALLS_MEAN] = sum(calls) / len(completions)
        env_s = [float(t.get("env_s", 0.0)) for c in completions for t in c.turns]
        out[metric_names.ROLLOUT_ENV_S_MEAN] = sum(env_s) / len(env_s) if env_s else 0.0
        if any(c.forks for c in completions):
            out[metric_names.ROLLOUT_FORKS_MEAN] = sum(len(c.forks) for c in completions) / len(completions)
    for name in groups[0].components:
        values = [v for g in groups for v, k in zip(g.components[name], g.valid) if k and math.isfinite(v)]
        out[f"{metric_names.REWARD_PREFIX}{name}"] = sum(values) / len(values) if values else math.nan
        out[f"{metric_names.REWARD_PREFIX}{name}{metric_names.REWARD_FAILURES_SUFFIX}"] = float(
            sum(g.failures.get(name, 0) for g in groups)
        )
    return out


def staleness_metrics(groups: list[ScoredGroup], *, learner_version: int) -> dict[str, float]:
    """How many versions behind ``learner_version`` (the weights the learner updates) the groups were
    generated: 0 in ``sync`` mode, up to 1 in ``one_step_off``, up to ``sync.max_staleness`` in ``async``;
    per token too, and the share of samples a partial rollout continued under newer weights."""
    lags = [learner_version - g.group.weights_version for g in groups]
    completions = [(c, g.group.weights_version) for g in groups for c in g.group.completions]
    token_lags = [  # the model's tokens (an environment's have no version; a fork's have its group's)
        learner_version - v for c, version in completions for v, m in zip(c.versions(version), c.mask()) if m
    ] + [learner_version - version for c, version in completions for f in c.forks for m in f.loss_mask if m]
    return {
        metric_names.ASYNC_STALENESS_MEAN: sum(lags) / len(lags),
        metric_names.ASYNC_STALENESS_MAX: float(max(lags)),
        metric_names.ASYNC_TOKEN_STALENESS_MEAN: sum(token_lags) / max(1, len(token_lags)),
        metric_names.ASYNC_PARTIAL_RATIO: sum(c.is_partial for c, _ in completions) / max(1, len(completions)),
    }
