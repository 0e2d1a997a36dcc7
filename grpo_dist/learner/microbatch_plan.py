"""Micro-batches for a mini-batch of variable-length sequences (pure: no torch, no Ray).

Real GRPO answers differ in length by an order of magnitude, so a fixed number of sequences per
micro-batch either wastes compute on padding or overflows memory on the long ones. The plan here cuts a
mini-batch into micro-batches by a token budget (``max_tokens``), by a sequence count (``max_sequences``),
or both:

1. sequences go to ranks longest first, each to the rank with the fewest tokens so far (balanced work;
   a forked trajectory's segments go together everywhere, as one item: ``units``);
2. on each rank, first-fit decreasing fills micro-batches while they stay within the limits; a sequence
   (or unit) longer than the budget gets a micro-batch of its own. A micro-batch's cost is its real tokens
   when sequences are packed into one row, or rows x longest row when they are padded (``padded=True``):
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
    """The limits, over units: groups of sequences that share a micro-batch (one sequence each, unless a
    forked trajectory's segments must stay together)."""

    lengths: Sequence[int]
    units: Sequence[Sequence[int]]
    max_tokens: int | None
    max_sequences: int | None
    padded: bool

    def rows(self, micro: Sequence[int]) -> list[int]:
        return [i for u in micro for i in self.units[u]]

    def size(self, unit: int) -> int:
        return sum(self.lengths[i] for i in self.units[unit])

    def cost(self, micro: Sequence[int]) -> int:
        rows = self.rows(micro)
        if not rows:
            return 0
        if self.padded:
            return len(rows) * max(self.lengths[i] for i in rows)
        return sum(self.lengths[i] for i in rows)

    def fits(self, micro: Sequence[int], extra: int) -> bool:
        if self.max_sequences is not None and len(self.rows([*micro, extra])) > self.max_sequences:
            return False
        return self.max_tokens is None or self.cost([*micro, extra]) <= self.max_tokens


def plan_micro_batches(
    lengths: Sequence[int],
    *,
    num_ranks: int,
    max_tokens: int | None = None,
    max_sequences: int | None = None,
    padded: bool = False,
    units: Sequence[Sequence[int]] | None = None,
) -> Plan:
    """The micro-batches of each rank for sequences of ``lengths`` tokens (see the module docstring).

    ``units``: a partition of the sequence indices into groups that must land in one micro-batch (a forked
    trajectory's segments, whose sequence-level ratio spans them); None: every sequence on its own. A group
    is placed as one item, by its total length.
    """
    if num_ranks < 1:
        raise ValueError(f"num_ranks = {num_ranks}: must be >= 1")
    if max_tokens is None and max_sequences is None:
        raise ValueError("give max_tokens, max_sequences or both")
    for name, value in (("max_tokens", max_tokens), ("max_sequences", max_sequences)):
        if value is not None and value < 1:
            raise ValueError(f"{name} = {value}: must be >= 1")
    if any(n < 0 for n in lengths):
        raise ValueError("sequence lengths must be >= 0")
    if units is None:
        units = [[i] for i in range(len(lengths))]
    elif sorted(i for u in units for i in u) != list(range(len(lengths))) or not all(units):
        raise ValueError(f"units must split the {len(lengths)} sequence indices into non-empty groups")
    limits = _Limits(lengths, units, max_tokens, max_sequences, padded)
    per_rank = _assign_to_ranks(limits, num_ranks)
    bins = [_first_fit_decreasing(indices, limits) for indices in per_rank]
    target = max(len(b) for b in bins)
    return [[limits.rows(micro) for micro in _split_to(b, target, limits)] for b in bins]


def _longest_first(indices: Sequence[int], limits: _Limits) -> list[int]:
    return sorted(indices, key=lambda u: (-limits.size(u), u))


def _assign_to_ranks(limits: _Limits, num_ranks: int) -> list[list[int]]:
    ranks: list[list[int]] = [[] for _ in range(num_ranks)]
    heap = [(0, r) for r in range(num_ranks)]  # (tokens so far, rank)
    for u in _longest_first(range(len(limits.units)), limits):
        load, r = heapq.heappop(heap)
        ranks[r].append(u)
        heapq.heappush(heap, (load + limits.size(u), r))
    return ranks


def _first_fit_decreasing(indices: Sequence[int], limits: _Limits) -> list[list[int]]:
    bins: list[list[int]] = []
    for u in _longest_first(indices, limits):
        for micro in bins:
            if limits.fits(micro, u):
                micro.append(u)
                break
        else:  # no room anywhere (or longer than the budget itself): a micro-batch of its own
            bins.append([u])
    return bins


def _split_to(bins: list[list[int]], target: int, limits: _Limits) -> list[list[int]]:
    """Split the costliest splittable micro-batch in two (alternating its units, longest first) until
    there are ``target``; pad with empty micro-batches when none has two units left."""
    bins = [list(b) for b in bins]
    while len(bins) < target:
        splittable = [b for b in range(len(bins)) if len(bins[b]) > 1]
        if not splittable:
            bins.append([])
            continue
        b = max(splittable, key=lambda k: (limits.cost(bins[k]), -k))
        ordered = _longest_first(bins[b], limits)
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
