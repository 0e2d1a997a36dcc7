"""Metric names: constants for the names code reads back (the report, the progress bar, tests, benchmarks),
and the table of names that changed.

Every name is hierarchical, ``group/name``. A training step's record in ``metrics.jsonl`` holds::

    reward/*           mean, std, frac_zero_std, num_masked_samples, <fn> and <fn>/failures per reward function
    response_length/*  mean, max, clip_frac
    learner/*          loss, grad_norm, lr, num_skipped_updates, loss_tokens, padding figures, and every figure
                       of ``algo.policy_loss`` (pg_loss, kl, approx_kl, clip_fraction, entropy, ratio_mean, ...)
    rollout_corr/*     rollout/learner mismatch (``algo.rollout_correction``)
    timing/*_s         seconds per phase; throughput/*, weights/version, rollout/*, data/*, sync/*, faults/*

and an evaluation's record ``eval/*`` (``eval/pass@1``, ``eval/pass@k``, ...) and ``timing/eval_s``.

Renamed metrics (``DEPRECATED_METRIC_NAMES``): in this release ``MetricsLogger`` still writes each one's old
flat name as well, into ``metrics.jsonl`` only (TensorBoard and wandb get the new names alone); the old names
stop being written in ``DEPRECATED_NAMES_REMOVED_IN``. Readers (``read_metrics``, the run report) go through
``upgrade_record``, so run directories written by older versions keep working.

Standard library only: the run report imports this on a laptop without torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# ------------------------------------------------------------------------------------------------ rollout

REWARD_PREFIX = "reward/"
REWARD_MEAN = "reward/mean"
REWARD_STD = "reward/std"
REWARD_FRAC_ZERO_STD = "reward/frac_zero_std"
"""Fraction of prompt groups whose valid rewards are all equal (no learning signal)."""
REWARD_NUM_MASKED = "reward/num_masked_samples"
REWARD_FAILURES_SUFFIX = "/failures"
"""``reward/<fn>/failures``: how many samples reward function ``<fn>`` failed on."""
REWARD_STATS = (REWARD_MEAN, REWARD_STD, REWARD_FRAC_ZERO_STD, REWARD_NUM_MASKED)
"""The ``reward/*`` figures about the reward as a whole; every other ``reward/<fn>`` is one function's mean."""


def is_reward_component(name: str) -> bool:
    """``name`` is ``reward/<fn>``, one reward function's mean (not a figure of the whole reward, nor failures)."""
    return name.startswith(REWARD_PREFIX) and name not in REWARD_STATS and not name.endswith(REWARD_FAILURES_SUFFIX)


RESPONSE_LEN = "response_length/mean"
RESPONSE_LEN_MAX = "response_length/max"
ROLLOUT_NUM_TURNS_MEAN = "rollout/num_turns_mean"
"""Model turns per trajectory (multi-turn rollouts only)."""
ROLLOUT_TOOL_CALLS_MEAN = "rollout/tool_calls_mean"
"""Tool calls per trajectory (multi-turn rollouts only)."""
ROLLOUT_ENV_S_MEAN = "rollout/env_step_s_mean"
"""Seconds of one environment step (its tool calls), mean over the step's model turns (multi-turn only)."""
ROLLOUT_FORKS_MEAN = "rollout/forks_mean"
"""Times per trajectory its chat template rewrote history and it went on as a new sequence (multi-turn with
``template_check: fork`` only)."""
RESPONSE_CLIP = "response_length/clip_frac"

TOKENS_PER_S = "throughput/tokens_per_s"
SAMPLES_PER_S = "throughput/samples_per_s"
WEIGHTS_VERSION = "weights/version"

# ------------------------------------------------------------------------------------------------ learner

LEARNER_PREFIX = "learner/"
LEARNER_LOSS = "learner/loss"
LEARNER_GRAD_NORM = "learner/grad_norm"
LEARNER_LR = "learner/lr"
LEARNER_NUM_SKIPPED_UPDATES = "learner/num_skipped_updates"
LEARNER_LOSS_TOKENS = "learner/loss_tokens"
"""The tokens of the step's loss (the weight of each rank's token-averaged figures in the group's mean)."""
LEARNER_PADDING_FRACTION = "learner/padding_fraction"
LEARNER_PADDING_SAVED_FRACTION = "learner/padding_saved_fraction"
LEARNER_MICRO_BATCHES_PER_RANK = "learner/micro_batches_per_rank"
LEARNER_OFF_POLICY_FRAC = "learner/off_policy_token_frac"
"""Share of the step's loss tokens sampled with older weights than the ranks held, as the ranks read it
off the batch's per-token versions (0 in ``sync`` mode; compare ``async/token_staleness_mean``)."""
# figures of ``algo.policy_loss``, named by ``learner_metric``; the ones readers plot:
LEARNER_KL = "learner/kl"
LEARNER_CLIP_FRACTION = "learner/clip_fraction"
LEARNER_ENTROPY = "learner/entropy"


def learner_metric(loss_figure: str) -> str:
    """The metric name of one of ``algo.policy_loss``'s figures (``"kl"`` -> ``"learner/kl"``)."""
    return LEARNER_PREFIX + loss_figure


# ------------------------------------------------------------------------------------------------- timing

TIMING_ROLLOUT = "timing/rollout_s"
TIMING_REWARD = "timing/reward_s"
TIMING_TRAIN = "timing/train_s"
TIMING_SYNC = "timing/sync_s"
TIMING_STEP = "timing/step_s"
TIMING_EVAL = "timing/eval_s"
TIMING_TRAINER_IDLE = "timing/trainer_idle_ratio"
"""Share of the step the learner ranks did not compute (logprob passes and the update are their work)."""
TIMING_ROLLOUT_IDLE = "timing/rollout_idle_ratio"
"""Overlapping modes: share of the step the engines, done with the batches ahead, waited for the ranks."""
STEP_PHASES = (("rollout", TIMING_ROLLOUT), ("reward", TIMING_REWARD), ("train", TIMING_TRAIN), ("sync", TIMING_SYNC))
"""The phases of a training step in the order they run, each with its seconds' metric."""

# -------------------------------------------------------------------------------------------------- async

ASYNC_STALENESS_MEAN = "async/staleness_mean"
"""Mean over the step's groups of the learner's version minus the version the group was generated with."""
ASYNC_STALENESS_MAX = "async/staleness_max"
ASYNC_DROPPED_STALE = "async/dropped_stale"
"""Groups of the step older than ``sync.max_staleness`` and masked out of the loss (0 unless the schedule
that admits batches is broken: it is the hard stop behind it)."""
ASYNC_BATCHES_AHEAD = "async/batches_ahead"
"""Batches generated during the step's update (for steps after it)."""
ASYNC_PARTIAL_RATIO = "async/partial_ratio"
"""Share of the step's samples that a partial rollout continued under newer weights than they started with."""
ASYNC_TOKEN_STALENESS_MEAN = "async/token_staleness_mean"
"""Mean over the step's generated tokens of the learner's version minus the version each was sampled with
(below ``async/staleness_mean`` when partial rollouts continued samples under newer weights)."""

# --------------------------------------------------------------------------------------------------- eval

EVAL_PREFIX = "eval/"
EVAL_PASS1 = "eval/pass@1"
EVAL_PASS1_SAMPLED = "eval/pass@1_sampled"

# ------------------------------------------------------------------------------------------- deprecations

DEPRECATED_NAMES_REMOVED_IN = "0.3.0"
"""The first version whose ``metrics.jsonl`` no longer carries the old names of ``DEPRECATED_METRIC_NAMES``."""

DEPRECATED_METRIC_NAMES: dict[str, str] = {
    "loss": LEARNER_LOSS,
    "grad_norm": LEARNER_GRAD_NORM,
    "lr": LEARNER_LR,
    "num_skipped_updates": LEARNER_NUM_SKIPPED_UPDATES,
    "frac_reward_zero_std": REWARD_FRAC_ZERO_STD,
    **{
        name: learner_metric(name)
        for name in (
            "pg_loss",
            "kl",
            "approx_kl",
            "entropy",
            "clip_fraction",
            "clip_fraction_low",
            "clip_fraction_high",
            "dual_clip_fraction",
            "ratio_mean",
            "ratio_max",
        )
    },
}
"""Old flat name (grpo-dist 0.1.0) -> current name, for every step metric renamed since."""


def upgrade_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` under current names only: an old name's value moves to its new name (where the record has
    no value under the new name already) and the old name is dropped. Readers call this, so that a run
    written by an older version reads like a new one."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        new = DEPRECATED_METRIC_NAMES.get(key)
        if new is None:
            out[key] = value
        elif new not in record:
            out[new] = value
    return out


def with_deprecated_names(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` (current names) with each renamed metric repeated under its old name, after the rest: what
    ``metrics.jsonl`` holds until ``DEPRECATED_NAMES_REMOVED_IN``."""
    old = {o: record[new] for o, new in DEPRECATED_METRIC_NAMES.items() if new in record and o not in record}
    return {**record, **old}
