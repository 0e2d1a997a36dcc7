"""Pure pieces of the controller: the non-finite abort rule and the rollout metrics."""

from __future__ import annotations

import math

import pytest
import torch

from grpo_dist.faults import TrainingAborted
from grpo_dist.scored_batch import rollout_metrics
from grpo_dist.train_batch import check_nonfinite
from grpo_dist.types import Completion, Prompt, RolloutGroup, ScoredGroup


def test_abort_after_k_consecutive_nonfinite_steps() -> None:
    check_nonfinite(5, {"consecutive_nonfinite": 1.0}, 2)  # one skipped update: carry on
    check_nonfinite(5, {}, 2)
    with pytest.raises(TrainingAborted, match=r"non-finite in 2 consecutive steps.*max_nonfinite_steps = 2"):
        check_nonfinite(6, {"consecutive_nonfinite": 2.0}, 2)


def _scored(rewards: list[float], valid: list[bool], lengths: list[int], reasons: list[str]) -> ScoredGroup:
    prompt = Prompt(prompt_id=0, token_ids=[1], text="p")
    comps = [Completion(list(range(n)), [0.0] * n, r, "x") for n, r in zip(lengths, reasons)]  # type: ignore[arg-type]
    return ScoredGroup(RolloutGroup(prompt, comps, 0, 0), rewards, {"em": rewards}, valid, {"em": valid.count(False)})


def test_rollout_metrics_hand_values() -> None:
    nan = math.nan
    groups = [
        _scored([1.0, 0.0, 1.0, 0.0], [True] * 4, [2, 4, 2, 8], ["stop", "stop", "stop", "length"]),
        _scored([1.0, 1.0, nan, 1.0], [True, True, False, True], [1, 1, 1, 1], ["stop"] * 4),
    ]
    rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float64)
    valid = torch.tensor([g.valid for g in groups])
    m = rollout_metrics(groups, valid, rewards)
    assert m["reward/mean"] == pytest.approx(5 / 7)
    assert m["reward/frac_zero_std"] == 0.5  # the second group's valid rewards are all 1
    assert m["response_length/mean"] == pytest.approx(20 / 8)
    assert m["response_length/clip_frac"] == pytest.approx(1 / 8)
    assert m["reward/num_masked_samples"] == 1
    assert m["reward/em"] == pytest.approx(5 / 7)
    assert m["reward/em/failures"] == 1
