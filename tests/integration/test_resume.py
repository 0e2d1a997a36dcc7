"""Exact resume: a run of 2K steps, and a run SIGKILLed after its checkpoint at step K then resumed with
``trainer.resume=auto``, produce the same per-step metrics, consume the same prompts, and end with
bit-identical weights (CPU, fp32). K falls on an epoch boundary (8 prompts, 4 per step).

The killed run uses ``trainer.async_mode = async`` with ``sync.max_staleness = 0`` and the reference plain
``sync``: the bound-0 asynchronous run must reproduce the synchronous one bit for bit (where other
frameworks' async paths drifted), so one comparison covers both promises."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import MARKER_VAR, TINY_CONFIG, kill_marked_processes, tiny_overrides
from tests.records import write_record

pytestmark = pytest.mark.slow

K = 2
NUM_PROMPTS = 8
BATCH = 4  # two steps per epoch: K is the end of epoch 0
TIMING = ("timing/", "throughput/", "sync/gb_per_s")
ASYNC_BOUND_0 = ["trainer.async_mode=async", "sync.max_staleness=0"]


def _overrides(tiny_assets: dict[str, str], data: Path, run_dir: Path) -> list[str]:
    return [
        *tiny_overrides(tiny_assets, run_dir, train_file=data),
        f"data.train_batch_size={BATCH}",
        f"trainer.total_steps={2 * K}",
        f"trainer.save_every={K}",
        "learner.lr=1e-3",
        "reward.functions=[{name: exact_match}, {name: digits, path: 'tests.integration.reward_fns:digit_fraction'}]",
    ]


def _train_in_process(config: Path, overrides: list[str]) -> None:
    from grpo_dist.config import load_config
    from grpo_dist.controller import Controller

    controller = Controller(load_config(config, overrides))
    try:
        controller.start()
        controller.run()
    finally:
        controller.shutdown()


def _kill_run(proc: subprocess.Popen[bytes], marker: str) -> int:
    """SIGKILL the driver's process group (its private Ray's daemons are in it), then any process still
    carrying the run's environment marker."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return 1 + kill_marked_processes(marker)


def _steps(run_dir: Path) -> dict[int, dict[str, Any]]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "reward/mean" in record:
            assert record["step"] not in out, f"step {record['step']} logged twice"
            out[record["step"]] = {k: v for k, v in record.items() if not k.startswith(TIMING)}
    return out


def _prompts(run_dir: Path, step: int) -> list[int]:
    import pyarrow.parquet as pq

    rows = pq.read_table(run_dir / "rollouts" / f"step_{step:06d}.parquet").to_pylist()
    return [r["prompt_id"] for r in rows if r["sample_index"] == 0]


def test_resume_after_sigkill_is_exact(local_ray: None, tiny_assets: dict[str, str], tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    config = TINY_CONFIG
    data = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(pq.read_table(tiny_assets["train"]).to_pylist()[:NUM_PROMPTS]), data)

    reference = tmp_path / "reference"
    _train_in_process(config, _overrides(tiny_assets, data, reference))

    # the same run in its own driver process, SIGKILLed once its checkpoint at step K is complete
    killed_run = tmp_path / "killed"
    ray_tmp = tempfile.mkdtemp(prefix="gd-resume-ray-", dir="/tmp")
    marker = uuid.uuid4().hex
    env = os.environ | {"RAY_TMPDIR": ray_tmp, "PYTHONPATH": str(Path.cwd()), MARKER_VAR: marker}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "grpo_dist.cli", "train", str(config)),
            *_overrides(tiny_assets, data, killed_run),
            *ASYNC_BOUND_0,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    latest = killed_run / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not (latest.is_file() and latest.read_text().strip() == f"step_{K:06d}"):
        assert proc.poll() is None, "the run ended before its checkpoint at step K"
        assert time.monotonic() < deadline, "no checkpoint at step K within 300 s"
        time.sleep(0.05)
    num_killed = _kill_run(proc, marker)

    _train_in_process(config, [*_overrides(tiny_assets, data, killed_run), *ASYNC_BOUND_0, "trainer.resume=auto"])

    expected, resumed = _steps(reference), _steps(killed_run)
    assert sorted(resumed) == list(range(1, 2 * K + 1))
    for step in expected:
        assert resumed[step] == expected[step], f"step {step} differs (async bound 0 and resumed vs sync)"
        assert _prompts(killed_run, step) == _prompts(reference, step)
    # every prompt exactly once per epoch, in both runs
    for epoch in range(2):
        seen = [p for s in (2 * epoch + 1, 2 * epoch + 2) for p in _prompts(killed_run, s)]
        assert sorted(seen) == sorted(set(seen))
        assert len(seen) == NUM_PROMPTS
    same_weights = (reference / "final" / "model.safetensors").read_bytes() == (
        killed_run / "final" / "model.safetensors"
    ).read_bytes()
    assert same_weights
    write_record(
        "resume_after_sigkill",
        {
            "steps": 2 * K,
            "killed_after_checkpoint_step": K,
            "processes_killed": num_killed,
            "steps_identical": sum(resumed[s] == expected[s] for s in expected),
            "final_weights_bit_identical": same_weights,
            "prompts_skipped": 0,
            "prompts_repeated": 0,
        },
    )
