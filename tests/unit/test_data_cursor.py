"""PromptCursor: deterministic epochs, exactly-once per epoch, draws across epochs, exact resume."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_dist.data import PromptCursor


def test_same_seed_same_stream_different_seed_different_stream() -> None:
    a = PromptCursor(50, batch_size=7, seed=3)
    b = PromptCursor(50, batch_size=7, seed=3)
    assert [a.next_batch() for _ in range(20)] == [b.next_batch() for _ in range(20)]
    c = PromptCursor(50, batch_size=7, seed=4)
    d = PromptCursor(50, batch_size=7, seed=-3)
    first = PromptCursor(50, batch_size=7, seed=3).take(50)
    assert c.take(50) != first and d.take(50) != first


def test_epoch_orders_depend_on_epoch_and_are_permutations() -> None:
    c = PromptCursor(100, batch_size=10, seed=0)
    orders = [c.order(e) for e in range(3)]
    assert all(sorted(o) == list(range(100)) for o in orders)
    assert orders[0] != orders[1] != orders[2]
    assert orders[0] != list(range(100))
    assert PromptCursor(100, batch_size=10, seed=0).order(1) == orders[1]  # a pure function of (seed, epoch)


def test_no_shuffle_is_identity_every_epoch() -> None:
    c = PromptCursor(5, batch_size=3, seed=9, shuffle=False)
    assert [c.next_batch() for _ in range(4)] == [[0, 1, 2], [3, 4, 0], [1, 2, 3], [4, 0, 1]]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    seed=st.integers(-(2**40), 2**40),
    draws=st.lists(st.integers(0, 90), min_size=1, max_size=12),
)
def test_every_prompt_exactly_once_per_epoch(n: int, seed: int, draws: list[int]) -> None:
    c = PromptCursor(n, batch_size=1, seed=seed)
    out: list[int] = []
    for k in draws:
        got = c.take(k)
        assert len(got) == k and all(type(i) is int for i in got)
        out += got
    assert c.consumed == len(out) == c.epoch * n + c.position
    assert 0 <= c.position < n
    expected = [i for e in range(c.epoch + 1) for i in c.order(e)]
    assert out == expected[: len(out)]
    for e in range(c.epoch):
        assert sorted(out[e * n : (e + 1) * n]) == list(range(n))


def test_batch_crossing_an_epoch_takes_the_rest_then_the_next_order() -> None:
    c = PromptCursor(10, batch_size=4, seed=1)
    e0, e1 = c.order(0), c.order(1)
    assert c.next_batch() == e0[0:4]
    assert c.next_batch() == e0[4:8]
    assert (c.epoch, c.position) == (0, 8)
    assert c.next_batch() == e0[8:10] + e1[0:2]
    assert (c.epoch, c.position) == (1, 2)


def test_batch_larger_than_the_dataset_spans_epochs() -> None:
    c = PromptCursor(3, batch_size=8, seed=2)
    batch = c.next_batch()
    assert batch == c.order(0) + c.order(1) + c.order(2)[:2]
    assert Counter(batch) == Counter({i: 2 for i in range(3)}) + Counter(c.order(2)[:2])
    assert (c.epoch, c.position) == (2, 2)


def test_ending_exactly_on_an_epoch_boundary_normalises_to_the_next_epoch() -> None:
    c = PromptCursor(6, batch_size=3, seed=5)
    c.next_batch()
    c.next_batch()
    assert (c.epoch, c.position, c.consumed) == (1, 0, 6)
    state = c.state_dict()
    resumed = PromptCursor(6, batch_size=3, seed=5)
    resumed.load_state_dict(state)
    assert resumed.next_batch() == c.next_batch() == c.order(1)[:3]


def test_take_zero_and_bad_arguments() -> None:
    c = PromptCursor(4, batch_size=2, seed=0)
    assert c.take(0) == [] and c.consumed == 0
    with pytest.raises(ValueError, match="negative"):
        c.take(-1)
    with pytest.raises(TypeError):
        c.take(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one prompt"):
        PromptCursor(0, batch_size=1, seed=0)
    with pytest.raises(ValueError, match="batch_size = 0"):
        PromptCursor(3, batch_size=0, seed=0)
    with pytest.raises(TypeError, match="seed must be an int"):
        PromptCursor(3, batch_size=1, seed=1.0)  # type: ignore[arg-type]


def test_take_mixes_with_next_batch_for_dynamic_sampling() -> None:
    c = PromptCursor(20, batch_size=8, seed=11)
    ref = PromptCursor(20, batch_size=8, seed=11).take(8 + 3 + 5 + 8)
    got = c.next_batch() + c.take(3) + c.take(5) + c.next_batch()
    assert got == ref


# --------------------------------------------------------------------------------------------------------
# state_dict / load_state_dict
# --------------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 30),
    seed=st.integers(0, 1000),
    batch_size=st.integers(1, 45),
    before=st.lists(st.integers(0, 40), max_size=8),
    to_boundary=st.booleans(),
    after=st.lists(st.integers(0, 40), min_size=1, max_size=8),
    new_batch_size=st.integers(1, 45),
)
def test_state_round_trip_resumes_exactly(
    n: int,
    seed: int,
    batch_size: int,
    before: list[int],
    to_boundary: bool,
    after: list[int],
    new_batch_size: int,
) -> None:
    c = PromptCursor(n, batch_size=batch_size, seed=seed)
    for k in before:
        c.take(k)
    c.next_batch()
    if to_boundary and c.position:
        c.take(n - c.position)  # checkpoint exactly on an epoch boundary
        assert c.position == 0
    state = json.loads(json.dumps(c.state_dict()))  # checkpoints store it as JSON

    resumed = PromptCursor(n, batch_size=new_batch_size, seed=seed)
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.position, resumed.consumed) == (c.epoch, c.position, c.consumed)
    total = sum(after)
    assert [resumed.take(k) for k in after] == [c.take(k) for k in after]
    assert resumed.state_dict() == c.state_dict()
    # batch size may change on resume; the stream does not
    fresh = PromptCursor(n, batch_size=batch_size, seed=seed)
    full = fresh.take(state["epoch"] * n + state["position"] + total + new_batch_size)
    assert resumed.next_batch() == full[-new_batch_size:]


def test_load_state_dict_refuses_a_different_run() -> None:
    c = PromptCursor(10, batch_size=4, seed=1)
    c.take(13)
    state = c.state_dict()
    for kwargs, key in (
        ({"num_prompts": 11, "seed": 1, "shuffle": True}, "num_prompts"),
        ({"num_prompts": 10, "seed": 2, "shuffle": True}, "seed"),
        ({"num_prompts": 10, "seed": 1, "shuffle": False}, "shuffle"),
    ):
        other = PromptCursor(kwargs.pop("num_prompts"), batch_size=4, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=f"state has {key} = .* but this run has"):
            other.load_state_dict(state)

    fresh = PromptCursor(10, batch_size=4, seed=1)
    with pytest.raises(ValueError, match="order differs"):
        fresh.load_state_dict({**state, "order_digest": "0" * 16})
    with pytest.raises(ValueError, match="position = 11"):
        fresh.load_state_dict({**state, "position": 11})
    with pytest.raises(ValueError, match="epoch = -1"):
        fresh.load_state_dict({**state, "epoch": -1, "order_digest": None})
    with pytest.raises(ValueError, match="missing \\['position'\\]"):
        fresh.load_state_dict({k: v for k, v in state.items() if k != "position"})
    with pytest.raises(ValueError, match="version 2"):
        fresh.load_state_dict({**state, "version": 2})
    assert (fresh.epoch, fresh.position) == (0, 0)  # a refused state changes nothing


def test_unnormalised_end_of_epoch_state_is_accepted() -> None:
    c = PromptCursor(5, batch_size=2, seed=0)
    state = {**c.state_dict(), "position": 5}  # epoch 0, all drawn
    c.load_state_dict(state)
    assert (c.epoch, c.position) == (1, 0)
    assert c.take(5) == c.order(1)


def test_consumes_each_prompt_once_across_a_resume_mid_epoch() -> None:
    n = 23
    c = PromptCursor(n, batch_size=5, seed=42)
    first = c.next_batch() + c.next_batch() + c.take(2)
    resumed = PromptCursor(n, batch_size=5, seed=42)
    resumed.load_state_dict(c.state_dict())
    rest = resumed.take(n - len(first))
    assert sorted(first + rest) == list(range(n))
