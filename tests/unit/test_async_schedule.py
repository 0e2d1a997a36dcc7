"""The async schedule: what it admits, where it stops, and the real ``Controller`` step loop driven over
hand-written fakes of the engines, reward workers, learner ranks and weight sync (no Ray here).

The fakes observe behaviour, not the controller's bookkeeping: the fake engine writes the weights version it
generated with into each completion's tokens, and the fake learner reads it back out of the batch it is
asked to train on, next to its own version. Staleness, prompt order and coverage are measured there.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from grpo_dist.async_schedule import admits, drop_stale, generation_horizon, staleness, version_floor
from grpo_dist.config import apply_overrides, parse_config
from grpo_dist.controller import Controller
from grpo_dist.data import PromptCursor
from grpo_dist.faults import ActorFault, ActorId, ActorTimeoutError, TrainingAborted
from grpo_dist.preflight import RunInputs
from grpo_dist.rollout.partial import PartialGroups, SegmentBoundary, Segments, extend_completion
from grpo_dist.rollout.pool import EnginesReplaced
from grpo_dist.run_parts import RunParts
from grpo_dist.run_state import RunState
from grpo_dist.types import Completion, Prompt, RolloutGroup, ScoredGroup

PROMPT_BASE, VERSION_BASE = 10, 1000  # token ids that carry a prompt's id and a sample's weights version


# ------------------------------------------------------------------------------------------ pure rules


def test_the_floor_admission_and_horizon_by_hand() -> None:
    assert [version_floor(s, 2) for s in (1, 2, 3, 4, 5)] == [0, 0, 0, 1, 2]
    assert admits(4, engine_version=1, max_staleness=2)
    assert not admits(5, engine_version=1, max_staleness=2)
    assert generation_horizon(3, max_staleness=2, barrier=10) == 5
    assert generation_horizon(3, max_staleness=2, barrier=4) == 4  # never past a checkpoint step
    assert generation_horizon(4, max_staleness=2, barrier=4) == 4  # a checkpoint step generates nothing ahead
    assert generation_horizon(3, max_staleness=0, barrier=10) == 3  # sync


def _group(version: int, prompt_id: int = 0) -> ScoredGroup:
    prompt = Prompt(prompt_id=prompt_id, token_ids=[PROMPT_BASE + prompt_id], text="p")
    completion = Completion([VERSION_BASE + version, 5], [-0.5, -0.5], "stop", "x")
    return ScoredGroup(
        RolloutGroup(prompt, [completion, completion], version, 0), [1.0, 0.0], {"r": [1.0, 0.0]}, [True] * 2
    )


def test_drop_stale_masks_only_groups_past_the_bound() -> None:
    groups = [_group(5), _group(3), _group(2)]  # trained at step 6: the learner holds version 5
    assert [staleness(g, step=6) for g in groups] == [0, 2, 3]
    out, dropped = drop_stale(groups, step=6, max_staleness=2)
    assert dropped == 1
    assert [g.valid for g in out] == [[True, True], [True, True], [False, False]]
    assert out[0] is groups[0] and out[1] is groups[1]


# --------------------------------------------------------------------------------------- the fake run


@dataclass
class FakeEngines:
    """Generates each prompt's group with the version it holds (refusing below a request's floor, as a real
    engine does); the version travels in the completion tokens. ``fail_at``: the n-th ``generate`` call
    raises the fault a pool raises when it cannot repair an engine, half-way through its batch (the groups
    before it already went to the reward workers)."""

    group_size: int
    version: int = 0
    calls: int = 0
    fail_at: int | None = None
    replace_at: int | None = None
    """The n-th call loses an engine half-way (replaced, as the real pool does, then the caller recovers)."""
    fault_stats: dict[str, int] = field(default_factory=dict)

    def generate(
        self, prompts: list[Prompt], spec: Any, *, min_version: int, segment_tokens: int | None = None, **_: Any
    ) -> Iterator[list[RolloutGroup] | EnginesReplaced | SegmentBoundary]:
        self.calls += 1
        assert self.version >= min_version, f"engine at version {self.version} asked for >= {min_version}"
        if segment_tokens is not None:
            yield from self._in_segments(prompts, spec, segment_tokens)
            return
        for i, p in enumerate(prompts):
            if self.calls == self.fail_at and i == len(prompts) // 2:  # half the batch's groups already out
                raise ActorFault("engine 0 died past its budget", actors=[ActorId("rollout", "engine 0")])
            if self.calls == self.replace_at and i == len(prompts) // 2:
                yield EnginesReplaced([ActorId("rollout", "engine 1")])
            completions = [
                Completion([VERSION_BASE + self.version, 20 + (p.prompt_id + k) % 3], [-0.1, -0.2], "stop", "")
                for k in range(self.group_size)
            ]
            yield [RolloutGroup(p, completions, self.version, 0, batch_index=i)]

    def _in_segments(
        self, prompts: list[Prompt], spec: Any, segment_tokens: int
    ) -> Iterator[list[RolloutGroup] | SegmentBoundary]:
        """A partial rollout as the real pool runs one, through the real ``PartialGroups``: one call per
        round of segments, every token the version the engine holds when it generates it, a boundary
        between rounds (where the controller may publish newer weights)."""
        samples = PartialGroups(prompts, n=spec.n, max_tokens=spec.max_tokens, occurrences=[0] * len(prompts))
        requests = samples.first_requests()
        while requests:
            answers = []
            for r in requests:
                count = min(segment_tokens, spec.max_tokens - r.done_tokens)
                tokens = [VERSION_BASE + self.version] * count
                answers.append(
                    extend_completion(r.prefix, Completion(tokens, [-0.1] * count, "length", ""), version=self.version)
                )
            whole, requests = samples.add(requests, Segments(answers, self.version, engine_index=0))
            if whole:
                yield whole
            if requests:
                yield SegmentBoundary(0)


@dataclass
class FakeRewards:
    submitted: list[RolloutGroup] = field(default_factory=list)

    def submit(self, groups: list[RolloutGroup]) -> None:
        self.submitted += groups

    def collect(self, timeout_s: float) -> list[ScoredGroup]:
        out = []
        for g in self.submitted:
            rewards = [float(c.token_ids[1] % 2) for c in g.completions]
            out.append(ScoredGroup(g, rewards, {"exact_match": rewards}, [True] * len(rewards)))
        self.submitted = []
        return out

    def drain_failures(self) -> list[Any]:
        return []

    def fault_stats(self) -> dict[str, int]:
        return {}


@dataclass
class Trained:
    step: int
    learner_version: int
    prompt_ids: list[int]
    sample_versions: list[int]
    masked_rows: list[int]
    """Rows that count for nothing in the loss (every loss-mask entry 0)."""
    token_versions: list[list[int]] = field(default_factory=list)
    """Each row's generated tokens, read back as the versions they were generated with."""


