"""RewardPool on a private local Ray: results equal the functions applied by hand, work is spread over the
workers, deadlines and errors cross the actor boundary, and shutdown leaves no process behind."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import pytest

from grpo_dist.config import RewardConfig, RewardFunctionConfig
from grpo_dist.reward import RewardFunctionError, RewardPool, exact_match
from grpo_dist.types import Completion, Prompt, RolloutGroup

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")

UNIT_DIR = str(Path(__file__).resolve().parent.parent / "unit")  # reward_fixtures.py lives there
MAX_LEN = 16


def make_group(prompt_id: int, texts: list[str], ground_truth: str = "4") -> RolloutGroup:
    prompt = Prompt(prompt_id=prompt_id, token_ids=[1, 2], text="2+2=", ground_truth=ground_truth, data_source="t")
    completions = [
        Completion(token_ids=[0] * len(t), logprobs=[0.0] * len(t), finish_reason="stop", text=t) for t in texts
    ]
    return RolloutGroup(prompt=prompt, completions=completions, weights_version=0, engine_index=0)


def fn(name: str, path: str | None = None, **extra: Any) -> RewardFunctionConfig:
    return RewardFunctionConfig(name=name, path=path, **extra)


def process_gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.usefixtures("local_ray")
def test_pool_scores_like_the_functions_by_hand_and_spreads_the_work() -> None:
    config = RewardConfig(
        functions=[
            fn("exact_match"),
            fn("len", "reward_fixtures:length", weight=0.5, kwargs={"scale": 2.0}),
            fn("behave", "reward_fixtures:behave", weight=0.0),
        ],
        num_workers=2,
        failure_policy="mask_sample",
    )
    pool = RewardPool(config, max_response_length=MAX_LEN, extra_sys_path=[UNIT_DIR])
    try:
        assert pool.num_workers == 2
        children_before = [st["child_pid"] for st in pool.worker_stats()]
        batches = [
            [make_group(10 * b + i, ["4", "\\boxed{4}", "5", "raise" if (b, i) == (2, 1) else "x"]) for i in range(2)]
            for b in range(6)
        ]
        for batch in batches:
            pool.submit(batch)  # returns at once
        assert pool.num_pending == 6
        scored = pool.collect(timeout_s=60.0)
        assert pool.num_pending == 0
        groups = [g for batch in batches for g in batch]
        assert [s.group for s in scored] == groups  # submission order
        for s in scored:
            texts = [c.text for c in s.group.completions]
            em = [exact_match("t", t, "4", {}) for t in texts]
            ln = [2.0 * len(t) for t in texts]
            bad = [t == "raise" for t in texts]
            assert s.components["exact_match"] == em
            assert s.components["len"] == ln
            assert s.valid == [not b for b in bad]
            expected = [math.nan if b else e + 0.5 * n for e, n, b in zip(em, ln, bad)]
            assert all((math.isnan(x) and math.isnan(y)) or x == pytest.approx(y) for x, y in zip(s.rewards, expected))
        (failure,) = pool.drain_failures()
        assert (failure.function, failure.prompt_id, failure.sample_index, failure.kind) == (
            "behave",
            21,
            3,
            "exception",
        )
        assert pool.drain_failures() == []

        assert min(pool.submitted_per_worker) >= 1
        stats = pool.worker_stats()
        assert [st["groups_scored"] > 0 for st in stats] == [True, True]  # both workers did real work
        assert sum(st["groups_scored"] for st in stats) == len(groups)
        assert len({st["pid"] for st in stats}) == 2
        # each actor kept its one child throughout (an exception does not cost a restart)
        assert [st["child_pid"] for st in stats] == children_before
        assert pool.collect(timeout_s=1.0) == []
        assert set(pool.fault_stats().values()) == {0}  # a reward function's exception is no worker fault
    finally:
        pool.shutdown()


@pytest.mark.usefixtures("local_ray")
def test_collect_deadline_errors_and_shutdown_of_a_busy_worker() -> None:
    config = RewardConfig(
        functions=[fn("sleepy", "reward_fixtures:sleepy", timeout_s=300.0)], num_workers=1, failure_policy="fail"
    )
    pool = RewardPool(config, max_response_length=MAX_LEN, extra_sys_path=[UNIT_DIR])
    try:
        pids = list(pool.worker_pids)
        # collect's deadline names the busy worker; the submission stays pending for a later collect
        pool.submit([make_group(1, ["1.5"])])
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=r"1 of 1 submitted batches not scored within 0\.3 s.*worker 0"):
            pool.collect(timeout_s=0.3)
        assert time.monotonic() - start < 5.0
        (s,) = pool.collect(timeout_s=30.0)
        assert s.rewards == [1.0]

        # failure_policy=fail: the worker's RewardFunctionError reaches the driver as itself
        pool.submit([make_group(2, ["0", "not a number"])])
        with pytest.raises(RewardFunctionError, match=r"'sleepy' failed on prompt_id=2, sample 1") as info:
            pool.collect(timeout_s=30.0)
        assert info.value.failure.kind == "exception"
        # neither the late answer nor the RewardFunctionError is a worker fault: same actor, no restart
        assert pool.worker_pids == pids
        assert set(pool.fault_stats().values()) == {0}

        # the worker goes on after the error (its interrupted child is replaced on the next call)
        pool.submit([make_group(3, ["0"])])
        assert [s.rewards for s in pool.collect(timeout_s=30.0)] == [[1.0]]

        # shutdown while the worker's child is stuck in a call: actor and child both go
        (stats,) = pool.worker_stats()
        pool.submit([make_group(4, ["200"])])
        time.sleep(0.5)
        pool.shutdown(grace_s=0.5)
        assert process_gone(stats["pid"], within_s=15.0)
        assert stats["child_pid"] is not None and process_gone(stats["child_pid"], within_s=15.0)
        with pytest.raises(RuntimeError, match="after shutdown"):
            pool.submit([make_group(5, ["0"])])
    finally:
        pool.shutdown()


@pytest.mark.usefixtures("local_ray")
def test_bad_function_path_fails_pool_creation_with_the_field_name() -> None:
    config = RewardConfig(functions=[fn("x", "reward_fixtures:no_such_fn")], num_workers=2)
    with pytest.raises(ValueError, match=r"reward\.functions\[0\]\.path = 'reward_fixtures:no_such_fn'"):
        RewardPool(config, max_response_length=MAX_LEN, extra_sys_path=[UNIT_DIR])
