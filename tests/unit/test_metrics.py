"""Metric sinks: jsonl always (NaN as null), TensorBoard event files, wandb in offline mode, plain lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from grpo_dist.config import load_config
from grpo_dist.metrics import MetricsLogger, read_metrics


def test_jsonl_tensorboard_and_plain_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(None, ["logging.progress=plain"])
    sink = MetricsLogger(cfg, tmp_path, total_steps=3)
    with caplog.at_level(logging.INFO, logger="grpo_dist"):
        sink.log(1, {"reward/mean": 0.5, "loss": float("nan"), "timing/step_s": 1.25})
        sink.log(1, {"eval/pass@1": 0.75})
    sink.close()
    records = read_metrics(tmp_path)
    assert records == [
        {"step": 1, "reward/mean": 0.5, "loss": None, "timing/step_s": 1.25},
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
