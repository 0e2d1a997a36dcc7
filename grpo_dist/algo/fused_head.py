"""Token logprobs straight from the last hidden states: the LM head fused with the log-softmax, chunked.

A learner step's memory peak is often the full-vocabulary logits, not the model: ``[N, V]`` for N tokens
(and again in float32, and again as their gradient). At a 150k vocabulary and 4k tokens that is 2.4 GB
per copy. Here the head ``z = h W^T`` is applied ``chunk_size`` rows at a time, each chunk's logprobs
(and entropy) are taken and the chunk is dropped; backward recomputes each chunk's logits from the saved
hidden states and weight, so no ``[N, V]`` tensor ever exists. The head weight's gradient accumulates in
float32 across chunks.

What the head computes must match the rollout engine exactly: optional soft-capping
``cap * tanh(z / cap)`` (Gemma 2/3) and then the sampling temperature, in that order (vLLM's). The math is
the same as ``algo.logprobs.token_logprobs`` on the full logits; the tests check they agree.
"""

from __future__ import annotations

from typing import Any

import torch

from grpo_dist.algo.logprobs import DEFAULT_CHUNK_SIZE, _compute_dtype


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, softcap: float | None, temperature: float) -> torch.Tensor:
    """``[n, H] -> [n, V]`` float32 (float64 for float64 inputs) logits as the sampler sees them."""
    z = (h @ weight.t()).to(_compute_dtype(h))
    if softcap is not None:
        z = torch.tanh(z / softcap) * softcap
    return z / temperature


class _HeadLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,  # [N, H]
        weight: torch.Tensor,  # [V, H]
        targets: torch.Tensor,  # [N]
        temperature: float,
        softcap: float | None,
        chunk_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dt = _compute_dtype(hidden)
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=dt, device=hidden.device)
        entropy = torch.empty(n, dtype=dt, device=hidden.device)
        lse = torch.empty(n, dtype=dt, device=hidden.device)  # kept: backward's softmax is then one exp
        for s in range(0, n, chunk_size):
            z = _chunk_logits(hidden[s : s + chunk_size], weight, softcap, temperature)  # [c, V]
            top = z.amax(dim=-1, keepdim=True)
            p = (z - top).exp_()  # one exp pass serves the logsumexp and the softmax
            total = p.sum(dim=-1, keepdim=True)
            chunk_lse = (top + total.log()).squeeze(-1)
            lse[s : s + chunk_size] = chunk_lse
            logp[s : s + chunk_size] = z.gather(-1, targets[s : s + chunk_size, None]).squeeze(-1) - chunk_lse
            entropy[s : s + chunk_size] = chunk_lse - (p.div_(total) * z).sum(dim=-1)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.softcap, ctx.chunk_size = temperature, softcap, chunk_size
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_logp: torch.Tensor, _grad_entropy: torch.Tensor) -> tuple[Any, ...]:
        hidden, weight, targets, lse = ctx.saved_tensors
        t, cap, cs = ctx.temperature, ctx.softcap, ctx.chunk_size
        dt = _compute_dtype(hidden)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=dt, device=weight.device) if need_w else None
        for s in range(0, hidden.shape[0], cs):
            h = hidden[s : s + cs]
            z = _chunk_logits(h, weight, cap, t)  # [c, V]
            # d logp / d z = onehot(y) - softmax(z); through the temperature and the soft-cap to h W^T
            g = (z - lse[s : s + cs, None]).exp_().neg_()  # -softmax(z)
            g.scatter_add_(-1, targets[s : s + cs, None], torch.ones_like(g[:, :1]))
            g.mul_(grad_logp[s : s + cs, None].to(dt) / t)
            if cap is not None:
                g.mul_(1.0 - (z * (t / cap)).square())  # tanh' = 1 - tanh^2, with tanh = z * t / cap
            g = g.to(weight.dtype)
            if grad_h is not None:
                grad_h[s : s + cs] = g @ weight
            if grad_w is not None:
                grad_w += (g.t() @ h).to(dt)
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None


def head_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    softcap: float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, H], [V, H], [N] -> ([N], [N])``: float32 logprobs of ``targets`` under ``softmax(head(h) / T)``
    (differentiable in ``hidden`` and ``weight``) and the entropy there (a metric: not differentiable)."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} must be [N, H] and [V, H]")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets has shape {tuple(targets.shape)}; expected [{hidden.shape[0]}]")
    if temperature <= 0 or chunk_size < 1:
        raise ValueError(f"temperature = {temperature} must be > 0 and chunk_size = {chunk_size} >= 1")
    return _HeadLogprobs.apply(hidden, weight, targets.long(), float(temperature), softcap, int(chunk_size))
