"""Metric sinks: jsonl always (NaN as null), TensorBoard event files, wandb in offline mode, plain lines; the
deprecated flat names (still in the jsonl, nowhere else) and reading old files under the new names."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from grpo_dist.config import load_config
from grpo_dist.metric_names import (
    DEPRECATED_METRIC_NAMES,
    DEPRECATED_NAMES_REMOVED_IN,
    LEARNER_LOSS,
    upgrade_record,
    with_deprecated_names,
)
from grpo_dist.metrics import MetricsLogger, read_metrics


def test_jsonl_tensorboard_and_plain_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(None, ["logging.progress=plain"])
    sink = MetricsLogger(cfg, tmp_path, total_steps=3)
    with caplog.at_level(logging.INFO, logger="grpo_dist"):
        sink.log(1, {"reward/mean": 0.5, "learner/loss": float("nan"), "timing/step_s": 1.25})
        sink.log(1, {"eval/pass@1": 0.75})
    sink.close()
    records = read_metrics(tmp_path)
    assert records == [
        {"step": 1, "reward/mean": 0.5, "learner/loss": None, "timing/step_s": 1.25},
        {"step": 1, "eval/pass@1": 0.75},
    ]
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # strict JSON: no NaN tokens
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert "step 1" in caplog.text
    assert "reward=0.5" in caplog.text


def test_tensorboard_events_hold_the_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(None, ["logging.progress=off"])
    sink = MetricsLogger(cfg, tmp_path, total_steps=2)
    sink.log(1, {"reward/mean": 0.25})
    sink.log(2, {"reward/mean": 0.5})
    sink.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(1, 0.25), (2, 0.5)]


def test_wandb_offline_mode_writes_a_local_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(None, ["logging.progress=off", "logging.wandb.enabled=true", "logging.wandb.mode=offline"])
    sink = MetricsLogger(cfg, tmp_path, total_steps=1)
    sink.log(1, {"reward/mean": 0.5})
    sink.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb"))


# ---------------------------------------------------------------------------------------------------------
# deprecated flat names


def _raw_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_deprecation_table_maps_flat_names_to_hierarchical_ones() -> None:
    assert DEPRECATED_NAMES_REMOVED_IN == "0.3.0"
    for old, new in DEPRECATED_METRIC_NAMES.items():
        assert "/" not in old, old
        assert new.count("/") == 1 and new.split("/")[0] in ("learner", "reward"), new
    assert len(set(DEPRECATED_METRIC_NAMES.values())) == len(DEPRECATED_METRIC_NAMES)  # no two olds -> one new
    assert not set(DEPRECATED_METRIC_NAMES) & set(DEPRECATED_METRIC_NAMES.values())
    assert DEPRECATED_METRIC_NAMES["loss"] == LEARNER_LOSS
    assert DEPRECATED_METRIC_NAMES["frac_reward_zero_std"] == "reward/frac_zero_std"


def test_old_names_are_still_written_to_the_jsonl_only(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(None, ["logging.progress=off"])
    sink = MetricsLogger(cfg, tmp_path, total_steps=1)
    current = {new: float(i) for i, new in enumerate(DEPRECATED_METRIC_NAMES.values())}
    sink.log(1, {"reward/mean": 0.5, **current})
    sink.close()
    (line,) = _raw_lines(tmp_path)
    for old, new in DEPRECATED_METRIC_NAMES.items():
        assert line[new] == current[new]
        assert line[old] == line[new], old  # the old name, mapped by the table, holds the same value
    assert list(line)[: len(current) + 2] == ["step", "reward/mean", *current]  # new names first, old after
    (record,) = read_metrics(tmp_path)
    assert record == {"step": 1, "reward/mean": 0.5, **current}  # readers see current names only
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"reward/mean", *current}  # no flat names in TensorBoard


def test_a_metric_logged_under_its_old_name_is_logged_under_the_new_one(tmp_path: Path) -> None:
    cfg = load_config(None, ["logging.progress=off", "logging.tensorboard=false"])
    sink = MetricsLogger(cfg, tmp_path, total_steps=1)
    sink.log(1, {"loss": 0.25, "grad_norm": 2.0, "learner/grad_norm": 3.0})  # the new name wins
    sink.close()
    assert _raw_lines(tmp_path) == [
        {"step": 1, "learner/loss": 0.25, "learner/grad_norm": 3.0, "loss": 0.25, "grad_norm": 3.0}
    ]


def test_read_metrics_upgrades_a_file_written_by_an_older_version(tmp_path: Path) -> None:
    old = {"step": 3, "reward/mean": 0.5, "loss": 0.1, "kl": 0.01, "lr": 1e-5, "frac_reward_zero_std": 0.25}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(old) + "\n")
    assert read_metrics(tmp_path) == [
        {
            "step": 3,
            "reward/mean": 0.5,
            "learner/loss": 0.1,
            "learner/kl": 0.01,
            "learner/lr": 1e-5,
            "reward/frac_zero_std": 0.25,
        }
    ]
    assert upgrade_record(with_deprecated_names(upgrade_record(old))) == upgrade_record(old)


def test_a_resumed_run_keeps_the_interrupted_runs_lines_as_written(tmp_path: Path) -> None:
    cfg = load_config(None, ["logging.progress=off", "logging.tensorboard=false"])
    lines = [{"step": s, "loss": 0.1 * s} for s in (1, 2, 3)]  # an older version's run, interrupted
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    sink = MetricsLogger(cfg, tmp_path, total_steps=4, initial_step=2)
    sink.log(3, {"learner/loss": 0.5})
    sink.close()
    assert _raw_lines(tmp_path) == [*lines[:2], {"step": 3, "learner/loss": 0.5, "loss": 0.5}]
    assert [r["learner/loss"] for r in read_metrics(tmp_path)] == pytest.approx([0.1, 0.2, 0.5])
