"""Token-budget micro-batches for a mini-batch of variable-length sequences (pure: no torch, no Ray).

Real GRPO answers differ in length by an order of magnitude, so a fixed number of sequences per
micro-batch either wastes compute on padding or overflows memory on the long ones. The plan here cuts a
mini-batch into micro-batches by a token budget instead:

1. sequences go to ranks longest first, each to the rank with the fewest tokens so far (balanced work);
2. on each rank, first-fit decreasing packs them into micro-batches of at most ``max_tokens`` tokens; a
   sequence longer than the budget gets a micro-batch of its own;
3. every rank must run the same number of micro-batches (each backward pass is a collective under ZeRO),
   so ranks with fewer split their fullest micro-batch in two until they match, or, when nothing can be
   split, take an empty one (the caller runs it as a zero-weight pass).

The plan depends only on the lengths and the settings, so the old/reference logprob passes can reuse the
training pass's plan. Which micro-batch a sequence lands in never changes the loss: its normalisation uses
the mini-batch's global token / sequence counts (``algo.loss_denominator``).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

Plan = list[list[list[int]]]
"""``plan[rank][micro]`` is the list of sequence indices (into the mini-batch) of that micro-batch."""


def plan_micro_batches(lengths: Sequence[int], *, num_ranks: int, max_tokens: int) -> Plan:
    """The micro-batches of each rank for sequences of ``lengths`` tokens (see the module docstring)."""
    if num_ranks < 1:
        raise ValueError(f"num_ranks = {num_ranks}: must be >= 1")
    if max_tokens < 1:
        raise ValueError(f"max_tokens = {max_tokens}: must be >= 1")
    if any(n < 0 for n in lengths):
        raise ValueError("sequence lengths must be >= 0")
    per_rank = _assign_to_ranks(lengths, num_ranks)
    bins = [_first_fit_decreasing(indices, lengths, max_tokens) for indices in per_rank]
    target = max(len(b) for b in bins)
    return [_split_to(b, lengths, target) for b in bins]


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


def _first_fit_decreasing(indices: Sequence[int], lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in _longest_first(indices, lengths):
        for b, load in enumerate(loads):
            if load + lengths[i] <= max_tokens:
                bins[b].append(i)
                loads[b] += lengths[i]
                break
        else:  # no room anywhere (or longer than the budget itself): a micro-batch of its own
            bins.append([i])
            loads.append(lengths[i])
    return bins


def _split_to(bins: list[list[int]], lengths: Sequence[int], target: int) -> list[list[int]]:
    """Split the fullest splittable micro-batch in two (alternating its sequences, longest first) until
    there are ``target``; pad with empty micro-batches when none has two sequences left."""
    bins = [list(b) for b in bins]
    while len(bins) < target:
        splittable = [b for b in range(len(bins)) if len(bins[b]) > 1]
        if not splittable:
            bins.append([])
            continue
        b = max(splittable, key=lambda k: (sum(lengths[i] for i in bins[k]), -k))
        ordered = _longest_first(bins[b], lengths)
        bins[b], extra = ordered[0::2], ordered[1::2]
        bins.append(extra)
    return bins