class FakePending:
    def __init__(self, learner: FakeLearners, step: int) -> None:
        self.step, self._learner = step, learner
        self._polls = 0

    def done(self) -> bool:
        """Lands on the ``land_after``-th look (a partial rollout looks at each segment boundary)."""
        self._polls += 1
        return self._polls >= self._learner.land_after

    def result(self) -> dict[str, float]:
        if self.step == self._learner.late_at:
            late = ActorId("learner", "learner rank 1")
            raise ActorTimeoutError(f"train step {self.step}: no answer within 1 s from {late}", actors=[late])
        self._learner.version = self.step  # the update has landed
        return {"consecutive_nonfinite": 0.0, "learner/loss": 0.0}


@dataclass
class FakeLearners:
    group_size: int
    version: int = 0
    log: list[Trained] = field(default_factory=list)
    late_at: int | None = None
    """The step whose update misses its deadline (the ranks are still inside the call)."""
    saved: list[int] = field(default_factory=list)
    land_after: int = 1

    def start_train(self, batch: Any, step: int) -> FakePending:
        rows = batch.input_ids.tolist()
        assert self.version == step - 1, (self.version, step)
        self.log.append(
            Trained(
                step,
                self.version,
                [r[0] - PROMPT_BASE for r in rows[:: self.group_size]],
                [r[1] - VERSION_BASE for r in rows],
                [i for i, m in enumerate(batch.loss_mask.sum(dim=1).tolist()) if m == 0],
                [[t - VERSION_BASE for t in r[1:] if t >= VERSION_BASE] for r in rows],
            )
        )
        return FakePending(self, step)

    def save_checkpoint(self, path: str) -> None:
        self.saved.append(self.version)
        Path(path).mkdir(parents=True)
        (Path(path) / "version").write_text(str(self.version))

    def save_hf(self, path: str) -> None:
        Path(path).mkdir(parents=True)


@dataclass
class FakeSync:
    engines: FakeEngines

    def connect(self) -> None:
        pass

    def sync(self, *, version: int) -> dict[str, float]:
        self.engines.version = version
        return {"timing/sync_s": 0.0}


