"""Metric sinks and names.

Every step's metrics go to ``RUN_DIR/metrics.jsonl`` (one JSON object per line, always), TensorBoard
event files (``logging.tensorboard``), wandb (``logging.wandb.enabled``; offline mode needs no network)
and the terminal: a progress bar with the key figures on a TTY, plain log lines otherwise.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from grpo_dist.config import Config

logger = logging.getLogger("grpo_dist")

# Names other code relies on (plots, tests, the progress bar).
REWARD_MEAN = "reward/mean"
REWARD_STD = "reward/std"
FRAC_ZERO_STD = "frac_reward_zero_std"
RESPONSE_LEN = "response_length/mean"
RESPONSE_CLIP = "response_length/clip_frac"
EVAL_PASS1 = "eval/pass@1"
TOKENS_PER_S = "throughput/tokens_per_s"
WEIGHTS_VERSION = "weights/version"
TIMING_KEYS = ("timing/rollout_s", "timing/reward_s", "timing/train_s", "timing/sync_s", "timing/step_s")


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
        kept = [r for r in read_metrics(run_dir) if r["step"] <= initial_step] if initial_step and path.exists() else []
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
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
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
            "s/step": m.get("timing/step_s"),
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
    path = run_dir / "metrics.jsonl"
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
