"""A step's batch cut into each learner rank's work: which sequences, in which micro-batches, and the loss
denominator of each mini-batch. Computed once in the driver (``LearnerGroup``), which sees the whole batch.

Mini-batches are contiguous runs of whole groups (``learner.mini_batch_size`` prompts each); within a
mini-batch ``microbatch_plan.plan_micro_batches`` balances sequences over ranks and cuts them into
micro-batches. A forked trajectory's rows (``TrainBatch.sample_index``) stay in one mini-batch and one
micro-batch. The cut depends only on the lengths and the settings, so the old/reference logprob passes
and the training pass of a step see the same micro-batches. Each mini-batch's loss denominator (tokens or
sequences, ``algo.loss_denominator``) is counted here over the whole mini-batch, so no rank needs to ask
the others for it and the loss is the same however the mini-batch is cut.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

import torch

from grpo_dist import algo
from grpo_dist.learner.batch import TrainBatch
from grpo_dist.learner.microbatch_plan import padding_fraction, plan_micro_batches


@dataclass(frozen=True)
class MicroBatching:
    """How a mini-batch is cut: a token budget (``max_tokens``, per micro-batch and rank), else a sequence
    count; ``padded`` when micro-batches are right-padded rather than packed (the budget then counts
    padding too)."""

    max_tokens: int | None
    max_sequences: int | None
    padded: bool


@dataclass(frozen=True)
class RankWork:
    """One rank's share of a step."""

    batch: TrainBatch  # this rank's sequences
    micro_batches: list[list[list[int]]]  # [mini-batch][micro-batch] -> rows of ``batch`` (may be empty)
    denominators: list[float]  # [mini-batch] the mini-batch's global loss count (before any rank scaling)
    rows: list[int]  # row i of ``batch`` is row rows[i] of the step's batch

    @property
    def num_micro_batches(self) -> int:
        return sum(len(m) for m in self.micro_batches)


def sequence_lengths(batch: TrainBatch) -> list[int]:
    return [int(n) for n in batch.attention_mask.sum(dim=1)]


def split_step(
    batch: TrainBatch, *, num_ranks: int, num_minibatches: int, cut: MicroBatching, loss_agg_mode: str
) -> list[RankWork]:
    """Each rank's work for ``batch`` (see the module docstring)."""
    owner = list(range(batch.num_sequences)) if batch.sample_index is None else batch.sample_index.tolist()
    n = owner[-1] + 1 if owner else 0  # completions (rows are in completion order)
    if n % num_minibatches:
        raise ValueError(f"{n} sequences do not split into {num_minibatches} equal mini-batches")
    per_mini = n // num_minibatches
    bounds = [bisect_left(owner, m * per_mini) for m in range(num_minibatches)] + [len(owner)]
    lengths = sequence_lengths(batch)
    rows: list[list[int]] = [[] for _ in range(num_ranks)]
    micro: list[list[list[list[int]]]] = [[] for _ in range(num_ranks)]
    denominators = []
    for m in range(num_minibatches):
        start, stop = bounds[m], bounds[m + 1]
        plan = plan_micro_batches(
            lengths[start:stop],
            num_ranks=num_ranks,
            max_tokens=cut.max_tokens,
            max_sequences=cut.max_sequences,
            padded=cut.padded,
            units=None if batch.sample_index is None else _units(owner[start:stop]),
        )
        tokens = None if batch.sample_tokens is None else batch.sample_tokens[start:stop]
        denominators.append(algo.loss_denominator(batch.loss_mask[start:stop], loss_agg_mode, tokens))
        for r, rank_plan in enumerate(plan):
            local = []
            for seqs in rank_plan:
                local.append(list(range(len(rows[r]), len(rows[r]) + len(seqs))))
                rows[r].extend(start + i for i in seqs)
            micro[r].append(local)
    return [
        RankWork(batch.select(torch.tensor(rows[r], dtype=torch.long)), micro[r], denominators, rows[r])
        for r in range(num_ranks)
    ]


def _units(owner: list[int]) -> list[list[int]]:
    """The rows of each completion (``owner``: each row's completion, rows in completion order), as indices
    into ``owner``: a forked trajectory's segments share a micro-batch (its sequence-level ratio spans them)."""
    units: list[list[int]] = []
    for i, o in enumerate(owner):
        if i and o == owner[i - 1]:
            units[-1].append(i)
        else:
            units.append([i])
    return units


def merge_rows(parts: list[torch.Tensor], works: list[RankWork], num_sequences: int, width: int) -> torch.Tensor:
    """The ranks' per-row results ``[n_r, w_r]`` back in the step's row order, right-padded to ``width``."""
    out = torch.zeros((num_sequences, width), dtype=parts[0].dtype if parts else torch.float32)
    for part, work in zip(parts, works):
        if work.rows:
            out[torch.tensor(work.rows, dtype=torch.long), : part.shape[1]] = part
    return out


def plan_padding(batch: TrainBatch, works: list[RankWork]) -> float:
    """Share of padding the step's micro-batches would compute if right-padded (what packing saves)."""
    lengths = sequence_lengths(batch)
    plan = [[[work.rows[i] for i in m] for mini in work.micro_batches for m in mini] for work in works]
    return padding_fraction(lengths, plan)
