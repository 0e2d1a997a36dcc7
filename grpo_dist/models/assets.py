"""The embedded default's files: the model (built on first use) and the task's train/eval parquet.

Both live under the cache directory (``GRPO_DIST_CACHE``, default ``~/.cache/grpo-dist``), keyed by
their spec and seed, and are written to a temporary directory then renamed, so that concurrent or
interrupted builds never leave a half-written model behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from grpo_dist.config import Config
from grpo_dist.embedded import EMBEDDED_MODEL, EmbeddedModelSpec, cache_root, embedded_model_dir

logger = logging.getLogger(__name__)

NUM_TRAIN_ROWS = 20000
NUM_EVAL_ROWS = 256


def _atomic_build(target: Path, build) -> Path:  # build(tmp_dir) -> None
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / ".complete").exists():  # not a concurrent builder that won the race
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_embedded_model(spec: EmbeddedModelSpec = EMBEDDED_MODEL, *, force: bool = False) -> Path:
    """Build the embedded model (tokenizer + random-init weights) unless it is already cached."""
    from grpo_dist.models.builder import build_model

    target = embedded_model_dir(spec)
    if force:
        shutil.rmtree(target, ignore_errors=True)
    return _atomic_build(target, lambda tmp: build_model(tmp, spec))


def ensure_task_data(seed: int = 0) -> tuple[Path, Path]:
    """The embedded task's train and held-out eval parquet files (disjoint prompts)."""
    from grpo_dist.tasks.arithmetic import write_splits

    target = cache_root() / "data" / f"addition-seed{seed}"
    _atomic_build(target, lambda tmp: write_splits(tmp, num_train=NUM_TRAIN_ROWS, num_eval=NUM_EVAL_ROWS, seed=seed))
    return target / "train.parquet", target / "eval.parquet"


def resolve_model_path(cfg: Config) -> str:
    if cfg.model.path is not None:
        if not (Path(cfg.model.path) / "config.json").is_file():
            raise ValueError(f"model.path = {cfg.model.path!r}: no config.json there (a Hugging Face model directory)")
        return cfg.model.path
    return str(ensure_embedded_model())


def resolve_data_files(cfg: Config) -> tuple[list[str], list[str]]:
    train, evals = list(cfg.data.train_files), list(cfg.data.eval_files)
    if not train or not evals:
        default_train, default_eval = ensure_task_data()
        train = train or [str(default_train)]
        evals = evals or [str(default_eval)]
    return train, evals