class FakeMetrics:
    def __init__(self) -> None:
        self.records: list[tuple[int, dict[str, Any]]] = []

    def log(self, step: int, record: dict[str, Any]) -> None:
        self.records.append((step, record))


class _Tokenizer:
    pad_token_id = 0


def _controller(run_dir: Path, *, mode: str, bound: int | None, steps: int, save_every: int, batch: int,
                num_prompts: int, resume_version: int = 0, extra: tuple[str, ...] = ()
                ) -> tuple[Controller, list[Trained]]:  # fmt: skip
    overrides = [
        *extra,
        f"trainer.async_mode={mode}",
        f"trainer.total_steps={steps}",
        f"trainer.save_every={save_every}",
        f"trainer.output_dir={run_dir}",
        f"data.train_batch_size={batch}",
        f"learner.mini_batch_size={batch}",
        "rollout.num_generations=2",
        "algo.kl_coef=0.0",
        "logging.log_rollouts=false",
    ]
    if bound is not None:
        overrides.append(f"sync.max_staleness={bound}")
    cfg = parse_config(apply_overrides({}, overrides))
    controller = Controller(cfg, run_dir=run_dir)
    prompts = [Prompt(prompt_id=i, token_ids=[PROMPT_BASE + i], text=str(i)) for i in range(num_prompts)]
    inputs = RunInputs(model_path="", tokenizer=_Tokenizer(), train_prompts=prompts, train_stats=None)  # type: ignore[arg-type]
    engines = FakeEngines(group_size=2, version=resume_version)
    learners = FakeLearners(group_size=2, version=resume_version)
    controller.parts = RunParts(
        cfg,
        "cpu",
        inputs,
        engines,
        FakeRewards(),
        learners,
        FakeSync(engines),
        FakeMetrics(),  # type: ignore[arg-type]
    )
    controller.state = RunState(PromptCursor(num_prompts, batch_size=batch, seed=cfg.trainer.seed))
    return controller, learners.log


def _resume(controller: Controller) -> None:
    latest = controller.checkpoints.resolve("auto")
    assert latest is not None
    controller._state().load(latest)


RUNS = st.fixed_dictionaries(
    {
        "bound": st.integers(0, 4),
        "steps": st.integers(1, 9),
        "save_every": st.integers(0, 5),
        "batch": st.integers(1, 3),
        "num_prompts": st.integers(1, 7),
    }
)


@settings(max_examples=40, deadline=None)
@given(RUNS)
def test_observed_staleness_never_exceeds_the_bound_and_every_prompt_is_trained_in_order(run: dict[str, int]) -> None:
    assume(_accepted(run))
    with tempfile.TemporaryDirectory() as tmp:
        sync, sync_log = _controller(Path(tmp) / "sync", mode="sync", bound=None, **_shape(run))
        sync.run()
        asynchronous, log = _controller(Path(tmp) / "async", mode="async", **run)
        asynchronous.run()
    bound = run["bound"]
    for t in log:
        lags = [t.learner_version - v for v in t.sample_versions]
        assert max(lags) <= bound, (t, bound)
        assert min(lags) >= 0
    # the same prompts in the same order as the sync run: none skipped, none repeated
    assert [t.prompt_ids for t in log] == [t.prompt_ids for t in sync_log]
    assert all(max(t.learner_version - v for v in t.sample_versions) == 0 for t in sync_log)
    # and the bound is used: a step far enough from the start and from the last checkpoint is that stale
    barriers = [0] + [s for s in range(1, run["steps"] + 1) if run["save_every"] and s % run["save_every"] == 0]
    for t in log:
        since = t.step - 1 - max(b for b in barriers if b < t.step)
        assert max(t.learner_version - v for v in t.sample_versions) == min(bound, since), t


def _accepted(run: dict[str, int]) -> bool:
    """The config check refuses a bound that checkpoint barriers would cap (it would do nothing)."""
    return not (run["save_every"] and run["bound"] >= run["save_every"])


def _shape(run: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in run.items() if k != "bound"}


