"""``bench async``: what overlapping rollout and training buys, and what the controller costs as the pool grows.

Two parts.

**Modes, per layout.** The embedded task and model, a few real steps of ``Controller.run`` in each of
``sync``, ``one_step_off`` and ``async`` (bound 2), one after the other in one process, on two layouts:

* *disaggregated*, the miniature of separate rollout and training GPUs: one engine pinned to core 0,
  one learner rank pinned to core 1 (the rank's threads are pinned by this benchmark after start-up);
* *demo*: the demo's own layout (2 engines, 2 ranks, both phases on both cores).

Each mode's step time (median over the steady steps) is set against ``max(rollout phase, train phase)``
measured in the same run (rollout: the engines' generation and scoring of a batch; train: the ranks'
busy time, i.e. the step minus ``timing/trainer_idle_ratio``), and against ``sync``'s step in the same
layout.

**Partial rollouts.** On the disaggregated layout with a rollout longer than the update (64-token
answers, EOS ignored), ``one_step_off`` with ``rollout.partial_rollout`` off and ``resume`` (segments of 16
tokens): the update of step n lands while batch n+1 is generated; ``resume`` publishes it at the next
segment boundary and the samples continue under it. Set against each other: the step time (what the
segments cost: one engine call per segment, the KV recomputed after the weights change) and the mean
staleness per token (what they buy: fresher samples).

**Controller overhead.** The driver's CPU time per step with 1, 4, 16 and 64 engines, each engine
receiving the same number of prompts (so the work per engine is constant). The engines here are a test
double: ``CannedEngine`` actors return fixed completions at once, and the learner and weight sync are
no-op doubles too, so what is left is the controller's own work (drawing, balancing, dispatching,
collecting, scoring through the real reward pool, collating, the metrics record). It should grow no
faster than the number of engines: the figure is the driver time per step and engine.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grpo_dist.bench.common import Settings, bench_config, private_ray, settle
from grpo_dist.bench.records import figure

MODES = (("sync", None), ("one_step_off", None), ("async", 2))
LAYOUTS = {
    "disaggregated": [
        "rollout.num_engines=1",
        "learner.num_ranks=1",
        "reward.num_workers=1",
        "cluster.num_cpus_per_engine=1",
        "cluster.num_cpus_per_rank=1",
    ],
    "demo": [],
}
"""Each layout's changes to the demo config; the disaggregated rank is pinned to core 1 by ``pin_ranks``."""


def mode_label(mode: str, bound: int | None) -> str:
    return mode if bound is None else f"{mode} (max_staleness {bound})"


def steady(records: Sequence[dict[str, float]], warmup: int) -> list[dict[str, float]]:
    """The steps that neither start the run nor end it (the last step is a checkpoint barrier)."""
    return list(records[warmup:-1]) or list(records[-1:])


def phases(records: Sequence[dict[str, float]]) -> dict[str, float]:
    """Median seconds per step of the whole step, the rollout phase (generate + score a batch) and the train
    phase (the ranks' busy time), over ``records``."""

    def med(key: Any) -> float:
        return float(statistics.median(key(r) for r in records))

    return {
        "step": med(lambda r: r["timing/step_s"]),
        "rollout": med(lambda r: r["timing/rollout_s"] + r["timing/reward_s"]),
        "train": med(lambda r: r["timing/step_s"] * (1.0 - r["timing/trainer_idle_ratio"])),
        "sync": med(lambda r: r.get("timing/sync_s", 0.0)),
    }


def pin_ranks(learners: Any, cores: list[int]) -> None:
    """Pin every thread of each learner rank's process to ``cores`` (threads it starts later inherit it)."""
    import ray

    def pin(_self: Any, cores: list[int]) -> int:
        tasks = os.listdir("/proc/self/task")
        for tid in tasks:
            os.sched_setaffinity(int(tid), set(cores))
        return len(tasks)

    ray.get([a.__ray_call__.remote(pin, cores) for a in learners.actors], timeout=60)


ROLLOUT_HEAVY = ["data.max_response_length=64", "rollout.ignore_eos=true"]
"""The partial-rollout runs' changes to the disaggregated layout: a rollout longer than the update."""
PARTIAL_SEGMENT_TOKENS = 16


