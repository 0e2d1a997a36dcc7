"""``ActorSlots``: restart budgets per slot and per role, the last actor kept, every fault naming role and
actor; and ``RunState``, what a checkpoint records of a run. No Ray: actors are plain objects here and the
kill is recorded instead of sent."""

from __future__ import annotations

from itertools import count
from pathlib import Path

import pytest

from grpo_dist import supervisor
from grpo_dist.data import PromptCursor
from grpo_dist.faults import ActorFault, ActorId
from grpo_dist.run_state import CONTROLLER_STATE, RunState
from grpo_dist.supervisor import ActorSlots


@pytest.fixture
def killed(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    out: list[object] = []
    monkeypatch.setattr(supervisor, "kill_actor", out.append)
    return out


def slots(budget: str, max_restarts: int, count_: int = 2) -> ActorSlots:
    serial = count()
    return ActorSlots(
        "reward" if budget == "role" else "rollout",
        label="worker",
        count=count_,
        start=lambda slot: (slot, next(serial)),  # an "actor": its slot and a serial number
        max_restarts=max_restarts,
        budget=budget,  # type: ignore[arg-type]
        budget_field="x.max_restarts",
    )


def test_a_replacement_takes_its_predecessors_slot_and_name(killed: list[object]) -> None:
    s = slots("slot", 1)
    old = s.actors[1]
    new = s.replace(1, why="died", context="step 3: ")
    assert killed == [old]
    assert new == (1, 2) and s.actors == [(0, 0), (1, 2)]
    assert s.ids == [ActorId("rollout", "worker 0"), ActorId("rollout", "worker 1")]
    assert s.position_of(old) is None and s.position_of(new) == 1


def test_per_slot_budget(killed: list[object]) -> None:
    s = slots("slot", 1)
    s.replace(0, why="died")
    s.replace(1, why="died")  # another slot has a budget of its own
    with pytest.raises(ActorFault, match=r"step 3: worker 0 died; not replaced: its restart budget is spent") as info:
        s.replace(0, why="died", context="step 3: ")
    assert "x.max_restarts = 1, 1 used" in str(info.value)
    assert info.value.actors == [ActorId("rollout", "worker 0")]
    assert len(killed) == 3  # the faulty actor is killed even when it is not replaced


def test_per_role_budget(killed: list[object]) -> None:
    s = slots("role", 2)
    s.replace(0, why="hung")
    s.replace(1, why="hung")
    with pytest.raises(ActorFault, match=r"the reward role's restart budget is spent \(x.max_restarts = 2, 2 used\)"):
        s.replace(1, why="hung")
    assert s.restarts_used == 2


def test_remove_keeps_the_last_actor(killed: list[object]) -> None:
    s = slots("slot", 0, count_=2)
    s.remove(0, why="died")
    assert s.names == ["worker 1"]  # the survivor keeps its name
    with pytest.raises(ActorFault, match="worker 1 died and it was the last worker") as info:
        s.remove(0, why="died")
    assert info.value.roles == {"rollout"}


def test_run_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    import json

    state = RunState(PromptCursor(10, batch_size=3, seed=0))
    ticket = state.draw(5, max_staleness=0)
    state.cursor.next_batch()
    state.trained(ticket)
    state.weights_version, state.consecutive_nonfinite = 5, 1
    (tmp_path / CONTROLLER_STATE).write_text(json.dumps(state.to_json({"trainer": {}})))
    loaded = RunState(PromptCursor(10, batch_size=3, seed=0))
    loaded.load(tmp_path)
    assert (loaded.trained_step, loaded.weights_version, loaded.consecutive_nonfinite) == (5, 5, 1)
    assert loaded.next_step == 6
    assert loaded.cursor.next_batch() == state.cursor.next_batch()  # both continue after the drawn batch


def test_batches_in_flight_are_put_back() -> None:
    """Two tickets in flight (one_step_off): a checkpoint records, and a fault rewinds to, the cursor
    before the oldest one, so that no prompt is skipped or trained on twice."""
    state = RunState(PromptCursor(12, batch_size=3, seed=1))
    first = state.draw(1, max_staleness=1)
    batch1 = state.cursor.next_batch()
    second = state.draw(2, max_staleness=1)
    batch2 = state.cursor.next_batch()
    assert (first.min_version, second.min_version) == (0, 0)  # step 2 may use the weights before step 1
    assert state.draw(7, max_staleness=1).min_version == 5
    state.in_flight.pop()
    assert state.to_json({})["cursor"] == first.cursor_at_draw
    state.trained(first)
    assert state.to_json({})["cursor"] == second.cursor_at_draw  # batch 2 is still out: it goes back
    with pytest.raises(AssertionError):
        state.trained(first)  # trained in the order drawn, once
    state.rewind()
    assert state.in_flight == [] and state.cursor.next_batch() == batch2
    assert batch1 != batch2
