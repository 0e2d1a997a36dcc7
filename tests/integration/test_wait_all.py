"""``wait_all`` with real Ray actors: an actor's death is reported first, with its cause, even when the
error it provokes in a peer (a collective's broken connection) arrives earlier, and without waiting out
the deadline for a peer now blocked on the dead one."""

from __future__ import annotations

import time

import pytest

from grpo_dist.cluster import wait_all
from grpo_dist.faults import ActorDiedError, ActorId

pytestmark = pytest.mark.slow


def test_a_death_outranks_the_errors_it_causes_and_the_peers_it_blocks(local_ray: None) -> None:
    import os

    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class Peer:
        def run(self, role: str) -> str:
            if role == "broken pipe":
                time.sleep(0.2)
                raise ConnectionError("Connection closed by peer")
            if role == "dies":
                time.sleep(1.5)
                os._exit(1)
            time.sleep(600)  # blocked in a collective that will never complete
            return "never"

    roles = ["broken pipe", "dies", "blocked"]
    actors = [Peer.remote() for _ in roles]
    names = [ActorId("learner", f"rank {i}") for i in range(len(roles))]
    try:
        t0 = time.monotonic()
        with pytest.raises(ActorDiedError, match=r"train step 1: rank 1 died: ") as info:
            wait_all([a.run.remote(r) for a, r in zip(actors, roles)], timeout_s=120, what="train step 1", actors=names)
        assert time.monotonic() - t0 < 60  # not the 120 s deadline: the death ended the wait
        assert info.value.dead == ["rank 1"]
        assert info.value.roles == {"learner"}
        assert info.value.killed_for_memory == []
        assert "Connection closed" not in str(info.value)
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)


def test_a_plain_error_still_surfaces_and_results_come_in_order(local_ray: None) -> None:
    import ray

    @ray.remote(num_cpus=0)
    class Echo:
        def run(self, x: int, sleep_s: float = 0.0) -> int:
            if x < 0:
                raise ValueError(f"bad input {x}")
            time.sleep(sleep_s)
            return x

    actors = [Echo.remote() for _ in range(3)]
    names = [ActorId("rollout", n) for n in ("a", "b", "c")]
    refs = [a.run.remote(i, 0.1 * (3 - i)) for i, a in enumerate(actors)]  # the last finishes first
    assert wait_all(refs, timeout_s=60, what="echo", actors=names) == [0, 1, 2]
    with pytest.raises(ValueError, match="bad input -1"):
        wait_all([actors[0].run.remote(-1), actors[1].run.remote(1)], timeout_s=60, what="echo", actors=names[:2])
    with pytest.raises(TimeoutError, match=r"echo: no answer within 0.5 s from b"):
        wait_all([actors[0].run.remote(2), actors[1].run.remote(0, 5.0)], timeout_s=0.5, what="echo", actors=names[:2])
