"""Atomic, verified checkpoints: the protocol on plain files, and SIGKILL at random points while writing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grpo_dist.checkpoint import CheckpointError, CheckpointManager, checkpoint_name
from tests.records import write_record


def _write(mgr: CheckpointManager, step: int, payload: bytes = b"x" * 1000) -> Path:
    tmp = mgr.begin(step)
    (tmp / "learner").mkdir()
    (tmp / "learner" / "rank0.pt").write_bytes(payload)
    (tmp / "controller.json").write_text(f'{{"step": {step}}}')
    return mgr.commit(tmp, step)


def test_commit_verify_latest_and_prune(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for step in (5, 10, 15):
        _write(mgr, step)
    assert mgr.latest_name() == checkpoint_name(15)
    assert [p.name for p in mgr.list()] == [checkpoint_name(10), checkpoint_name(15)]  # step 5 pruned
    manifest = mgr.verify(tmp_path / checkpoint_name(15))
    assert set(manifest["files"]) == {"learner/rank0.pt", "controller.json"}
    assert mgr.resolve("auto") == tmp_path / checkpoint_name(15)
    assert mgr.resolve("never") is None


def test_the_checkpoint_a_run_resumed_from_is_never_pruned(tmp_path: Path) -> None:
    """A replaced engine restarts from the export (or adapter) of the checkpoint the run resumed from."""
    mgr = CheckpointManager(tmp_path, keep_last=1)
    start = _write(mgr, 2)
    resumed = CheckpointManager(tmp_path, keep_last=1)
    assert resumed.resolve("auto") == start
    for step in (3, 4, 5):
        _write(resumed, step)
    assert [p.name for p in resumed.list()] == [checkpoint_name(2), checkpoint_name(5)]


def test_corrupt_checkpoint_is_refused_and_the_previous_offered(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=3)
    _write(mgr, 1)
    newest = _write(mgr, 2)
    data = bytearray((newest / "learner" / "rank0.pt").read_bytes())
    data[10] ^= 0xFF  # one flipped bit's worth of damage, same size
    (newest / "learner" / "rank0.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"rank0\.pt does not match its checksum") as info:
        mgr.resolve("auto")
    assert f"trainer.resume={tmp_path / checkpoint_name(1)}" in str(info.value)
    (newest / "learner" / "rank0.pt").unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        mgr.verify(newest)


def test_unfinished_checkpoint_and_no_checkpoint(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    assert mgr.resolve("auto") is None  # nothing yet: a fresh start
    tmp = mgr.begin(3)
    (tmp / "a").write_text("half")
    with pytest.raises(CheckpointError, match="never completed"):
        mgr.verify(tmp)
    assert mgr.cleanup() == [tmp]
    assert not tmp.exists()


_WRITER = """
import sys
from pathlib import Path
from grpo_dist.checkpoint import CheckpointManager
mgr = CheckpointManager(Path(sys.argv[1]), keep_last=2)
mgr.cleanup()
step = int(mgr.latest_name()[5:]) if mgr.latest_name() else 0
while True:
    step += 1
    tmp = mgr.begin(step)
    for rank in range(2):
        (tmp / f"rank{rank}.pt").write_bytes(bytes([step % 256]) * 400_000)
    (tmp / "controller.json").write_text('{"step": %d}' % step)
    mgr.commit(tmp, step)
    print(step, flush=True)
"""


def test_sigkill_while_writing_never_leaves_a_bad_latest(tmp_path: Path) -> None:
    """Kill a process that writes checkpoints back to back at random moments; after each kill a new
    start cleans up, and ``latest`` names a checkpoint that verifies and whose content is intact."""
    rng = random.Random(0)
    trials, intact, leftovers_cleaned, committed = 40, 0, 0, 0
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[2])}
    for _ in range(trials):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], env=env, stdout=subprocess.PIPE)
        time.sleep(0.3 + rng.random() * 0.4)  # start-up is ~0.2 s: kills land at random points of commit()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        mgr = CheckpointManager(tmp_path, keep_last=2)
        leftovers_cleaned += len(mgr.cleanup())
        latest = mgr.resolve("auto")
        if latest is None:
            continue
        committed += 1
        step = int(latest.name[5:])
        assert (latest / "rank0.pt").read_bytes() == bytes([step % 256]) * 400_000
        intact += 1
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert committed > trials // 2  # the kills did land after real progress
    assert intact == committed
    write_record(
        "checkpoint_sigkill",
        {
            "trials": trials,
            "kills": trials,
            "latest_verified": intact,
            "leftovers_cleaned": leftovers_cleaned,
            "bad_latest": committed - intact,
        },
    )
