"""The fused, chunked LM head: the logprobs, entropies and gradients of the plain full-logits path (with
soft-capping and temperature), while keeping no ``[tokens, vocab]`` tensor for backward."""

from __future__ import annotations

import pytest
import torch

from grpo_dist.algo.fused_head import head_token_logprobs
from grpo_dist.algo.logprobs import token_entropy, token_logprobs


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("chunk", [1, 8, 1000])
def test_equals_the_full_logits_path_with_gradients(softcap: float | None, chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, 50, (37,), generator=g)
    upstream = torch.randn(37, dtype=torch.float64, generator=g)
    lp, ent = head_token_logprobs(h, w, y, temperature=0.7, softcap=softcap, chunk_size=chunk)
    (lp * upstream).sum().backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    z = h @ w.t()
    if softcap is not None:
        z = torch.tanh(z / softcap) * softcap
    ref = token_logprobs(z, y, temperature=0.7)
    (ref * upstream).sum().backward()
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(ent, token_entropy(z.detach(), temperature=0.7), rtol=0, atol=1e-12)
    torch.testing.assert_close(gh, h.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(gw, w.grad, rtol=0, atol=1e-12)
    assert not ent.requires_grad


def test_keeps_no_tokens_by_vocab_tensor_for_backward() -> None:
    n, hidden, vocab = 256, 32, 4096
    h = torch.randn(n, hidden, requires_grad=True)
    w = torch.randn(vocab, hidden, requires_grad=True)
    y = torch.randint(0, vocab, (n,))
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp, _ = head_token_logprobs(h, w, y, chunk_size=16)
    assert max(saved) <= vocab * hidden < n * vocab  # the weight and the hidden states, not the logits
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        token_logprobs(h @ w.t(), y, chunk_size=16)
    assert max(saved) >= n * vocab  # the plain path keeps the full logits
    lp.sum().backward()
    assert h.grad is not None and w.grad is not None


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"must be \[N, H\] and \[V, H\]"):
        head_token_logprobs(torch.zeros(3, 4), torch.zeros(5, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets has shape"):
        head_token_logprobs(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(2, dtype=torch.long))
