"""RewardPool worker faults on a private local Ray: a SIGKILLed actor and a SIGSTOPped one are replaced and
their unfinished batches resent, so ``collect`` still returns every group exactly once, in order, with the
right rewards; a fault past the restart budget raises ActorFault naming the worker. Figures go to a reliability record.

The reward function sleeps 0.5 s per sample (``reward_slow_fns``), so a worker is certainly still holding
its batches when the test injects the fault half a second after submitting them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from grpo_dist.config import RewardConfig, RewardFunctionConfig
from grpo_dist.faults import ActorFault
from grpo_dist.reward import RewardPool
from grpo_dist.types import Completion, Prompt, RolloutGroup, ScoredGroup
from tests.records import write_record

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")

FIXTURES_DIR = str(Path(__file__).resolve().parent)  # reward_slow_fns.py, imported by the workers' children
MAX_LEN = 16

FIGURES: Counter[str] = Counter()
"""Totals over the module's tests that passed so far; each passing test rewrites the record with them."""
RECOVERY_S: list[float] = []


def make_pool(num_workers: int, **fault_args: Any) -> RewardPool:
    """A pool scoring ``len(text)`` slowly; policy ``fail``, so a reward failure could not hide as a mask."""
    config = RewardConfig(
        functions=[RewardFunctionConfig(name="slow_len", path="reward_slow_fns:slow_length", timeout_s=10.0)],
        num_workers=num_workers,
        failure_policy="fail",
        **fault_args,
    )
    return RewardPool(config, max_response_length=MAX_LEN, extra_sys_path=[FIXTURES_DIR])


def make_group(prompt_id: int, texts: list[str]) -> RolloutGroup:
    prompt = Prompt(prompt_id=prompt_id, token_ids=[1, 2], text="q", ground_truth=None, data_source="t")
    completions = [
        Completion(token_ids=[0] * len(t), logprobs=[0.0] * len(t), finish_reason="stop", text=t) for t in texts
    ]
    return RolloutGroup(prompt=prompt, completions=completions, weights_version=0, engine_index=0)


def process_gone(pid: int, within_s: float) -> bool:
    """Whether ``pid`` has exited within ``within_s`` (a zombie counts: it is dead, only not yet reaped)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.1)
    return False


def check_exactly_once(batches: list[list[RolloutGroup]], scored: list[ScoredGroup]) -> None:
    """Every submitted group back once, in submission order, with its true reward; adds to the figures."""
    submitted = [g.prompt.prompt_id for batch in batches for g in batch]
    returned = [s.group.prompt.prompt_id for s in scored]
    FIGURES["groups_submitted"] += len(submitted)
    FIGURES["groups_returned"] += len(returned)
    FIGURES["groups_lost"] += len(set(submitted) - set(returned))
    FIGURES["groups_duplicated"] += len(returned) - len(set(returned))
    assert returned == submitted
    assert [s.group for s in scored] == [g for batch in batches for g in batch]
    for s in scored:
        assert s.rewards == [float(len(c.text)) for c in s.group.completions]
        assert s.valid == [True] * len(s.group.completions)


def record(pool: RewardPool, recovery_s: float | None = None) -> None:
    """Add a passing test's fault counts to the totals and rewrite the reliability record."""
    for key, value in pool.fault_stats().items():
        FIGURES[key] += value
    if recovery_s is not None:
        RECOVERY_S.append(recovery_s)
    write_record(
        "reward_worker_faults",
        {**FIGURES, "max_recovery_s": round(max(RECOVERY_S), 2) if RECOVERY_S else None},
    )


