"""The held-out evaluation of a run: pass@1 greedy, pass@1 over samples and pass@k on ``data.eval_files``.

The controller hands in how to score a list of prompts with its engines and reward workers; this module
says what to sample (``rollout.specs.eval_specs``), how to read correctness off the rewards
(``evaluation.correctness_key``) and what to log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grpo_dist import metric_names
from grpo_dist.config import Config
from grpo_dist.types import Prompt, ScoredGroup

__all__ = ["evaluate"]

Score = Callable[[list[Prompt], Any, str], list[ScoredGroup]]
"""Scored groups of some prompts, sampled with a ``SamplingSpec`` on a seed stream, in prompt order."""


def evaluate(
    cfg: Config, run_dir: Path, prompts: list[Prompt], score: Score, *, step: int, log_name: str
) -> dict[str, float]:
    """The evaluation's metrics at ``step``; its greedy answers go to the rollout log as ``log_name``."""
    from grpo_dist.evaluation import correctness_key, eval_metrics
    from grpo_dist.rollout.specs import eval_specs

    if not prompts:
        raise ValueError("no held-out prompts to evaluate: set data.eval_files")
    t0 = time.perf_counter()
    sampled_spec, greedy_spec = eval_specs(cfg)
    sampled = score(prompts, sampled_spec, "eval")
    greedy = score(prompts, greedy_spec, "eval-greedy")
    key = correctness_key(cfg.reward.functions)
    out = eval_metrics(
        [[r > 0.5 for r in s.components[key]] for s in sampled],
        cfg.eval.k_values,
        greedy=[s.components[key][0] > 0.5 for s in greedy],
    )
    out[metric_names.TIMING_EVAL] = time.perf_counter() - t0
    if cfg.logging.log_rollouts:
        from grpo_dist.rollout_log import rollout_rows, write_rollouts

        zeros = [[0.0] * len(s.rewards) for s in greedy]
        write_rollouts(run_dir, step, rollout_rows(step, greedy, zeros), name=log_name)
    return out