def _run_mode(
    s: Settings, layout: str, mode: str, bound: int | None, extra: Sequence[str] = ()
) -> list[dict[str, float]]:
    from grpo_dist.controller import Controller
    from grpo_dist.models.assets import ensure_embedded_model, ensure_task_data

    train_file, _ = ensure_task_data()
    run_dir = Path(tempfile.mkdtemp(prefix="gd-bench-async-"))
    overrides = [
        *s.overrides,
        *LAYOUTS[layout],
        f"data.train_files=[{train_file}]",
        "data.eval_files=[]",
        f"trainer.async_mode={mode}",
        f"trainer.total_steps={s.async_warmup_steps + s.async_steps + 1}",
        "trainer.save_every=0",
        f"trainer.output_dir={run_dir}",
        *extra,
    ]
    if bound is not None:
        overrides.append(f"sync.max_staleness={bound}")
    cfg = bench_config(ensure_embedded_model(), overrides)
    try:
        with Controller(cfg, run_dir=run_dir) as controller:
            controller.start()
            if layout == "disaggregated":
                pin_ranks(controller.learners, [1 % (os.cpu_count() or 1)])
            settle()
            return controller.run()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _layout_figures(s: Settings, layout: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    runs: dict[str, dict[str, float]] = {}
    raw: dict[str, list[dict[str, float]]] = {}
    for mode, bound in MODES:
        with private_ray(verbose=s.verbose):
            records = _run_mode(s, layout, mode, bound)
        label = mode_label(mode, bound)
        raw[label] = [{k: v for k, v in r.items() if k.startswith(("timing/", "async/"))} for r in records]
        runs[label] = phases(steady(records, s.async_warmup_steps))
        settle()
    figures = []
    sync = runs["sync"]
    for label, ph in runs.items():
        overlapped = label != "sync"
        note = (
            f"{layout} layout: step {ph['step']:.3f} s, rollout phase {ph['rollout']:.3f} s, train phase "
            f"{ph['train']:.3f} s, sync {ph['sync']:.3f} s (medians over {s.async_steps} steady steps)"
        )
        figures.append(
            figure(
                benchmark="async",
                model="embedded",
                name=f"{layout}: {label} step vs max(rollout, train)",
                unit="s/step",
                value=ph["step"],
                bound=max(ph["rollout"], ph["train"]),
                bound_name="max(rollout phase, train phase), same run",
                higher_is_better=False,
                goal=round(1 / 1.15, 3) if overlapped and layout == "disaggregated" else None,
                note=note,
                details={"steps": raw[label]},
            )
        )
        if overlapped:
            figures.append(
                figure(
                    benchmark="async",
                    model="embedded",
                    name=f"{layout}: {label} vs sync",
                    unit="s/step",
                    value=ph["step"],
                    bound=sync["step"],
                    bound_name="sync step, same layout",
                    higher_is_better=False,
                    note=f"speed-up over sync {sync['step'] / ph['step']:.2f}x",
                )
            )
    return {"overrides": LAYOUTS[layout], "phases": runs}, figures


# ------------------------------------------------------------------------------------- controller overhead


class CannedEngine:
    """TEST DOUBLE, for this benchmark only: an engine actor that returns fixed completions immediately, so
    that a step's time is the controller's own. Same ``generate``/``info`` calls as ``VllmEngine``."""

    def __init__(self, engine_index: int) -> None:
        self.engine_index = engine_index

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": 0}

    def generate(
        self, prompts: list[Any], spec: Any, *, batch_indices: list[int], min_version: int, **_: Any
    ) -> list[Any]:
        from grpo_dist.types import Completion, RolloutGroup

        tokens = [17] * spec.max_tokens
        completions = [Completion(tokens, [-0.5] * len(tokens), "length", str(i % 10)) for i in range(spec.n)]
        # it holds whatever weights are asked for (the sync is a no-op double): no group is ever stale
        return [
            RolloutGroup(p, completions, min_version, self.engine_index, batch_index=b)
            for p, b in zip(prompts, batch_indices)
        ]


class _NoopPending:
    def __init__(self, step: int) -> None:
        self.step = step

    def result(self) -> dict[str, float]:
        return {"consecutive_nonfinite": 0.0}


class NoopLearners:
    """TEST DOUBLE, for this benchmark only: a learner group that trains on nothing."""

    def start_train(self, batch: Any, step: int) -> _NoopPending:
        return _NoopPending(step)


class NoopSync:
    """TEST DOUBLE, for this benchmark only: a weight sync that moves nothing."""

    def sync(self, *, version: int) -> dict[str, float]:
        return {}


def _overhead(s: Settings, num_engines: int) -> dict[str, float]:
    import ray

    from grpo_dist.controller import Controller
    from grpo_dist.data import PromptCursor
    from grpo_dist.models.assets import ensure_embedded_model, ensure_task_data
    from grpo_dist.preflight import check_inputs
    from grpo_dist.reward.pool import RewardPool
    from grpo_dist.rollout.pool import EnginePool
    from grpo_dist.run_parts import RunParts
    from grpo_dist.run_state import RunState

    train_file, _ = ensure_task_data()
    batch = num_engines * s.overhead_prompts_per_engine
    cfg = bench_config(
        ensure_embedded_model(),
        [
            f"data.train_files=[{train_file}]",
            "data.eval_files=[]",
            f"data.train_batch_size={batch}",
            f"learner.mini_batch_size={batch}",
            f"rollout.num_engines={num_engines}",
            "algo.kl_coef=0.0",
        ],
    )
    inputs = check_inputs(cfg, device="cpu", build_embedded=True)
    assert inputs is not None

    class CannedPool(EnginePool):
        def _start(self, slot: int) -> Any:
            return ray.remote(CannedEngine).options(num_cpus=0, max_restarts=0).remote(slot)

        def shutdown(self) -> None:
            self.supervisor.kill_all()

    engines = CannedPool(cfg, placement=None, model_path="", device="cpu", max_model_len=64)  # type: ignore[arg-type]
    engines.wait_ready()
    rewards = RewardPool(cfg.reward, max_response_length=cfg.data.max_response_length)
    controller = Controller(cfg, run_dir=Path(tempfile.mkdtemp(prefix="gd-bench-overhead-")))
    controller.parts = RunParts(cfg, "cpu", inputs, engines, rewards, NoopLearners(), NoopSync())  # type: ignore[arg-type]
    controller.state = RunState(PromptCursor(len(inputs.train_prompts), batch_size=batch, seed=0))
    try:
        controller.train_step(1)  # warm-up
        cpu, wall = [], []
        for step in range(2, 2 + s.overhead_steps):
            c0, w0 = time.process_time(), time.perf_counter()
            controller.train_step(step)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
    finally:
        rewards.shutdown()
        engines.shutdown()
        shutil.rmtree(controller.run_dir, ignore_errors=True)
    return {"driver_cpu_s": min(cpu), "wall_s": min(wall), "samples": batch * cfg.rollout.num_generations}


def _overhead_figures(s: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    measured = {}
    for n in s.overhead_engines:
        with private_ray(num_cpus=max(16, n), verbose=s.verbose):
            measured[n] = _overhead(s, n)
        settle()
    first = min(measured)
    per_engine_1 = measured[first]["driver_cpu_s"] / first
    figures = [
        figure(
            benchmark="async",
            model="canned engines (test double)",
            name=f"controller: driver CPU per step and engine, {n} engines",
            unit="s/engine",
            value=m["driver_cpu_s"] / n,
            bound=per_engine_1,
            bound_name=f"the same with {first} engine(s)",
            higher_is_better=False,
            note=f"{m['samples']} samples per step; driver CPU {m['driver_cpu_s']:.3f} s, wall {m['wall_s']:.3f} s "
            "(engines, learner and sync are test doubles: the controller's own work)",
        )
        for n, m in measured.items()
    ]
    return {"prompts_per_engine": s.overhead_prompts_per_engine, "measured": measured}, figures


def _partial_figures(s: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    runs: dict[str, dict[str, float]] = {}
    raw: dict[str, list[dict[str, float]]] = {}
    for partial in ("off", "resume"):
        extra = [*ROLLOUT_HEAVY, f"rollout.partial_rollout={partial}"]
        if partial == "resume":
            extra.append(f"rollout.partial_segment_tokens={PARTIAL_SEGMENT_TOKENS}")
        with private_ray(verbose=s.verbose):
            records = _run_mode(s, "disaggregated", "one_step_off", None, extra)
        kept = steady(records, s.async_warmup_steps)
        runs[partial] = phases(kept) | {
            "token_staleness": statistics.median(r["async/token_staleness_mean"] for r in kept),
            "partial_ratio": statistics.median(r["async/partial_ratio"] for r in kept),
        }
        raw[partial] = [{k: v for k, v in r.items() if k.startswith(("timing/", "async/"))} for r in records]
        settle()
    off, on = runs["off"], runs["resume"]
    name = f"disaggregated, 64-token answers: one_step_off with partial rollouts (segments of {PARTIAL_SEGMENT_TOKENS})"
    note = (
        f"partial_rollout resume / off: step {on['step']:.3f} / {off['step']:.3f} s, rollout phase "
        f"{on['rollout']:.3f} / {off['rollout']:.3f} s, train phase {on['train']:.3f} / {off['train']:.3f} s; "
        f"samples continued under newer weights {on['partial_ratio']:.0%} (medians over {s.async_steps} steady steps)"
    )
    figures = [
        figure(
            benchmark="async",
            model="embedded",
            name=f"{name}: step vs off",
            unit="s/step",
            value=on["step"],
            bound=off["step"],
            bound_name="partial_rollout off, same layout",
            higher_is_better=False,
            note=note,
            details={"steps": raw["resume"]},
        ),
        figure(
            benchmark="async",
            model="embedded",
            name=f"{name}: staleness per token vs off",
            unit="versions",
            value=on["token_staleness"],
            bound=off["token_staleness"],
            bound_name="partial_rollout off, same layout",
            higher_is_better=False,
            note="mean over the step's tokens of the learner's version minus the version each was sampled with",
            details={"steps": raw["off"]},
        ),
    ]
    return {"overrides": [*LAYOUTS["disaggregated"], *ROLLOUT_HEAVY], "runs": runs}, figures


def bench_async(s: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    config: dict[str, Any] = {"layouts": {}}
    figures: list[dict[str, Any]] = []
    for layout in LAYOUTS:
        layout_config, layout_figures = _layout_figures(s, layout)
        config["layouts"][layout] = layout_config
        figures += layout_figures
    config["partial"], partial_figures = _partial_figures(s)
    config["overhead"], overhead_figures = _overhead_figures(s)
    return config, figures + partial_figures + overhead_figures
