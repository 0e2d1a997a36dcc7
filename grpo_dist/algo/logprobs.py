"""Per-token log-probabilities and entropies from LM logits, without a full float32 copy of the logits.

The logits of a language model are ``[B, T, V]`` with V in the tens of thousands, usually in bf16. The
obvious ``log_softmax(logits.float())`` allocates a float32 copy twice the size of the logits (plus a
same-sized softmax for backward), which is often the peak of a learner step. Here the flattened
``B * T`` rows are processed ``chunk_size`` at a time: only one chunk is ever upcast, and backward
recomputes each chunk's softmax from the (already resident) low-precision logits instead of keeping
float32 activations alive. The result is float32 for bf16/fp16/fp32 logits (float64 for float64 logits,
which the exact-gradient tests use).

Both functions accept any leading shape ``[..., V]``; ``[B, T, V]`` is the usual one. A non-contiguous
input (for example ``logits[:, :-1]``) costs one copy in its own dtype when flattened.
"""

from __future__ import annotations

from typing import Any

import torch

from grpo_dist.algo._checks import check_finite_number

DEFAULT_CHUNK_SIZE = 512
"""Rows (tokens) per chunk: 512 rows x 152k vocab is about 300 MB of float32 scratch."""


def _check_common(logits: torch.Tensor, temperature: float, chunk_size: int) -> None:
    if logits.dim() < 2:
        raise ValueError(f"logits must have shape [..., vocab], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    check_finite_number("temperature", temperature, minimum=0.0, strict=True)
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be a positive number of rows")


def _chunks(num_rows: int, chunk_size: int) -> range:
    return range(0, num_rows, chunk_size)


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """float32 for half-precision and float32 logits; float64 stays float64."""
    return torch.promote_types(logits.dtype, torch.float32)


class _TokenLogprobs(torch.autograd.Function):
    """logp[n] = z[n, y_n] - logsumexp(z[n]) with z = logits / temperature, chunked in both passes."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: torch.Tensor, targets: torch.Tensor, temperature: float, chunk_size: int
    ) -> torch.Tensor:
        # logits: [N, V] (any float dtype); targets: [N] int64
        dt = _compute_dtype(logits)
        out = torch.empty(logits.shape[0], dtype=dt, device=logits.device)  # [N]
        for s in _chunks(logits.shape[0], chunk_size):
            z = logits[s : s + chunk_size].to(dt) / temperature  # [n, V] fp32: the only upcast copy
            tgt = z.gather(-1, targets[s : s + chunk_size, None]).squeeze(-1)  # [n]
            out[s : s + chunk_size] = tgt - torch.logsumexp(z, dim=-1)
        ctx.save_for_backward(logits, targets)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        # d logp[n] / d logits[n, j] = (onehot(y_n)[j] - softmax(z[n])[j]) / temperature
        logits, targets = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        t, cs, dt = ctx.temperature, ctx.chunk_size, _compute_dtype(logits)
        grad = torch.empty_like(logits)  # [N, V] in the logits' dtype
        for s in _chunks(logits.shape[0], cs):
            z = logits[s : s + cs].to(dt) / t  # [n, V]
            g = torch.softmax(z, dim=-1).neg_()  # [n, V]
            g.scatter_add_(-1, targets[s : s + cs, None], torch.ones_like(g[:, :1]))
            g.mul_(grad_out[s : s + cs, None].to(dt) / t)
            grad[s : s + cs] = g
        return grad, None, None, None


class _TokenEntropy(torch.autograd.Function):
    """H[n] = logsumexp(z[n]) - sum_j p[n, j] z[n, j] with p = softmax(z), chunked in both passes."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, temperature: float, chunk_size: int) -> torch.Tensor:  # type: ignore[override]
        dt = _compute_dtype(logits)
        out = torch.empty(logits.shape[0], dtype=dt, device=logits.device)  # [N]
        for s in _chunks(logits.shape[0], chunk_size):
            z = logits[s : s + chunk_size].to(dt) / temperature  # [n, V]
            p = torch.softmax(z, dim=-1)  # [n, V]
            out[s : s + chunk_size] = torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1)
        ctx.save_for_backward(logits)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        # dH[n] / d logits[n, j] = -p[n, j] * (z[n, j] - E_p[z[n]]) / temperature
        (logits,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        t, cs, dt = ctx.temperature, ctx.chunk_size, _compute_dtype(logits)
        grad = torch.empty_like(logits)  # [N, V]
        for s in _chunks(logits.shape[0], cs):
            z = logits[s : s + cs].to(dt) / t  # [n, V]
            p = torch.softmax(z, dim=-1)  # [n, V]
            centred = z - (p * z).sum(dim=-1, keepdim=True)  # [n, V]
            grad[s : s + cs] = p.mul_(centred).mul_(grad_out[s : s + cs, None].to(dt) / -t)
        return grad, None, None


def token_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """``[B, T, V], [B, T] -> [B, T]`` float32 ``log softmax(logits / temperature)[target]`` (see module doc).

    ``temperature`` must be the sampling temperature the rollout engine used, otherwise the learner's
    log-probs disagree with the behaviour policy's and every importance ratio is biased. Differentiable
    with respect to ``logits`` (first-order only). Every target, masked positions included, must be a
    valid token id in ``[0, V)``; put any valid id (e.g. 0) at padding positions.
    """
    _check_common(logits, temperature, chunk_size)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"targets has shape {tuple(targets.shape)} but logits has shape {tuple(logits.shape)}; "
            "targets must equal logits' shape without the last (vocab) dimension"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be an integer tensor of token ids, got dtype {targets.dtype}")
    vocab = logits.shape[-1]
    if targets.numel() > 0 and bool(((targets < 0) | (targets >= vocab)).any()):
        raise ValueError(
            f"targets contain ids outside [0, {vocab}) (min {int(targets.min())}, max {int(targets.max())}); "
            "replace ignore/padding ids such as -100 with a valid id and mask those positions instead"
        )
    flat = logits.reshape(-1, vocab)  # [N, V]
    out = _TokenLogprobs.apply(flat, targets.reshape(-1).long(), float(temperature), int(chunk_size))  # [N]
    return out.view(targets.shape)


def token_entropy(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """``[B, T, V] -> [B, T]`` float32 (see module doc) entropy of ``softmax(logits / temperature)`` at each position.

    Usually computed under ``torch.no_grad()`` for the ``entropy`` metric; it is differentiable (with the
    same chunked, low-memory backward) so that an entropy bonus can be trained on.
    """
    _check_common(logits, temperature, chunk_size)
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)  # [N, V]
    out = _TokenEntropy.apply(flat, float(temperature), int(chunk_size))  # [N]
    return out.view(logits.shape[:-1])


def sequence_logprob_sums(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, T], [B, T] -> [B]`` sum of each sequence's log-probs over its masked (response) tokens.

    Masked-out positions are excluded with ``where`` rather than multiplied by 0, so a ``-inf`` or NaN log-prob
    at a padding position cannot leak into the sum.
    """
    if token_logprobs.dim() != 2:
        raise ValueError(f"token_logprobs must have shape [B, T], got shape {tuple(token_logprobs.shape)}")
    if mask.shape != token_logprobs.shape:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but must match token_logprobs' shape {tuple(token_logprobs.shape)}"
        )
    valid = mask.bool()  # [B, T]
    return torch.where(valid, token_logprobs, torch.zeros_like(token_logprobs)).sum(dim=-1)  # [B]
