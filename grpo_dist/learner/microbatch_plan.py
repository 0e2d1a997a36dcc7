"""Micro-batches for a mini-batch of variable-length sequences (pure: no torch, no Ray).

Real GRPO answers differ in length by an order of magnitude, so a fixed number of sequences per
micro-batch either wastes compute on padding or overflows memory on the long ones. The plan here cuts a
mini-batch into micro-batches by a token budget (``max_tokens``), by a sequence count (``max_sequences``),
or both:

1. sequences go to ranks longest first, each to the rank with the fewest tokens so far (balanced work);
2. on each rank, first-fit decreasing fills micro-batches while they stay within the limits; a sequence
   longer than the budget gets a micro-batch of its own. A micro-batch's cost is its real tokens when
   sequences are packed into one row, or rows x longest row when they are padded (``padded=True``):
   longest-first order keeps similar lengths together, so padding stays small either way;
3. every rank must run the same number of micro-batches (each backward pass is a collective under ZeRO),
   so ranks with fewer split their fullest micro-batch in two until they match, or, when nothing can be
   split, take an empty one (the caller runs it as a zero-weight pass).

The plan depends only on the lengths and the settings, so the old/reference logprob passes reuse the
training pass's plan. Which micro-batch a sequence lands in never changes the loss: its normalisation uses
the mini-batch's global token / sequence counts (``algo.loss_denominator``).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

Plan = list[list[list[int]]]
"""``plan[rank][micro]`` is the list of sequence indices (into the mini-batch) of that micro-batch."""


@dataclass(frozen=True)
class _Limits:
    max_tokens: int | None
    max_sequences: int | None
    padded: bool

    def cost(self, lengths: Sequence[int], micro: Sequence[int]) -> int:
        if not micro:
            return 0
        if self.padded:
            return len(micro) * max(lengths[i] for i in micro)
        return sum(lengths[i] for i in micro)

    def fits(self, lengths: Sequence[int], micro: Sequence[int], extra: int) -> bool:
        if self.max_sequences is not None and len(micro) + 1 > self.max_sequences:
            return False
        return self.max_tokens is None or self.cost(lengths, [*micro, extra]) <= self.max_tokens


def plan_micro_batches(
    lengths: Sequence[int],
    *,
    num_ranks: int,
    max_tokens: int | None = None,
    max_sequences: int | None = None,
    padded: bool = False,
) -> Plan:
    """The micro-batches of each rank for sequences of ``lengths`` tokens (see the module docstring)."""
    if num_ranks < 1:
        raise ValueError(f"num_ranks = {num_ranks}: must be >= 1")
    if max_tokens is None and max_sequences is None:
        raise ValueError("give max_tokens, max_sequences or both")
    for name, value in (("max_tokens", max_tokens), ("max_sequences", max_sequences)):
        if value is not None and value < 1:
            raise ValueError(f"{name} = {value}: must be >= 1")
    if any(n < 0 for n in lengths):
        raise ValueError("sequence lengths must be >= 0")
    limits = _Limits(max_tokens, max_sequences, padded)
    per_rank = _assign_to_ranks(lengths, num_ranks)
    bins = [_first_fit_decreasing(indices, lengths, limits) for indices in per_rank]
    target = max(len(b) for b in bins)
    return [_split_to(b, lengths, target, limits) for b in bins]


def _longest_first(indices: Sequence[int], lengths: Sequence[int]) -> list[int]:
    return sorted(indices, key=lambda i: (-lengths[i], i))


def _assign_to_ranks(lengths: Sequence[int], num_ranks: int) -> list[list[int]]:
    ranks: list[list[int]] = [[] for _ in range(num_ranks)]
    heap = [(0, r) for r in range(num_ranks)]  # (tokens so far, rank)
    for i in _longest_first(range(len(lengths)), lengths):
        load, r = heapq.heappop(heap)
        ranks[r].append(i)
        heapq.heappush(heap, (load + lengths[i], r))
    return ranks


def _first_fit_decreasing(indices: Sequence[int], lengths: Sequence[int], limits: _Limits) -> list[list[int]]:
    bins: list[list[int]] = []
    for i in _longest_first(indices, lengths):
        for micro in bins:
            if limits.fits(lengths, micro, i):
                micro.append(i)
                break
        else:  # no room anywhere (or longer than the budget itself): a micro-batch of its own
            bins.append([i])
    return bins


def _split_to(bins: list[list[int]], lengths: Sequence[int], target: int, limits: _Limits) -> list[list[int]]:
    """Split the costliest splittable micro-batch in two (alternating its sequences, longest first) until
    there are ``target``; pad with empty micro-batches when none has two sequences left."""
    bins = [list(b) for b in bins]
    while len(bins) < target:
        splittable = [b for b in range(len(bins)) if len(bins[b]) > 1]
        if not splittable:
            bins.append([])
            continue
        b = max(splittable, key=lambda k: (limits.cost(lengths, bins[k]), -k))
        ordered = _longest_first(bins[b], lengths)
        bins[b], extra = ordered[0::2], ordered[1::2]
        bins.append(extra)
    return bins


def padding_fraction(lengths: Sequence[int], plan: Plan) -> float:
    """Share of the computed positions that would be padding if each micro-batch were right-padded to its
    longest sequence (0 when packed rows are used: this is what packing saves)."""
    real = padded = 0
    for rank in plan:
        for micro in rank:
            if micro:
                real += sum(lengths[i] for i in micro)
                padded += len(micro) * max(lengths[i] for i in micro)
    return 1.0 - real / padded if padded else 0.0
