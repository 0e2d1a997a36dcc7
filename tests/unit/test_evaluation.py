"""Evaluation metrics on a fixed set of completions."""

from __future__ import annotations

import math

import pytest

from grpo_dist.evaluation import eval_metrics, pass_at_k
from grpo_dist.reward.builtins import exact_match


def test_pass_at_k_hand_values() -> None:
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))  # 0.5
    assert pass_at_k(4, 2, 3) == 1.0  # fewer than 3 wrong samples: any 3 contain a right one
    with pytest.raises(ValueError, match="k=5"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="num_correct"):
        pass_at_k(4, 5, 1)


def test_eval_metrics_on_fixed_completions() -> None:
    ground_truth = ["12", "7", "100"]
    samples = [["12", "13", "12", "x"], ["8", "8", "8", "8"], ["100", "100", "100", "100"]]
    greedy = ["12", "8", "99"]
    correct = [[exact_match(None, s, gt, None) == 1.0 for s in row] for row, gt in zip(samples, ground_truth)]
    greedy_ok = [exact_match(None, s, gt, None) == 1.0 for s, gt in zip(greedy, ground_truth)]
    m = eval_metrics(correct, [1, 2, 4], greedy=greedy_ok)
    assert m["eval/pass@1"] == pytest.approx(1 / 3)  # greedy: only the first is right
    assert m["eval/pass@1_sampled"] == pytest.approx((2 / 4 + 0 + 1) / 3)
    assert m["eval/pass@2"] == pytest.approx((pass_at_k(4, 2, 2) + 0 + 1) / 3)
    assert m["eval/pass@4"] == pytest.approx(2 / 3)
    assert m["eval/num_prompts"] == 3


def test_eval_metrics_reject_empty() -> None:
    with pytest.raises(ValueError, match="no evaluation prompts"):
        eval_metrics([], [1])