@settings(max_examples=25, deadline=None)
@given(RUNS, st.integers(2, 12))
def test_a_fault_with_batches_in_flight_resumes_without_skipping_or_repeating_a_prompt(
    run: dict[str, int], fail_at: int
) -> None:
    assume(_accepted(run))
    with tempfile.TemporaryDirectory() as tmp:
        whole, whole_log = _controller(Path(tmp) / "whole", mode="async", **run)
        whole.run()
        broken, log = _controller(Path(tmp) / "broken", mode="async", **run)
        broken.engines.fail_at = fail_at
        if fail_at > whole.engines.calls:
            return  # the fault would land after the run: nothing to resume
        with pytest.raises(TrainingAborted, match="engine 0 died"):
            broken.run()
        trained = broken._state().trained_step
        if trained == 0:
            assert broken.checkpoints.latest_name() is None
            return
        resumed, resumed_log = _controller(Path(tmp) / "broken", mode="async", resume_version=trained, **run)
        _resume(resumed)
        assert resumed._state().trained_step == trained  # the abort checkpointed every trained step
        resumed.run()
    assert [t.prompt_ids for t in log[:trained] + resumed_log] == [t.prompt_ids for t in whole_log]


def test_one_step_off_is_async_with_bound_one(tmp_path: Path) -> None:
    shape = {"steps": 5, "save_every": 0, "batch": 2, "num_prompts": 5}
    c1, log1 = _controller(tmp_path / "b", mode="one_step_off", bound=None, **shape)
    c1.run()
    c2, log2 = _controller(tmp_path / "c", mode="async", bound=1, **shape)
    c2.run()
    assert [(t.prompt_ids, t.sample_versions) for t in log1] == [(t.prompt_ids, t.sample_versions) for t in log2]
    assert [max(t.learner_version - v for v in t.sample_versions) for t in log1] == [0, 1, 1, 1, 1]


