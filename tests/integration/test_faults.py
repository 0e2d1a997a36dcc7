"""Faults survived, on real actors: an engine SIGKILLed mid-step is replaced and the step's result equals
the fault-free one; an engine that keeps dying stops the run with a resumable checkpoint and no leaked
resources; a learner rank SIGKILLed stops the run cleanly and ``trainer.resume=auto`` continues. The
reward-worker and learner-rank faults run in ``async`` mode, with batches in flight when the fault lands
(the abort path is the same in every mode; the engine faults of the overlapping modes are in
``test_async_modes``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import TINY_CONFIG, tiny_overrides
from tests.records import write_record

pytestmark = pytest.mark.slow

BATCH, G = 4, 4
SAMPLES_PER_STEP = BATCH * G


# run() evaluates before step 1: 4 held-out prompts x (2 samples + 1 greedy) reward calls
EVAL_CALLS = 4 * (2 + 1)


def _cfg(
    tiny_assets: dict[str, str], run_dir: Path, trigger: Path, *extra: str, after_calls: int = SAMPLES_PER_STEP
) -> Any:
    from grpo_dist.config import load_config

    return load_config(
        TINY_CONFIG,
        [
            *tiny_overrides(tiny_assets, run_dir),
            f"data.train_batch_size={BATCH}",
            f"rollout.num_generations={G}",
            "data.max_response_length=64",
            "rollout.ignore_eos=true",  # long generations: the kill lands mid-rollout
            "learner.lr=1e-3",
            "reward.functions=[{name: exact_match},"
            " {name: digits, path: 'tests.integration.reward_fns:digit_fraction'},"
            f" {{name: fault, path: 'tests.integration.fault_fns:kill_after', weight: 0.0,"
            f" kwargs: {{trigger_file: '{trigger}', after_calls: {after_calls}}}}}]",
            *extra,
        ],
    )


def _rows(run_dir: Path, step: int) -> dict[tuple[int, int], tuple[str, float]]:
    import pyarrow.parquet as pq

    table = pq.read_table(run_dir / "rollouts" / f"step_{step:06d}.parquet").to_pylist()
    return {(r["prompt_id"], r["sample_index"]): (r["completion"], r["reward"]) for r in table}


def _pid(actor: Any) -> int:
    import ray

    return int(ray.get(actor.info.remote(), timeout=60)["pid"])


def _stable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith(("timing/", "throughput/", "sync/gb_per_s", "faults/"))}


def test_engine_killed_mid_step_is_replaced(local_ray: None, tiny_assets: dict[str, str], tmp_path: Path) -> None:
    """The engine is restarted in its slot (``restart``) or dropped (``shrink``); either way the step's
    groups are those of a fault-free run, token for token, because seeds do not depend on the engine."""
    from grpo_dist.controller import Controller

    policies = {
        "reference": [],
        "restart": ["rollout.on_engine_failure=restart"],
        "shrink": ["rollout.on_engine_failure=shrink"],
    }
    records, stats = {}, {}
    for name, extra in policies.items():
        trigger = tmp_path / f"{name}.trigger"
        controller = Controller(_cfg(tiny_assets, tmp_path / name, trigger, "trainer.total_steps=2", *extra))
        try:
            controller.start()
            if name != "reference":
                trigger.write_text(str(_pid(controller.engines.actors[1])))
            records[name] = [controller.train_step(1), controller.train_step(2)]
            stats[name] = dict(controller.engines.fault_stats, num_engines=controller.engines.num_engines)
        finally:
            controller.shutdown()
    assert stats["restart"]["engines_restarted"] == 1
    assert stats["restart"]["num_engines"] == 2
    assert stats["shrink"]["engines_removed"] == 1
    assert stats["shrink"]["num_engines"] == 1
    for name in ("restart", "shrink"):
        assert (tmp_path / f"{name}.fired").exists()  # the kill happened, during step 2's scoring
        assert stats[name]["chunks_resubmitted"] >= 1  # it died with work in hand: the kill landed mid-rollout
        for step in (1, 2):
            assert _rows(tmp_path / name, step) == _rows(tmp_path / "reference", step)  # every group, same tokens
            assert _stable(records[name][step - 1]) == _stable(records["reference"][step - 1])
    write_record(
        "engine_killed_mid_step",
        {
            "faults_injected": 2,
            "policies": "restart, shrink",
            "engines_restarted": stats["restart"]["engines_restarted"],
            "engines_removed": stats["shrink"]["engines_removed"],
            "chunks_resubmitted": stats["restart"]["chunks_resubmitted"] + stats["shrink"]["chunks_resubmitted"],
            "steps_completed": 2,
            "samples_lost": 0,
            "samples_duplicated": 0,
            "result_equals_fault_free": True,
        },
    )


def _wait_all_cpus_free(timeout_s: float = 30.0) -> tuple[float, float]:
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        free, total = ray.available_resources().get("CPU", 0.0), ray.cluster_resources().get("CPU", 0.0)
        if free == total or time.monotonic() > deadline:
            return free, total
        time.sleep(0.2)


def test_engine_past_its_restart_budget_stops_the_run(
    local_ray: None, tiny_assets: dict[str, str], tmp_path: Path
) -> None:
    from grpo_dist.checkpoint import CheckpointManager
    from grpo_dist.controller import Controller
    from grpo_dist.faults import TrainingAborted

    trigger = tmp_path / "run.trigger"
    controller = Controller(
        _cfg(
            tiny_assets,
            tmp_path / "run",
            trigger,
            "trainer.total_steps=3",
            "rollout.max_engine_restarts=0",
            after_calls=EVAL_CALLS + SAMPLES_PER_STEP,
        )
    )
    try:
        controller.start()
        trigger.write_text(str(_pid(controller.engines.actors[1])))
        with pytest.raises(
            TrainingAborted,
            match=r"step 2: engine 1 died during the rollout; not replaced: its restart budget is spent"
            r" \(rollout\.max_engine_restarts = 0, 0 used\)",
        ) as info:
            controller.run()
    finally:
        controller.shutdown()
    assert "step_000001: continue with trainer.resume=auto" in str(info.value)
    mgr = CheckpointManager(tmp_path / "run" / "checkpoints")
    assert mgr.resolve("auto") == tmp_path / "run" / "checkpoints" / "step_000001"
    free, total = _wait_all_cpus_free()
    assert free == total, f"{total - free} CPUs still held after the run stopped"
    write_record(
        "engine_past_restart_budget",
        {
            "faults_injected": 1,
            "run_stopped_with_error": True,
            "resumable_checkpoint": "step_000001",
            "cpus_leaked": total - free,
        },
    )


def test_reward_worker_past_the_restart_budget_stops_the_run_resumably(
    local_ray: None, tiny_assets: dict[str, str], tmp_path: Path
) -> None:
    """A reward worker that dies with its role's restart budget spent ends the run like every other fault: a
    checkpoint of the last trained step, and a message naming the worker, the budget and how to resume.

    In ``async`` mode with a bound of 2, the death lands while step 2's batch is scored during step 1's
    update, with step 3's batch still to come: the update lands, the checkpoint holds it, and the batches in
    flight are put back (the checkpoint's cursor is right after step 1's prompts)."""
    import json

    from grpo_dist.checkpoint import CheckpointManager
    from grpo_dist.controller import Controller
    from grpo_dist.faults import ActorFault, TrainingAborted

    trigger = tmp_path / "run.trigger"
    controller = Controller(
        _cfg(
            tiny_assets,
            tmp_path / "run",
            trigger,
            "trainer.total_steps=4",
            "trainer.async_mode=async",
            "sync.max_staleness=2",
            "reward.num_workers=1",
            "reward.max_worker_restarts=0",
            after_calls=EVAL_CALLS + SAMPLES_PER_STEP,
        )
    )
    try:
        controller.start()
        trigger.write_text(str(controller.rewards.worker_pids[0]))
        with pytest.raises(
            TrainingAborted,
            match=r"step \d: reward worker 0 \(pid \d+\) died .*not replaced: the reward role's restart budget is"
            r" spent \(reward\.max_worker_restarts = 0, 0 used\)",
        ) as info:
            controller.run()
    finally:
        controller.shutdown()
    assert isinstance(info.value.__cause__, ActorFault)
    assert [(a.role, a.name) for a in info.value.__cause__.actors] == [("reward", "reward worker 0")]
    assert "step_000001: continue with trainer.resume=auto" in str(info.value)
    latest = CheckpointManager(tmp_path / "run" / "checkpoints").resolve("auto")
    assert latest == tmp_path / "run" / "checkpoints" / "step_000001"
    cursor = json.loads((latest / "controller.json").read_text())["cursor"]
    assert (cursor["epoch"], cursor["position"]) == (0, BATCH)  # step 2's and 3's prompts go back
    free, total = _wait_all_cpus_free()
    assert free == total, f"{total - free} CPUs still held after the run stopped"


def test_learner_rank_killed_with_batches_in_flight_then_resume(
    local_ray: None, tiny_assets: dict[str, str], tmp_path: Path
) -> None:
    """``async`` (bound 1, a checkpoint at step 2): rank 1 is killed while step 4's batch is scored, during
    step 3's update (or just after it, if the update is quicker: the death then surfaces at step 4). The run
    stops (ZeRO state cannot be rebuilt) and resumes from step 2, which left nothing in flight; what came
    after it is trained again, with the same staleness, and each step is logged once."""
    from grpo_dist.controller import Controller
    from grpo_dist.faults import TrainingAborted
    from grpo_dist.metrics import read_metrics

    def cfg(trigger: Path, *extra: str) -> Any:
        return _cfg(tiny_assets, tmp_path / "run", trigger, "trainer.total_steps=4", "trainer.save_every=2",
                    "trainer.async_mode=async", "sync.max_staleness=1", "data.eval_files=[]", *extra,
                    after_calls=3 * SAMPLES_PER_STEP)  # fmt: skip

    trigger = tmp_path / "run.trigger"
    controller = Controller(cfg(trigger))
    try:
        controller.start()
        trigger.write_text(str(_pid(controller.learners.actors[1])))
        with pytest.raises(
            TrainingAborted, match=r"step [34]: learner rank 1 died; ZeRO state cannot be rebuilt"
        ) as info:
            controller.run()
    finally:
        controller.shutdown()
    assert "step_000002: continue with trainer.resume=auto" in str(info.value)
    assert [m["step"] for m in read_metrics(tmp_path / "run") if "reward/mean" in m] in ([1, 2], [1, 2, 3])

    resumed = Controller(cfg(tmp_path / "unused.trigger", "trainer.resume=auto"))
    try:
        resumed.start()
        assert resumed.state.next_step == 3
        resumed.run()
    finally:
        resumed.shutdown()
    records = [m for m in read_metrics(tmp_path / "run") if "reward/mean" in m]
    assert [m["step"] for m in records] == [1, 2, 3, 4]
    assert [m["async/staleness_max"] for m in records] == [0.0, 1.0, 0.0, 1.0]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    write_record(
        "learner_rank_killed",
        {
            "mode": "async, max_staleness 1",
            "faults_injected": 1,
            "run_stopped_cleanly": True,
            "resumed_from": "step_000002",
            "steps_completed": 4,
            "steps_logged_twice": 0,
        },
    )
