"""Sequence packing: the sequences of a micro-batch as one row, with no cross-sequence attention.

A padded micro-batch ``[n, L]`` computes ``n * L`` positions for ``sum(lengths)`` real tokens; with GRPO's
answer lengths most of that is padding. Packed, the sequences sit end to end in one ``[1, S]`` row with
``S = sum(lengths)`` and position ids that restart at 0 for each sequence.

transformers detects the packing from those position ids and builds a block-diagonal causal mask (eager,
sdpa) or calls the flash-attention varlen kernel: in both, a token attends only to its own sequence's
earlier tokens, so each sequence's logits equal its padded ones. The detection runs only when NO 2-D
attention mask is passed: an all-ones ``[1, S]`` mask, which looks harmless, silently switches it off and
lets every sequence attend to the ones before it, and so does a KV cache (transformers makes one unless
``use_cache=False``). ``PackedRow.forward_kwargs`` therefore passes neither.

Logprobs come back in the padded layout (``[n, L-1]``, position t predicting token t+1 of the same
sequence), so the loss code is the same for both paths. Next-token predictions that cross from one
sequence into the next are computed but never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PackedRow:
    input_ids: torch.Tensor  # [1, S] long
    position_ids: torch.Tensor  # [1, S] long, restarting at 0 per sequence
    gather_index: torch.Tensor  # [n, W-1] long: flat next-token position (into S-1) of each padded slot
    valid: torch.Tensor  # [n, W-1] bool: the slot is a real next-token prediction of its sequence

    def forward_kwargs(self, device: torch.device) -> dict[str, torch.Tensor | None]:
        """Model inputs: ids, restarting position ids, explicitly no attention mask and no KV cache (a cache
        switches the detection off too)."""
        return {
            "input_ids": self.input_ids.to(device),
            "position_ids": self.position_ids.to(device),
            "attention_mask": None,
            "use_cache": False,
        }

    @property
    def targets(self) -> torch.Tensor:
        """``[S-1]``: the token each flat position predicts."""
        return self.input_ids[0, 1:]

    def unpack(self, flat: torch.Tensor) -> torch.Tensor:
        """``[S-1] -> [n, W-1]``: per-position values back in the padded layout (0 outside ``valid``);
        differentiable."""
        index = self.gather_index.to(flat.device)
        picked = flat[index]  # [n, W-1]
        return torch.where(self.valid.to(flat.device), picked, torch.zeros_like(picked))


def sequence_lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[n, W] -> [n]`` lengths of right-padded rows; a mask with holes or left padding is refused, since
    packing would silently drop or misplace tokens."""
    lengths = attention_mask.sum(dim=1)
    width = attention_mask.shape[1]
    expected = torch.arange(width, device=attention_mask.device)[None, :] < lengths[:, None]
    if not torch.equal(attention_mask.bool(), expected):
        raise ValueError("packing needs right-padded rows (attention mask 1...1 0...0 in every row)")
    return lengths


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> PackedRow:
    """Pack right-padded ``[n, W]`` rows into one row (see the module docstring)."""
    n, width = input_ids.shape
    lengths = sequence_lengths(attention_mask)
    keep = attention_mask.bool()
    packed = input_ids[keep][None, :]  # [1, S], row-major: sequence 0, then 1, ...
    starts = torch.cumsum(lengths, 0) - lengths  # [n]
    t = torch.arange(width, device=input_ids.device)
    position_ids = (t[None, :].expand(n, width))[keep][None, :]
    # slot (i, t) predicts token t+1 of sequence i from flat position starts[i] + t (valid while t+1 < len)
    cols = t[: width - 1]
    valid = cols[None, :] < (lengths[:, None] - 1)
    total = int(lengths.sum())
    gather = (starts[:, None] + cols[None, :]).clamp(max=max(total - 2, 0))
    return PackedRow(packed, position_ids, torch.where(valid, gather, torch.zeros_like(gather)), valid)