def test_the_step_record_counts_batches_ahead_and_drops(tmp_path: Path) -> None:
    controller, _ = _controller(tmp_path, mode="async", bound=2, steps=4, save_every=0, batch=1, num_prompts=4)
    controller.run()
    records = dict(controller._part("metrics").records)
    assert [records[s]["async/batches_ahead"] for s in (1, 2, 3, 4)] == [2.0, 1.0, 0.0, 0.0]
    assert [records[s]["async/staleness_max"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 2.0, 2.0]
    assert all(records[s]["async/dropped_stale"] == 0.0 for s in records)
    assert all("timing/rollout_idle_ratio" in records[s] for s in (1, 2))


def test_an_engine_replaced_during_an_overlapped_update_gets_that_updates_weights(tmp_path: Path) -> None:
    """Bound 2: batches 2 and 3 are generated during step 1's update. An engine is lost half-way through
    batch 2: the controller's recovery waits for the update and publishes version 1, so the rest of batch 2
    and all of batch 3 come from version 1, fresher than the schedule's 0; step 1's own sync is then not
    repeated."""
    controller, log = _controller(tmp_path, mode="async", bound=2, steps=3, save_every=0, batch=4, num_prompts=12)
    controller.engines.replace_at = 2  # the second generate call: batch 2, during step 1's update
    syncs: list[int] = []
    sync = controller.weight_sync.sync
    controller.weight_sync.sync = lambda *, version: syncs.append(version) or sync(version=version)  # type: ignore[method-assign]
    controller.run()
    assert [sorted(set(t.sample_versions)) for t in log] == [[0], [0, 1], [1]]
    assert syncs == [1, 2, 3]  # the recovery's publish of version 1, then steps 2 and 3; step 1's not twice
    records = dict(controller._part("metrics").records)
    assert all("timing/sync_s" in records[s] for s in (1, 2, 3))  # step 1's publish figures, done early
    assert all(t.learner_version - v <= 2 for t in log for v in t.sample_versions)
    assert sorted(p for t in log for p in t.prompt_ids) == list(range(12))  # nothing lost or repeated


def test_learner_ranks_past_their_deadline_stop_the_run_without_a_checkpoint(tmp_path: Path) -> None:
    """A late rank is still inside its call: a checkpoint would queue behind it and save what that call
    leaves under the previous step's name. The run stops naming the ranks, the deadline and the checkpoint
    to resume from, and writes none."""
    controller, _ = _controller(tmp_path, mode="async", bound=1, steps=4, save_every=2, batch=1, num_prompts=4)
    learners = controller.learners
    learners.late_at = 3  # with step 4's batch generated during that update, in flight
    with pytest.raises(
        TrainingAborted,
        match=r"^train step 3: no answer within 1 s from learner rank 1 \(learner.step_timeout_s = .*no checkpoint",
    ) as info:
        controller.run()
    assert "step_000002: continue with trainer.resume=auto" in str(info.value)
    assert learners.saved == [2]  # the barrier's checkpoint only, none after the deadline


def test_a_group_older_than_the_bound_is_dropped_from_the_loss_and_counted(tmp_path: Path) -> None:
    """The hard stop behind the schedule: an engine that reports an older version than the bound allows
    (which the schedule never asks for) has its groups masked out of what the learner trains on."""
    controller, log = _controller(tmp_path, mode="async", bound=1, steps=3, save_every=0, batch=2, num_prompts=6)
    engines = controller.engines
    generate = engines.generate

    def stale_on_third_call(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for item in generate(*args, **kwargs):
            if engines.calls == 3 and isinstance(item, list):  # step 3's batch: claim version -1 for its first group
                item = [
                    RolloutGroup(g.prompt, g.completions, -1, 0, g.batch_index) if g.batch_index == 0 else g
                    for g in item
                ]
            yield item

    engines.generate = stale_on_third_call  # type: ignore[method-assign]
    controller.run()
    records = dict(controller._part("metrics").records)
    assert [records[s]["async/dropped_stale"] for s in (1, 2, 3)] == [0.0, 0.0, 1.0]
    trained = log[2]
    assert trained.step == 3 and trained.masked_rows == [0, 1]  # the group's two samples count for nothing


def test_a_partial_rollout_continues_under_the_update_that_landed_at_a_boundary(tmp_path: Path) -> None:
    """one_step_off, 6-token samples in segments of 2. Step n's update lands at the first boundary of batch
    n+1 (the controller's second look: the first is before the batch starts): the controller publishes it
    there, and the samples' last 4 tokens come from it. The learner reads the versions out of the tokens it
    trains on; the step's records say the same."""
    partial = ("rollout.partial_rollout=resume", "rollout.partial_segment_tokens=2", "data.max_response_length=6")
    controller, log = _controller(
        tmp_path, mode="one_step_off", bound=None, steps=4, save_every=0, batch=2, num_prompts=8, extra=partial
    )
    controller.learners.land_after = 2
    syncs: list[int] = []
    sync = controller.weight_sync.sync
    controller.weight_sync.sync = lambda *, version: syncs.append(version) or sync(version=version)  # type: ignore[method-assign]
    controller.run()
    assert [t.token_versions[0] for t in log] == [[0] * 6, [0, 0, 1, 1, 1, 1], [1, 1, 2, 2, 2, 2], [2, 2, 3, 3, 3, 3]]
    assert all(len({tuple(v) for v in t.token_versions}) == 1 for t in log)  # every sample of a batch alike
    assert syncs == [1, 2, 3, 4]  # each update published once, at a boundary (the last step's after its batch)
    records = dict(controller._part("metrics").records)
    assert [records[s]["async/partial_ratio"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 1.0, 1.0]
    assert [records[s]["async/staleness_max"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 1.0, 1.0]  # from the oldest token
    assert [records[s]["async/token_staleness_mean"] for s in (2, 3, 4)] == [pytest.approx(1 / 3)] * 3
    assert sorted(p for t in log for p in t.prompt_ids) == list(range(8))


def test_an_update_landing_later_reaches_the_samples_later(tmp_path: Path) -> None:
    """The update lands at the second boundary: only the last 2 tokens are the new version's; at the start
    of the batch, all of them are; one that
    lands after the batch leaves it whole (the publish then comes at the end of the step, as without
    partial rollouts)."""
    partial = ("rollout.partial_rollout=resume", "rollout.partial_segment_tokens=2", "data.max_response_length=6")
    shape = {"steps": 2, "save_every": 0, "batch": 1, "num_prompts": 2, "extra": partial}
    later, log = _controller(tmp_path / "later", mode="one_step_off", bound=None, **shape)  # type: ignore[arg-type]
    later.learners.land_after = 3
    later.run()
    assert log[1].token_versions[0] == [0, 0, 0, 0, 1, 1]
    first, log = _controller(tmp_path / "first", mode="one_step_off", bound=None, **shape)  # type: ignore[arg-type]
    first.learners.land_after = 1
    first.run()
    assert log[1].token_versions[0] == [1] * 6  # published before the batch ahead began: none of it is partial
    never, log = _controller(tmp_path / "never", mode="one_step_off", bound=None, **shape)  # type: ignore[arg-type]
    never.learners.land_after = 99
    never.run()
    assert log[1].token_versions[0] == [0] * 6
    assert dict(never._part("metrics").records)[2]["async/partial_ratio"] == 0.0
