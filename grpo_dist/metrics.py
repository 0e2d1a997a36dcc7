"""Metric sinks.

Every step's metrics go to ``RUN_DIR/metrics.jsonl`` (one JSON object per line, always), TensorBoard event
files (``logging.tensorboard``), wandb (``logging.wandb.enabled``; offline mode needs no network) and the
terminal: a progress bar with the key figures on a TTY, plain log lines otherwise.

The names live in :mod:`grpo_dist.metric_names`. Metrics renamed since 0.1.0 are written under their old
flat names too, into ``metrics.jsonl`` only, until 0.3.0 (``DEPRECATED_NAMES_REMOVED_IN``); ``read_metrics``
returns current names for files of any version.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from grpo_dist.config import Config
from grpo_dist.metric_names import (
    EVAL_PASS1,
    REWARD_MEAN,
    TIMING_STEP,
    TOKENS_PER_S,
    upgrade_record,
    with_deprecated_names,
)

logger = logging.getLogger("grpo_dist")


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every line parses everywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    def __init__(self, cfg: Config, run_dir: Path, *, total_steps: int, initial_step: int = 0) -> None:
        """``initial_step`` > 0 continues a resumed run: records after it (written by the interrupted run
        after its last checkpoint) are dropped, so every step appears once. A fresh run starts a new file."""
        self.run_dir = run_dir
        path = run_dir / "metrics.jsonl"
        # as written (old names included): the kept lines stay what the interrupted run logged
        kept = [r for r in _read_lines(path) if r["step"] <= initial_step] if initial_step and path.exists() else []
        with path.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        self.jsonl = path.open("a", encoding="utf-8")
        self.tb: Any = None
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(
                log_dir=str(run_dir / "tensorboard"), purge_step=initial_step + 1 if initial_step else None
            )
        self.wandb: Any = None
        if cfg.logging.wandb.enabled:
            self.wandb = _init_wandb(cfg, run_dir)
        mode = cfg.logging.progress
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "plain"
        self.mode = mode
        self.bar: Any = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=initial_step, desc="grpo", unit="step", dynamic_ncols=True)
        self.last_pass1: float | None = None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Write one record; a metric passed under a deprecated name is logged under its current one."""
        metrics = upgrade_record(metrics)
        record = {"step": step, **with_deprecated_names({k: _clean(v) for k, v in metrics.items()})}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if self.tb is not None:
            for k, v in numeric.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(numeric, step=step)
        if EVAL_PASS1 in numeric:
            self.last_pass1 = numeric[EVAL_PASS1]
        self._show(step, numeric)

    def _show(self, step: int, m: dict[str, float]) -> None:
        fields = {
            "reward": m.get(REWARD_MEAN),
            "pass@1": self.last_pass1,
            "tok/s": m.get(TOKENS_PER_S),
            "s/step": m.get(TIMING_STEP),
        }
        shown = {k: f"{v:.3g}" for k, v in fields.items() if v is not None}
        if self.mode == "bar" and self.bar is not None:
            if REWARD_MEAN in m:
                self.bar.update(step - self.bar.n)
            self.bar.set_postfix(shown, refresh=True)
        elif self.mode == "plain":
            logger.info("step %d  %s", step, "  ".join(f"{k}={v}" for k, v in shown.items()))

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.bar is not None:
            self.bar.close()


def _init_wandb(cfg: Config, run_dir: Path) -> Any:
    try:
        import wandb
    except ImportError as exc:
        raise ValueError(
            "logging.wandb.enabled = true but wandb is not installed: pip install 'grpo-dist[wandb]'"
        ) from exc
    w = cfg.logging.wandb
    return wandb.init(
        project=w.project,
        entity=w.entity,
        mode=w.mode,
        name=cfg.logging.run_name or run_dir.name,
        dir=str(run_dir),
        config=cfg.to_dict(),
    )


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of ``run_dir/metrics.jsonl`` under current names (see ``metric_names.upgrade_record``):
    files written by older versions, with flat names, read like new ones."""
    return [upgrade_record(r) for r in _read_lines(run_dir / "metrics.jsonl")]


def _read_lines(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
