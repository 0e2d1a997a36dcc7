"""Chunked token log-probs / entropies: agreement with log_softmax, gradients, bounded fp32 scratch."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from grpo_dist.algo import sequence_logprob_sums, token_entropy, token_logprobs


def _data(
    b: int, t: int, v: int, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, t, v, generator=g, dtype=torch.float64) * 3).to(dtype)
    targets = torch.randint(0, v, (b, t), generator=g)
    return logits, targets


def _ref_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    logp = torch.log_softmax(logits.to(torch.float64) / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _ref_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    logp = torch.log_softmax(logits.to(torch.float64) / temperature, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
@pytest.mark.parametrize("chunk_size", [1, 3, 10, 512])
def test_token_logprobs_matches_log_softmax_fp32(temperature: float, chunk_size: int) -> None:
    logits, targets = _data(2, 5, 11)
    out = token_logprobs(logits, targets, temperature=temperature, chunk_size=chunk_size)
    assert out.shape == (2, 5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _ref_logprobs(logits, targets, temperature).float())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_token_logprobs_low_precision_logits_chunked(dtype: torch.dtype) -> None:
    logits, targets = _data(3, 7, 50, dtype=dtype)
    out = token_logprobs(logits, targets, temperature=0.8, chunk_size=4)  # 21 rows, 6 chunks
    assert out.dtype == torch.float32
    # the reference upcasts the same low-precision values, so agreement is to float32 rounding
    torch.testing.assert_close(out, _ref_logprobs(logits, targets, 0.8).float(), rtol=1e-5, atol=1e-5)


def test_token_logprobs_gradient_matches_autograd_reference() -> None:
    logits, targets = _data(2, 4, 9, dtype=torch.float64)
    weights = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((token_logprobs(x, targets, temperature=0.7, chunk_size=3) * weights).sum(), x)
    y = logits.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad((_ref_logprobs(y, targets, 0.7) * weights).sum(), y)
    torch.testing.assert_close(grad, expected)


def test_token_logprobs_gradcheck() -> None:
    logits, targets = _data(1, 3, 5, dtype=torch.float64)

    def fn(z: torch.Tensor) -> torch.Tensor:
        return token_logprobs(z, targets, temperature=0.9, chunk_size=2)

    assert torch.autograd.gradcheck(fn, (logits.requires_grad_(True),))


def test_bf16_gradient_has_logits_dtype_and_matches_reference() -> None:
    logits, targets = _data(2, 6, 40, dtype=torch.bfloat16)
    x = logits.clone().requires_grad_(True)
    token_logprobs(x, targets, chunk_size=5).sum().backward()
    assert x.grad is not None
    assert x.grad.dtype == torch.bfloat16
    y = logits.float().requires_grad_(True)
    _ref_logprobs(y, targets).sum().backward()
    assert y.grad is not None
    torch.testing.assert_close(x.grad.float(), y.grad, rtol=1e-2, atol=1e-2)


class _Float32AllocationTracker(TorchDispatchMode):
    """Records the element count of every float32 tensor produced by any op."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


def test_bf16_path_never_materialises_a_full_float32_copy() -> None:
    b, t, v, chunk = 4, 16, 64, 8  # 64 rows, 8 chunks
    logits, targets = _data(b, t, v, dtype=torch.bfloat16)
    x = logits.clone().requires_grad_(True)
    tracker = _Float32AllocationTracker()
    with tracker:
        lp = token_logprobs(x, targets, chunk_size=chunk)
        ent = token_entropy(x, chunk_size=chunk)
        (lp.sum() + ent.sum()).backward()
    assert x.grad is not None
    assert 0 < tracker.largest <= chunk * v  # forward and backward fp32 scratch is one chunk
    assert tracker.largest < b * t * v


