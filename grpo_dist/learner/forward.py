"""A micro-batch through the policy: per-token logprobs (and entropies) in the padded ``[n, W-1]`` layout.

Two independent choices, both exact (the tests compare them with the plain path):

* ``packing``: the micro-batch's sequences run as one packed row (``learner.packing``), no padding
  computed; see ``learner.packing``.
* the fused head (``algo.fused_head``): the LM head is applied chunk by chunk inside the logprob, so the
  ``[tokens, vocab]`` logits never exist. Used where the head is a plain bias-free linear layer (optionally
  soft-capped) whose weight this process holds whole: not under ZeRO-3, which partitions it, and not when
  the entropy bonus needs the entropy's gradient. Elsewhere the model's own logits are used.

Pure torch and transformers: no DeepSpeed, no Ray (the learner rank hands in its module).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpo_dist import algo
from grpo_dist.algo.fused_head import head_token_logprobs
from grpo_dist.learner.packing import pack

#: config keys of heads that scale their logits in ways the fused head does not reproduce
_SCALED_HEAD_KEYS = ("logit_scale", "logits_scaling", "output_multiplier_scale", "logits_soft_cap")


@dataclass(frozen=True)
class ForwardSettings:
    packing: bool
    temperature: float
    chunk_size: int
    fused_head: bool = True


def fused_head_weight(model: torch.nn.Module) -> tuple[torch.Tensor, float | None] | None:
    """The head's weight and soft-cap where the fused head computes exactly the model's logits, else None."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return None
    config = model.config  # type: ignore[union-attr]
    if any(getattr(config, key, None) not in (None, 1, 1.0) for key in _SCALED_HEAD_KEYS):
        return None
    if getattr(head.weight, "ds_numel", None) is not None:  # a ZeRO-3 partition: not the whole weight here
        return None
    return head.weight, getattr(config, "final_logit_softcapping", None)


def token_outputs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    settings: ForwardSettings,
    *,
    entropy_grad: bool = False,
    needed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, W]`` right-padded rows -> ``([n, W-1]`` logprobs of each next token, ``[n, W-1]`` entropies``)``;
    0 where a row has no next token. Entropies carry a gradient only with ``entropy_grad``.

    ``needed`` (``[n, W-1]`` bool, e.g. the loss mask): the positions whose values the caller reads. With the
    fused head only those go through the LM head (a prompt's positions are a third of a GRPO batch's and the
    head a fifth of a small model's compute); the others come back as 0. Without it every position is
    computed."""
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    n, width = ids.shape
    if settings.packing:
        row = pack(ids, attention_mask.to(device))
        kwargs = row.forward_kwargs(device)
        targets = row.targets  # [S-1]
    else:
        kwargs = {"input_ids": ids, "attention_mask": attention_mask.to(device), "use_cache": False}
        targets = ids[:, 1:].reshape(-1)  # [n * (W-1)]
    head = fused_head_weight(model) if settings.fused_head and not entropy_grad else None
    t, chunk = settings.temperature, settings.chunk_size
    if head is not None:
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # (under peft's wrapper)
        base = getattr(inner, inner.base_model_prefix)  # its adapters, if any, are inside its layers
        hidden = base(**kwargs).last_hidden_state  # [1, S, H] or [n, W, H]
        hidden = hidden[0, :-1] if settings.packing else hidden[:, :-1].reshape(-1, hidden.shape[-1])
        weight, softcap = head
        if needed is not None:
            keep = needed.to(device).bool()  # [n, W-1]
            if settings.packing:
                keep = keep & row.valid.to(device)
            flat = row.gather_index.to(device)[keep] if settings.packing else torch.nonzero(keep.flatten()).flatten()
            lp, entropy = head_token_logprobs(
                hidden[flat], weight, targets[flat], temperature=t, softcap=softcap, chunk_size=chunk
            )
            zeros = torch.zeros(keep.shape, dtype=lp.dtype, device=device)
            return zeros.masked_scatter(keep, lp), zeros.masked_scatter(keep, entropy)  # row-major, as ``flat``
        lp, entropy = head_token_logprobs(hidden, weight, targets, temperature=t, softcap=softcap, chunk_size=chunk)
    else:
        logits = model(**kwargs).logits  # [1, S, V] or [n, W, V]
        logits = logits[0, :-1] if settings.packing else logits[:, :-1].reshape(-1, logits.shape[-1])
        lp = algo.token_logprobs(logits, targets, temperature=t, chunk_size=chunk)
        if entropy_grad:
            entropy = algo.token_entropy(logits, temperature=t, chunk_size=chunk)
        else:
            with torch.no_grad():
                entropy = algo.token_entropy(logits.detach(), temperature=t, chunk_size=chunk)
    if settings.packing:
        return row.unpack(lp), row.unpack(entropy)
    return lp.view(n, width - 1), entropy.view(n, width - 1)
