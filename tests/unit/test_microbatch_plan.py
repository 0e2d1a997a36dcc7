"""The token-budget micro-batch planner: every sequence once, within budget, the same number of
micro-batches on every rank, balanced work, deterministic."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_dist.learner.microbatch_plan import padding_fraction, plan_micro_batches


def _tokens(lengths: list[int], micro: list[int]) -> int:
    return sum(lengths[i] for i in micro)


def test_hand_case_packs_by_tokens_and_isolates_the_overlong_sequence() -> None:
    lengths = [10, 90, 40, 300, 50, 10]
    plan = plan_micro_batches(lengths, num_ranks=1, max_tokens=100)
    assert plan == [[[3], [1, 0], [4, 2, 5]]]  # 300 alone; 90+10; 50+40+10


def test_ranks_get_balanced_tokens_and_equal_micro_batch_counts() -> None:
    lengths = [100, 100, 100, 100, 5, 5, 5, 5]
    plan = plan_micro_batches(lengths, num_ranks=2, max_tokens=128)
    assert [sum(_tokens(lengths, m) for m in rank) for rank in plan] == [210, 210]
    assert len(plan[0]) == len(plan[1]) == 2


def test_a_rank_with_nothing_to_split_gets_an_empty_micro_batch() -> None:
    # rank 0 holds the 500 alone; rank 1 needs two passes (400, then 10): rank 0 runs an empty second pass
    assert plan_micro_batches([500, 400, 10], num_ranks=2, max_tokens=100) == [[[0], []], [[1], [2]]]


@pytest.mark.parametrize(("num_ranks", "max_tokens"), [(0, 10), (1, 0)])
def test_bad_settings_are_refused(num_ranks: int, max_tokens: int) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        plan_micro_batches([1, 2], num_ranks=num_ranks, max_tokens=max_tokens)
    with pytest.raises(ValueError, match="max_tokens, max_sequences or both"):
        plan_micro_batches([1, 2], num_ranks=1)


def test_a_sequence_cap_alone_groups_similar_lengths() -> None:
    lengths = [5, 100, 6, 90, 7, 80]
    plan = plan_micro_batches(lengths, num_ranks=1, max_sequences=2)
    assert plan == [[[1, 3], [5, 4], [2, 0]]]  # longest first: the long ones together, the short ones together
    assert padding_fraction(lengths, plan) < padding_fraction(lengths, [[[0, 1], [2, 3], [4, 5]]])


def test_the_padded_cost_counts_rows_times_the_longest() -> None:
    lengths = [60, 10, 10, 10]
    # packed: 60 + 10 + 10 + 10 = 90 fits 100; padded: 4 rows x 60 = 240 does not, 1 x 60 then 3 x 10 do
    assert plan_micro_batches(lengths, num_ranks=1, max_tokens=100) == [[[0, 1, 2, 3]]]
    assert plan_micro_batches(lengths, num_ranks=1, max_tokens=100, padded=True) == [[[0], [1, 2, 3]]]


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=64),
    num_ranks=st.integers(min_value=1, max_value=4),
    max_tokens=st.integers(min_value=1, max_value=512),
    max_sequences=st.one_of(st.none(), st.integers(min_value=1, max_value=8)),
    padded=st.booleans(),
)
def test_plan_invariants(
    lengths: list[int], num_ranks: int, max_tokens: int, max_sequences: int | None, padded: bool
) -> None:
    kw = {"num_ranks": num_ranks, "max_tokens": max_tokens, "max_sequences": max_sequences, "padded": padded}
    plan = plan_micro_batches(lengths, **kw)
    assert len(plan) == num_ranks
    assert len({len(rank) for rank in plan}) == 1  # every rank runs the same number of passes
    placed = sorted(i for rank in plan for micro in rank for i in micro)
    assert placed == list(range(len(lengths)))  # every sequence exactly once
    for rank in plan:
        for micro in rank:
            cost = len(micro) * max(lengths[i] for i in micro) if padded and micro else _tokens(lengths, micro)
            assert len(micro) <= 1 or cost <= max_tokens  # within budget, or alone
            assert max_sequences is None or len(micro) <= max_sequences
    loads = [sum(_tokens(lengths, m) for m in rank) for rank in plan]
    assert max(loads) - min(loads) <= max(lengths)  # greedy balance: within one sequence
    assert plan == plan_micro_batches(list(lengths), **kw)  # deterministic


def test_units_share_a_micro_batch_and_are_refused_unless_they_split_the_sequences() -> None:
    lengths = [30, 30, 30, 30]
    # alone, 0 and 3 would pair up by first fit; as a unit, 1 and 3 go together and the budget counts both
    assert plan_micro_batches(lengths, num_ranks=1, max_tokens=60) == [[[0, 1], [2, 3]]]
    assert plan_micro_batches(lengths, num_ranks=1, max_tokens=60, units=[[0], [1, 3], [2]]) == [[[1, 3], [0, 2]]]
    for units in ([[0, 1], [1, 2], [3]], [[0], [1], [2]], [[0, 1], [], [2, 3]]):
        with pytest.raises(ValueError, match="units must split the 4 sequence indices"):
            plan_micro_batches(lengths, num_ranks=1, max_tokens=60, units=units)


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=3), min_size=1, max_size=24),
    num_ranks=st.integers(min_value=1, max_value=4),
    max_tokens=st.integers(min_value=1, max_value=512),
    max_sequences=st.one_of(st.none(), st.integers(min_value=1, max_value=8)),
    padded=st.booleans(),
)
def test_plan_invariants_with_units(
    sizes: list[list[int]], num_ranks: int, max_tokens: int, max_sequences: int | None, padded: bool
) -> None:
    lengths = [n for unit in sizes for n in unit]
    starts = [sum(len(u) for u in sizes[:k]) for k in range(len(sizes))]
    units = [list(range(s, s + len(u))) for s, u in zip(starts, sizes)]
    kw = {"num_ranks": num_ranks, "max_tokens": max_tokens, "max_sequences": max_sequences, "padded": padded}
    plan = plan_micro_batches(lengths, units=units, **kw)
    assert len({len(rank) for rank in plan}) == 1
    micros = [micro for rank in plan for micro in rank]
    assert sorted(i for micro in micros for i in micro) == list(range(len(lengths)))
    for unit in units:  # each unit whole in one micro-batch
        assert sum(set(unit) <= set(micro) for micro in micros) == 1
    for micro in micros:
        whole = [u for u in units if set(u) <= set(micro)]
        cost = len(micro) * max(lengths[i] for i in micro) if padded and micro else _tokens(lengths, micro)
        assert len(whole) <= 1 or cost <= max_tokens  # within budget, or a unit alone
        assert len(whole) <= 1 or max_sequences is None or len(micro) <= max_sequences
    assert plan == plan_micro_batches(lengths, units=units, **kw)
