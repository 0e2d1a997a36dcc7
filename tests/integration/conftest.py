"""Integration fixtures: a private Ray per test module, and the tiny model and task built once."""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The embedded model spec and a small slice of the embedded task, built in a temp dir."""
    from grpo_dist.embedded import EMBEDDED_MODEL
    from grpo_dist.models.builder import build_model
    from grpo_dist.tasks.arithmetic import write_splits

    root = tmp_path_factory.mktemp("assets")
    model = build_model(root / "model", EMBEDDED_MODEL)
    train, evals = write_splits(root / "data", num_train=64, num_eval=16, seed=0)
    return {"model": str(model), "train": str(train), "eval": str(evals)}


MARKER_VAR = "GRPO_DIST_TEST_PROCESS_GROUP"
TINY_CONFIG = Path(__file__).parents[2] / "configs" / "tiny.yaml"


def tiny_overrides(assets: dict[str, str], run_dir: Path | str, *, train_file: Path | str | None = None) -> list[str]:
    """Overrides that point ``configs/tiny.yaml`` at the test assets and keep the run small and quiet."""
    return [
        f"model.path={assets['model']}",
        f"data.train_files=[{train_file or assets['train']}]",
        f"data.eval_files=[{assets['eval']}]",
        f"trainer.output_dir={run_dir}",
        "rollout.kv_cache_gib=0.25",
        "eval.max_prompts=4",
        "logging.progress=off",
    ]


def kill_marked_processes(marker: str) -> int:
    """SIGKILL every process whose environment carries ``GRPO_DIST_TEST_PROCESS_GROUP=<marker>``.

    Ray renames its processes (``ray::DashboardAgent``), so command lines do not identify them; the
    environment they inherited from the test does. Only processes this test started carry its marker.
    """
    needle = f"{MARKER_VAR}={marker}".encode()
    killed = 0
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
            continue
        try:
            environ = (pid_dir / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            try:
                os.kill(int(pid_dir.name), signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A Ray of our own (never one already running on the machine), shut down after the module."""
    import ray

    # Ray's socket paths must stay short: a temp dir directly under /tmp
    tmp = tempfile.mkdtemp(prefix="gd-ray-", dir="/tmp")
    ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        _temp_dir=tmp,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}},
    )
    yield
    ray.shutdown()
