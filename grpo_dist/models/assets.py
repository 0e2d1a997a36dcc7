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
from collections.abc import Callable
from pathlib import Path

from grpo_dist.config import Config
from grpo_dist.embedded import EMBEDDED_MODEL, EmbeddedModelSpec, cache_root, embedded_model_dir
from grpo_dist.models.warmstart import WarmStartSpec

logger = logging.getLogger(__name__)

NUM_TRAIN_ROWS = 4000
NUM_EVAL_ROWS = 256


def embedded_task():  # -> AdditionTask
    """The embedded task: sums of two numbers of 1-2 digits."""
    from grpo_dist.tasks.arithmetic import AdditionTask

    return AdditionTask(min_digits=1, max_digits=2)


def atomic_build(target: Path, build: Callable[[Path], None]) -> Path:
    """``target``, a directory ``build(tmp)`` fills, built once and published whole.

    ``build`` writes into a fresh temporary directory beside ``target``, which is marked complete and then
    renamed into place: an interrupted build leaves nothing at ``target``, and of concurrent builders the
    first rename wins (the others' copies are dropped). A ``target`` already marked complete is returned
    without building.
    """
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


def ensure_embedded_model(
    spec: EmbeddedModelSpec = EMBEDDED_MODEL, *, force: bool = False, warm: WarmStartSpec | None = None
) -> Path:
    """The embedded default policy, built unless cached: tokenizer + random-init weights, then a supervised
    warm start on noisy demonstrations of the embedded task's training prompts (see ``warmstart``)."""
    from grpo_dist.models.builder import build_model
    from grpo_dist.models.warmstart import warm_start

    warm = warm or WarmStartSpec(seed=spec.seed)
    target = embedded_model_dir(spec)
    if force:
        shutil.rmtree(target, ignore_errors=True)

    def build(tmp: Path) -> None:
        import pyarrow.parquet as pq

        base = tmp / "base"
        build_model(base, spec)
        train, _ = ensure_task_data(spec.seed)
        stats = warm_start(base, tmp, pq.read_table(train).to_pylist(), warm)
        shutil.rmtree(base)
        logger.info("embedded model built: warm start loss %.3f in %.0f s", stats["loss"], stats["seconds"])

    return atomic_build(target, build)


def ensure_task_data(seed: int = 0) -> tuple[Path, Path]:
    """The embedded task's train and held-out eval parquet files (disjoint prompts)."""
    from grpo_dist.tasks.arithmetic import write_splits

    task = embedded_task()
    target = cache_root() / "data" / f"addition-{task.min_digits}-{task.max_digits}-seed{seed}"
    atomic_build(
        target,
        lambda tmp: write_splits(
            tmp, num_train=NUM_TRAIN_ROWS, num_eval=NUM_EVAL_ROWS, seed=seed, task=embedded_task()
        ),
    )
    return target / "train.parquet", target / "eval.parquet"


def resolve_data_files(cfg: Config) -> tuple[list[str], list[str]]:
    """The run's train and held-out files. Without ``data.train_files`` the run is the embedded task, and
    its held-out set is the default evaluation; a run on the user's data evaluates the user's
    ``data.eval_files`` or nothing (the embedded arithmetic task says nothing about the user's model)."""
    train, evals = list(cfg.data.train_files), list(cfg.data.eval_files)
    if not train:
        default_train, default_eval = ensure_task_data()
        train = [str(default_train)]
        evals = evals or [str(default_eval)]
    return train, evals
