"""Gradient accumulation and data parallelism reproduce the full mini-batch gradient exactly.

A tiny shared "model" (features @ W -> logits -> chunked token log-probs and entropy) stands in for the
LM, so the check covers the whole path the learner uses, in float64 for tight tolerances.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_dist.algo import (
    LOSS_AGG_MODES,
    data_parallel_denominator,
    loss_denominator,
    policy_loss,
    token_entropy,
    token_logprobs,
)

F64 = torch.float64
B, T, H, V = 8, 6, 4, 7


class Batch:
    """A rollout mini-batch with unequal response lengths (and one empty response)."""

    def __init__(self, seed: int, b: int = B, t: int = T) -> None:
        g = torch.Generator().manual_seed(seed)
        self.features = torch.randn(b, t, H, generator=g, dtype=F64)
        self.targets = torch.randint(0, V, (b, t), generator=g)
        lengths = torch.randint(0, t + 1, (b,), generator=g)
        lengths[0] = t  # at least one full-length response
        lengths[-1] = 0 if b > 2 else lengths[-1]  # and an empty one
        self.mask = torch.arange(t)[None, :] < lengths[:, None]  # [b, t] right-padded responses
        self.advantages = torch.randn(b, generator=g, dtype=F64)
        w0 = torch.randn(H, V, generator=g, dtype=F64)
        with torch.no_grad():
            base = token_logprobs(self.features @ w0, self.targets)
        self.old = base + 0.3 * torch.randn(b, t, generator=g, dtype=F64)  # ratios far enough from 1 to clip
        self.ref = base + 0.3 * torch.randn(b, t, generator=g, dtype=F64)
        self.w0 = w0


def _loss(
    w: torch.Tensor, batch: Batch, rows: slice | torch.Tensor, mode: str, ratio_level: str, denominator: float | None
) -> torch.Tensor:
    logits = batch.features[rows] @ w  # [b, T, V]
    loss, _ = policy_loss(
        token_logprobs(logits, batch.targets[rows], chunk_size=5),
        batch.old[rows],
        batch.advantages[rows],
        batch.mask[rows],
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        clip_ratio_c=3.0,
        loss_agg_mode=mode,
        ratio_level=ratio_level,
        ref_logprobs=batch.ref[rows],
        kl_coef=0.05,
        entropy=token_entropy(logits, chunk_size=5),
        entropy_coef=0.01,
        max_response_length=T,
        loss_scale_denominator=denominator,
    )
    return loss


def _full_batch_grad(batch: Batch, mode: str, ratio_level: str) -> tuple[torch.Tensor, torch.Tensor]:
    w = batch.w0.clone().requires_grad_(True)
    loss = _loss(w, batch, slice(None), mode, ratio_level, None)
    loss.backward()
    assert w.grad is not None
    return loss.detach(), w.grad


MICRO_BATCHES = [slice(0, 3), slice(3, 4), slice(4, 8)]  # unequal sizes


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
def test_gradient_accumulation_with_global_denominator_equals_full_batch(mode: str, ratio_level: str) -> None:
    batch = Batch(seed=0)
    full_loss, full_grad = _full_batch_grad(batch, mode, ratio_level)
    total = sum(loss_denominator(batch.mask[mb], mode) for mb in MICRO_BATCHES)
    denominator = data_parallel_denominator(total)
    w = batch.w0.clone().requires_grad_(True)
    summed = torch.zeros((), dtype=F64)
    for mb in MICRO_BATCHES:
        loss = _loss(w, batch, mb, mode, ratio_level, denominator)
        loss.backward()  # gradients accumulate in w.grad
        summed += loss.detach()
    assert w.grad is not None
    torch.testing.assert_close(summed, full_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w.grad, full_grad, rtol=1e-10, atol=1e-12)


def test_averaging_micro_batch_means_would_be_wrong() -> None:
    """The check above has teeth: the naive per-micro-batch mean gives a different gradient."""
    batch = Batch(seed=0)
    _, full_grad = _full_batch_grad(batch, "token-mean", "token")
    w = batch.w0.clone().requires_grad_(True)
    for mb in MICRO_BATCHES:
        (_loss(w, batch, mb, "token-mean", "token", None) / len(MICRO_BATCHES)).backward()
    assert w.grad is not None
    assert not torch.allclose(w.grad, full_grad, rtol=1e-3, atol=1e-6)


RANKS = [[slice(0, 2), slice(2, 5)], [slice(5, 6), slice(6, 8)]]  # 2 ranks x 2 micro-batches, unequal


def _data_parallel_grad(batch: Batch, mode: str, ratio_level: str, engine_loss_divisor: int) -> torch.Tensor:
    """Simulate DDP/DeepSpeed: each rank accumulates its micro-batches, then gradients are AVERAGED."""
    local_counts = [sum(loss_denominator(batch.mask[mb], mode) for mb in rank) for rank in RANKS]
    global_count = sum(local_counts)  # the all-reduce(SUM) of the local counts
    denominator = data_parallel_denominator(
        global_count, world_size=len(RANKS), engine_loss_divisor=engine_loss_divisor
    )
    rank_grads = []
    for rank in RANKS:
        w = batch.w0.clone().requires_grad_(True)  # each rank holds a replica
        for mb in rank:
            loss = _loss(w, batch, mb, mode, ratio_level, denominator)
            (loss / engine_loss_divisor).backward()  # what DeepSpeed's engine.backward does with GAS > 1
        assert w.grad is not None
        rank_grads.append(w.grad)
    return torch.stack(rank_grads).mean(dim=0)  # the gradient all-reduce averages over ranks


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
@pytest.mark.parametrize("engine_loss_divisor", [1, 2])
def test_data_parallel_ranks_reproduce_full_batch_gradient(
    mode: str, ratio_level: str, engine_loss_divisor: int
) -> None:
    batch = Batch(seed=1)
    _, full_grad = _full_batch_grad(batch, mode, ratio_level)
    dp_grad = _data_parallel_grad(batch, mode, ratio_level, engine_loss_divisor)
    torch.testing.assert_close(dp_grad, full_grad, rtol=1e-10, atol=1e-12)


def test_padding_rows_do_not_change_the_gradient() -> None:
    """Rows with an all-zero mask (used to even out micro-batches) are invisible in every mode."""
    padded = Batch(seed=2)
    padded.mask[5:] = False
    trimmed = Batch(seed=2)
    for name in ("features", "targets", "mask", "advantages", "old", "ref"):
        setattr(trimmed, name, getattr(padded, name)[:5])
    for mode in LOSS_AGG_MODES:
        _, with_padding = _full_batch_grad(padded, mode, "token")
        _, without = _full_batch_grad(trimmed, mode, "token")
        torch.testing.assert_close(with_padding, without, rtol=1e-12, atol=1e-14)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    b=st.integers(2, 8),
    mode=st.sampled_from(LOSS_AGG_MODES),
    ratio_level=st.sampled_from(["token", "sequence"]),
    data=st.data(),
)
def test_any_split_into_micro_batches_is_exact(
    seed: int, b: int, mode: str, ratio_level: str, data: st.DataObject
) -> None:
    batch = Batch(seed=seed, b=b)
    cuts = sorted(data.draw(st.sets(st.integers(1, b - 1), max_size=b - 1), label="cuts"))
    bounds = [0, *cuts, b]
    micro_batches = [slice(lo, hi) for lo, hi in itertools.pairwise(bounds)]
    _, full_grad = _full_batch_grad(batch, mode, ratio_level)
    denominator = data_parallel_denominator(sum(loss_denominator(batch.mask[mb], mode) for mb in micro_batches))
    w = batch.w0.clone().requires_grad_(True)
    for mb in micro_batches:
        _loss(w, batch, mb, mode, ratio_level, denominator).backward()
    assert w.grad is not None
    torch.testing.assert_close(w.grad, full_grad, rtol=1e-10, atol=1e-12)


def test_loss_denominator_hand_values() -> None:
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    assert loss_denominator(mask, "token-mean") == 3.0
    for mode in ("seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        assert loss_denominator(mask, mode) == 2.0  # the empty row is not a sequence
    assert loss_denominator(mask.bool(), "token-mean") == 3.0
    assert isinstance(loss_denominator(mask, "token-mean"), float)


def test_data_parallel_denominator_rule() -> None:
    assert data_parallel_denominator(12.0) == 12.0
    assert data_parallel_denominator(12.0, world_size=4) == 3.0
    assert data_parallel_denominator(12.0, world_size=4, grads_averaged=False) == 12.0
    assert data_parallel_denominator(12.0, world_size=4, engine_loss_divisor=3) == 1.0
    assert data_parallel_denominator(0.0, world_size=2) == 0.5  # all-empty mini-batch: clamped, no 0/0


def test_denominator_helpers_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"loss_agg_mode='sum'"):
        loss_denominator(torch.ones(2, 2), "sum")
    with pytest.raises(ValueError, match=r"mask must have shape \[B, T\]"):
        loss_denominator(torch.ones(2), "token-mean")
    with pytest.raises(ValueError, match=r"global_count=-1\.0"):
        data_parallel_denominator(-1.0)
    with pytest.raises(ValueError, match="world_size=0"):
        data_parallel_denominator(4.0, world_size=0)
    with pytest.raises(ValueError, match="engine_loss_divisor=0"):
        data_parallel_denominator(4.0, engine_loss_divisor=0)
