"""The learner on a GPU (skipped without one): the fused head's memory at a 150k vocabulary, and a bf16
learner step packed and padded (what ``deploy/gpu-check/run.sh`` reports, at test sizes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from grpo_dist.bench.gpu_check import HEAD_HIDDEN, HEAD_VOCAB, head_memory, learner_steps

pytestmark = pytest.mark.gpu


def test_fused_head_needs_at_most_half_the_naive_memory_at_a_150k_vocabulary() -> None:
    report = head_memory("cuda", tokens=4096, hidden=HEAD_HIDDEN, vocab=HEAD_VOCAB)
    assert report["ratio"] <= 0.5, report
    assert report["max_abs_logprob_diff"] < 0.05  # bf16 inputs, float32 math on both sides


def test_bf16_learner_step_packed_equals_padded(tmp_path: Path) -> None:
    import os

    os.environ.setdefault("DS_ACCELERATOR", "cuda")
    report = learner_steps("cuda", small=True, root=tmp_path)
    padded, packed = report["variants"].values()
    assert packed["packing"] and not padded["packing"]
    assert packed["micro_batches"] < padded["micro_batches"]
    assert report["max_abs_logprob_diff_packed_vs_padded"] < 0.1  # bf16: rounding only
    assert packed["real_tokens_per_s"] > 0 and padded["real_tokens_per_s"] > 0
