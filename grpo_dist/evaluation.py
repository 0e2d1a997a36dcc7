"""Held-out evaluation: pass@1 (greedy and sampled) and pass@k with the unbiased estimator."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n is correct
    (Chen et al. 2021): ``1 - C(n - c, k) / C(n, k)``."""
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"num_correct={num_correct} must be within 0..num_samples={num_samples}")
    if not 1 <= k <= num_samples:
        raise ValueError(f"k={k} must be within 1..num_samples={num_samples}")
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - math.comb(num_samples - num_correct, k) / math.comb(num_samples, k)


def eval_metrics(
    correct: Sequence[Sequence[bool]], k_values: Sequence[int], greedy: Sequence[bool] | None = None
) -> dict[str, float]:
    """``correct[p][i]``: sample i of prompt p was right. Returns ``eval/pass@k`` per k (mean over prompts);
    ``eval/pass@1`` is the greedy accuracy when ``greedy`` is given, ``eval/pass@1_sampled`` the mean over
    samples."""
    if not correct:
        raise ValueError("no evaluation prompts")
    out: dict[str, float] = {}
    for k in k_values:
        out[f"eval/pass@{k}"] = sum(pass_at_k(len(c), sum(c), k) for c in correct) / len(correct)
    out["eval/pass@1_sampled"] = sum(sum(c) / len(c) for c in correct) / len(correct)
    if greedy is not None:
        out["eval/pass@1"] = sum(greedy) / len(greedy)
    out["eval/num_prompts"] = float(len(correct))
    return out


def correctness_key(reward_functions: Sequence[Any]) -> str:
    """The reward component that says whether an answer is right: the first built-in ``exact_match``, else
    the first function (``reward.functions`` entries)."""
    for f in reward_functions:
        if f.path is None and f.name == "exact_match":
            return str(f.name)
    return str(reward_functions[0].name)
