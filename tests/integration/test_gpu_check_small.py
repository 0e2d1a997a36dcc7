"""The GPU check's own check: ``--small`` runs the very code the GPU machine runs (real DeepSpeed rank in
its own process, the fused-head memory comparison, packed and padded steps) at toy sizes on this CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_small_check_reports_both_variants_and_agrees(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    done = subprocess.run(
        [sys.executable, "-m", "grpo_dist.bench.gpu_check", "--small", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    head = report["head_memory"]
    assert head["max_abs_logprob_diff"] < 1e-2 and head["max_rel_weight_grad_diff"] < 1e-2
    learner = report["learner"]
    padded, packed = learner["variants"].values()
    assert (padded["packing"], packed["packing"]) == (False, True)
    assert packed["attn_implementation"] == "grpo_varlen_sdpa"
    assert packed["micro_batches"] < padded["micro_batches"]
    assert learner["max_abs_logprob_diff_packed_vs_padded"] < 1e-5  # float32 on a CPU
    assert learner["mean_logprob_padded"] < 0