@pytest.mark.usefixtures("local_ray")
def test_sigkilled_worker_is_replaced_and_its_batches_resent() -> None:
    pool = make_pool(2, worker_timeout_s=60.0)
    try:
        pids = list(pool.worker_pids)
        children = [st["child_pid"] for st in pool.worker_stats()]  # before the work: stats queue behind it
        # 4 batches of 2 groups x 2 samples: 2 s each; worker 0 gets batches 0 and 2, worker 1 gets 1 and 3
        batches = [[make_group(10 * b + i, ["a" * (b + 1), "bb"]) for i in range(2)] for b in range(4)]
        for batch in batches:
            pool.submit(batch)
        assert pool.submitted_per_worker == [2, 2]
        time.sleep(0.5)
        start = time.monotonic()
        os.kill(pids[0], signal.SIGKILL)
        FIGURES["faults_injected"] += 1
        FIGURES["sigkill_faults"] += 1
        scored = pool.collect(timeout_s=45.0)
        recovery_s = time.monotonic() - start
        check_exactly_once(batches, scored)
        assert pool.num_pending == 0
        assert pool.fault_stats() == {
            "workers_restarted": 1,
            "dead_workers": 1,
            "hung_workers_killed": 0,
            "batches_reassigned": 2,  # the one it was scoring and the one queued behind it
            "groups_reassigned": 4,
        }
        # slot 0 has a new actor; the killed actor's scorer child went down with it
        assert pool.worker_pids[1] == pids[1]
        assert pool.worker_pids[0] is not None and pool.worker_pids[0] != pids[0]
        assert children[0] is not None and process_gone(children[0], within_s=15.0)
        # the live workers scored each group once between them: no batch ran twice
        assert sum(st["groups_scored"] for st in pool.worker_stats()) == 8
        # and the pool carries on as before
        more = [[make_group(100 + i, ["xyz"])] for i in range(2)]
        for batch in more:
            pool.submit(batch)
        check_exactly_once(more, pool.collect(timeout_s=30.0))
        record(pool, recovery_s)
    finally:
        pool.shutdown()


@pytest.mark.usefixtures("local_ray")
def test_stopped_worker_is_killed_after_worker_timeout_and_its_batches_resent() -> None:
    pool = make_pool(2, worker_timeout_s=3.0)
    stopped = pool.worker_pids[0]
    assert stopped is not None
    try:
        (child, _) = [st["child_pid"] for st in pool.worker_stats()]
        # 4 batches of 1 group x 2 samples: 1 s each; worker 0 gets batches 0 and 2
        batches = [[make_group(20 + b, ["x" * (b + 1), "yy"])] for b in range(4)]
        for batch in batches:
            pool.submit(batch)
        time.sleep(0.3)
        os.kill(stopped, signal.SIGSTOP)
        start = time.monotonic()
        FIGURES["faults_injected"] += 1
        FIGURES["sigstop_faults"] += 1
        # before worker_timeout_s the stopped worker is merely late: collect's own deadline applies
        with pytest.raises(TimeoutError, match=rf"not scored within 1 s; still busy: worker 0 \(pid {stopped}\)"):
            pool.collect(timeout_s=1.0)
        assert pool.fault_stats()["hung_workers_killed"] == 0
        scored = pool.collect(timeout_s=45.0)
        recovery_s = time.monotonic() - start
        check_exactly_once(batches, scored)
        assert pool.fault_stats() == {
            "workers_restarted": 1,
            "dead_workers": 0,
            "hung_workers_killed": 1,
            "batches_reassigned": 2,
            "groups_reassigned": 2,
        }
        assert pool.worker_pids[0] not in (None, stopped)
        # the stopped actor was killed, not left behind; its child went with it
        assert process_gone(stopped, within_s=30.0)
        assert child is not None and process_gone(child, within_s=15.0)
        record(pool, recovery_s)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stopped, signal.SIGCONT)  # still there only if the test failed: let shutdown end it
        pool.shutdown()


@pytest.mark.usefixtures("local_ray")
def test_fault_past_the_restart_budget_raises_naming_the_slot() -> None:
    pool = make_pool(1, worker_timeout_s=60.0, max_worker_restarts=1)
    try:
        first = pool.worker_pids[0]
        assert first is not None
        batches = [[make_group(30, ["aa", "b"])]]
        pool.submit(batches[0])
        time.sleep(0.3)
        os.kill(first, signal.SIGKILL)
        FIGURES["faults_injected"] += 1
        FIGURES["sigkill_faults"] += 1
        check_exactly_once(batches, pool.collect(timeout_s=45.0))  # the one restart the budget allows
        second = pool.worker_pids[0]
        assert second is not None and second != first

        pool.submit([make_group(31, ["ccc"])])
        time.sleep(0.2)
        os.kill(second, signal.SIGKILL)
        FIGURES["faults_injected"] += 1
        FIGURES["sigkill_faults"] += 1
        with pytest.raises(
            ActorFault, match=rf"reward worker 0 \(pid {second}\) died.*reward\.max_worker_restarts = 1"
        ):
            pool.collect(timeout_s=45.0)
        assert pool.fault_stats()["workers_restarted"] == 1
        assert pool.fault_stats()["dead_workers"] == 2
        # the pool refuses further work rather than failing it later
        with pytest.raises(ActorFault, match="reward worker 0") as refused:
            pool.submit([make_group(32, ["d"])])
        assert [(a.role, a.name) for a in refused.value.actors] == [("reward", "reward worker 0")]
        FIGURES["budget_exhaustions_raised"] += 1
        record(pool)
    finally:
        pool.shutdown()