def test_non_contiguous_logits() -> None:
    logits, targets = _data(2, 6, 13)
    sliced = logits[:, :-1]  # the usual "drop the last position" view
    assert not sliced.is_contiguous()
    out = token_logprobs(sliced, targets[:, 1:], chunk_size=4)
    torch.testing.assert_close(out, _ref_logprobs(sliced, targets[:, 1:]).float())


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_token_entropy_matches_reference_and_gradient(temperature: float) -> None:
    logits, _ = _data(3, 4, 17, dtype=torch.float64)
    ent = token_entropy(logits, temperature=temperature, chunk_size=5)
    assert ent.shape == (3, 4)
    assert ent.dtype == torch.float64  # float64 logits keep float64; half/float32 give float32
    torch.testing.assert_close(ent, _ref_entropy(logits, temperature))
    w = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((token_entropy(x, temperature=temperature, chunk_size=5) * w).sum(), x)
    y = logits.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad((_ref_entropy(y, temperature) * w).sum(), y)
    torch.testing.assert_close(grad, expected)


def test_token_entropy_bf16_and_uniform() -> None:
    logits, _ = _data(2, 5, 30, dtype=torch.bfloat16)
    with torch.no_grad():
        ent = token_entropy(logits, chunk_size=3)
    torch.testing.assert_close(ent, _ref_entropy(logits).float(), rtol=1e-5, atol=1e-5)
    uniform = token_entropy(torch.zeros(1, 2, 8))
    torch.testing.assert_close(uniform, torch.full((1, 2), float(torch.log(torch.tensor(8.0)))))


def test_sequence_logprob_sums_add_masked_tokens_only() -> None:
    lp = torch.tensor([[-1.0, -2.0, float("-inf")], [-0.5, float("nan"), -3.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    torch.testing.assert_close(sequence_logprob_sums(lp, mask), torch.tensor([-3.0, -3.5]))
    torch.testing.assert_close(sequence_logprob_sums(lp, mask.bool()), torch.tensor([-3.0, -3.5]))
    assert sequence_logprob_sums(lp, torch.zeros(2, 3)).tolist() == [0.0, 0.0]


def test_invalid_arguments_are_rejected() -> None:
    logits, targets = _data(2, 3, 5)
    with pytest.raises(ValueError, match="temperature=0"):
        token_logprobs(logits, targets, temperature=0.0)
    with pytest.raises(ValueError, match="temperature=-1"):
        token_entropy(logits, temperature=-1.0)
    with pytest.raises(ValueError, match="chunk_size=0"):
        token_logprobs(logits, targets, chunk_size=0)
    with pytest.raises(ValueError, match=r"targets has shape \(2, 2\)"):
        token_logprobs(logits, targets[:, :2])
    with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
        token_logprobs(logits, torch.full((2, 3), -100))
    with pytest.raises(ValueError, match="integer"):
        token_logprobs(logits, targets.float())
    with pytest.raises(ValueError, match="floating-point"):
        token_logprobs(targets.unsqueeze(-1), targets)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 2\)"):
        sequence_logprob_sums(torch.zeros(2, 3), torch.ones(2, 2))


@settings(max_examples=50, deadline=None)
@given(
    b=st.integers(1, 3),
    t=st.integers(1, 6),
    v=st.integers(2, 20),
    chunk_size=st.integers(1, 20),
    temperature=st.sampled_from([0.5, 1.0, 1.3]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_chunked_matches_reference_for_any_shape(
    b: int, t: int, v: int, chunk_size: int, temperature: float, dtype: torch.dtype, seed: int
) -> None:
    logits, targets = _data(b, t, v, seed=seed, dtype=dtype)
    out = token_logprobs(logits, targets, temperature=temperature, chunk_size=chunk_size)
    torch.testing.assert_close(out, _ref_logprobs(logits, targets, temperature).float(), rtol=1e-5, atol=1e-5)
    ent = token_entropy(logits, temperature=temperature, chunk_size=chunk_size)
    torch.testing.assert_close(ent, _ref_entropy(logits, temperature).float(), rtol=1e-5, atol=1e-5)
