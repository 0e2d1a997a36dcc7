"""``bench e2e``: samples/s of ``Controller.train_step`` and its phase split vs the ideal synchronous step.

Two modes. Fixed length (every model size): EOS ignored, ``e2e_response_len`` tokens per completion, so
both sides do exactly the same work. Natural (the embedded task on the warm-started embedded model): EOS
ends a completion as in a real run, and the ideal step sends the very seeded requests grpo-dist's engines
send, so the first step samples the same tokens on both sides (later ones drift apart a little, as the
two sides train on different advantages: the token counts of both are in the record).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo_dist.bench.baselines import IdealStep
from grpo_dist.bench.common import (
    Settings,
    all_cores,
    bench_config,
    bench_model,
    engine_settings,
    model_facts,
    private_ray,
    settle,
    start_actor,
)
from grpo_dist.bench.records import figure


@dataclass(frozen=True)
class E2ECase:
    """One end-to-end measurement: a model and a mode."""

    model: str  # a key of ``MODELS``, or "embedded" (the warm-started default policy)
    natural: bool

    @property
    def label(self) -> str:
        return f"{self.model}, {'natural (EOS)' if self.natural else 'fixed length'}"


def e2e_cases(s: Settings) -> list[E2ECase]:
    cases = [E2ECase(m, natural=False) for m in s.e2e_models]
    return cases + ([E2ECase("embedded", natural=True)] if s.e2e_natural else [])


def e2e_overrides(s: Settings, case: E2ECase, train_file: Path, eval_file: Path, run_dir: Path) -> list[str]:
    """The demo config's changes for a benchmark step: the same work as the ideal step (one optimizer step
    per batch, no reference model), the task data, and in fixed mode a fixed response length."""
    out = [
        *s.overrides,
        f"data.train_files=[{train_file}]",
        f"data.eval_files=[{eval_file}]",
        "algo.kl_coef=0.0",
        "learner.mini_batch_size=16",
        f"trainer.total_steps={s.e2e_warmup_steps + s.e2e_steps}",
        f"trainer.output_dir={run_dir}",
    ]
    if not case.natural:
        out += [f"data.max_response_length={s.e2e_response_len}", "rollout.ignore_eos=true"]
    return out


def train_seeds(run_seed: int, step: int, prompts: Sequence[Any], n: int) -> list[int]:
    """The per-sample seeds grpo-dist's engines use for a training step's prompts (see ``rollout.seeds``),
    prompt by prompt: a prompt seen again in the same batch samples from its own stream."""
    from grpo_dist.rollout.seeds import occurrence_stream, occurrences, sample_seed

    return [
        sample_seed(run_seed, occurrence_stream("train", k), step, p.prompt_id, i)
        for p, k in zip(prompts, occurrences(p.prompt_id for p in prompts), strict=True)
        for i in range(n)
    ]


def start_ideal(cfg: Any, model_path: Path, *, packed_tokens: int | None = None) -> Any:
    """The ideal step's actor on all cores, with the engine settings of ``cfg``'s engines, ready."""
    import ray

    from grpo_dist.rollout.engine import engine_env

    cores = all_cores()
    ideal = start_actor(
        IdealStep,
        num_cpus=len(cores),
        env=engine_env(device="cpu", cpu_ids=cores),
        engine=engine_settings(cfg, model_path, cfg.data.max_prompt_length + cfg.data.max_response_length),
        lr=cfg.learner.lr,
        threads=len(cores),
        seed=cfg.trainer.seed,
        packed_tokens=packed_tokens,
    )
    ray.get(ideal.ready.remote())
    return ideal


def _model_path(case: E2ECase) -> Path:
    if case.model == "embedded":
        from grpo_dist.models.assets import ensure_embedded_model

        return ensure_embedded_model()
    return bench_model(case.model)


def _e2e_case(s: Settings, case: E2ECase) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import ray

    from grpo_dist.controller import Controller
    from grpo_dist.models.assets import ensure_task_data

    train_file, eval_file = ensure_task_data()
    path = _model_path(case)
    facts = model_facts(path)
    run_dir = Path(tempfile.mkdtemp(prefix="gd-bench-run-"))
    cfg = bench_config(path, e2e_overrides(s, case, train_file, eval_file, run_dir))
    records: list[dict[str, Any]] = []
    ideal_runs: list[dict[str, float]] = []
    g = cfg.rollout.num_generations
    try:
        with private_ray(verbose=s.verbose), Controller(cfg, run_dir=run_dir) as controller:
            controller.start()
            pad = controller.inputs.tokenizer.pad_token_id
            # The ideal step's process lives beside the trainer's actors (idle while they run, and the
            # other way round), and the two alternate step by step on the same prompts, so that a change
            # in the machine's load falls on both.
            ideal = start_ideal(cfg, path)

            def ideal_step(step: int, prompts: list[Any]) -> dict[str, float]:
                seeds = train_seeds(cfg.trainer.seed, step, prompts, g) if case.natural else None
                return ray.get(
                    ideal.step.remote(
                        [list(p.token_ids) for p in prompts],
                        g,
                        cfg.data.max_response_length,
                        cfg.rollout.temperature,
                        cfg.learner.micro_batch_size,
                        cfg.learner.max_grad_norm,
                        0 if pad is None else int(pad),
                        seeds=seeds,
                        ignore_eos=cfg.rollout.ignore_eos,
                    )
                )

            for step in range(1, s.e2e_warmup_steps + s.e2e_steps + 1):
                state = controller.state.cursor.state_dict()  # peek at the step's prompts for the ideal step
                prompts = [controller.inputs.train_prompts[i] for i in controller.state.cursor.next_batch()]
                controller.state.cursor.load_state_dict(state)
                if step % 2:
                    settle()
                    records.append(controller.train_step(step))
                settle()
                ideal_runs.append(ideal_step(step, prompts))
                if not step % 2:
                    settle()
                    records.append(controller.train_step(step))
            ray.kill(ideal)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return _figures(s, case, cfg, facts, records, ideal_runs)


def _figures(
    s: Settings,
    case: E2ECase,
    cfg: Any,
    facts: dict[str, Any],
    records: list[dict[str, Any]],
    ideal_runs: list[dict[str, float]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    measured = records[s.e2e_warmup_steps :]
    ideal_measured = ideal_runs[s.e2e_warmup_steps :]
    samples = cfg.data.train_batch_size * cfg.rollout.num_generations
    phases = e2e_phases(measured)
    ideal_ph = min(ideal_measured, key=lambda r: r["step_s"])  # its fastest step, as for grpo-dist
    lc = cfg.learner
    layout = (
        f"{cfg.rollout.num_engines} engines x {cfg.cluster.num_cpus_per_engine:g} core, {lc.num_ranks} ZeRO-"
        f"{lc.zero_stage} ranks x {cfg.cluster.num_cpus_per_rank:g} core, micro-batch {lc.micro_batch_size}, "
        f"{cfg.model.dtype}"
    )
    model_config = {
        **facts,
        "mode": "natural" if case.natural else "fixed",
        "samples_per_step": samples,
        "warmup_steps": s.e2e_warmup_steps,
        "measured_steps": s.e2e_steps,
        "layout": layout,
        "ideal": "1 process on all cores: raw vLLM generate + plain torch step + in-process reload",
        "config": cfg.to_dict(),
    }
    tokens = [r["response_length/mean"] * samples for r in measured if "response_length/mean" in r]
    details = {
        "grpo_dist_phase_s": phases,
        "ideal_phase_s": ideal_ph,
        "grpo_dist_steps": [{k: v for k, v in r.items() if k.startswith(("timing/", "throughput/"))} for r in measured],
        "grpo_dist_tokens_per_step": tokens,
        "ideal_steps": ideal_measured,
    }
    split = ", ".join(f"{k} {phases[k]:.2f}" for k in ("rollout", "reward", "train", "sync", "idle"))
    ideal_split = ", ".join(f"{k.removesuffix('_s')} {ideal_ph[k]:.2f}" for k in ("generate_s", "train_s", "reload_s"))
    note = (
        f"{layout}; grpo-dist {phases['step']:.2f} s/step = {split}; ideal {ideal_ph['step_s']:.2f} s = {ideal_split}"
    )
    if case.natural and tokens:
        mean_ideal = sum(r["tokens"] for r in ideal_measured) / len(ideal_measured)
        note += f"; generated tokens per step: grpo-dist {sum(tokens) / len(tokens):.0f}, ideal {mean_ideal:.0f}"
    model = case.model if not case.natural else "embedded (natural)"
    figures = [
        figure(
            benchmark="e2e",
            model=model,
            name="train step" + (", fixed length" if not case.natural else ", natural (EOS)"),
            unit="samples/s",
            value=samples / phases["step"],
            bound=samples / ideal_ph["step_s"],
            bound_name="ideal synchronous step",
            goal=round(1 / 1.1, 3) if case.model == "large" else None,
            note=note,
            details=details,
        )
    ]
    for phase, ideal_key, label in (
        ("rollout", "generate_s", "raw vLLM generate, all cores"),
        ("train", "train_s", "plain torch step, all cores"),
        ("sync", "reload_s", "in-process reload"),
        ("reward", None, "not in the ideal step"),
        ("idle", None, "not in the ideal step"),
    ):
        figures.append(
            figure(
                benchmark="e2e",
                model=model,
                name=f"phase: {phase}",
                unit="s/step",
                value=phases[phase],
                bound=ideal_ph[ideal_key] if ideal_key else None,
                bound_name=label,
                higher_is_better=False,
            )
        )
    return model_config, figures


def e2e_phases(records: Sequence[dict[str, float]]) -> dict[str, float]:
    """Seconds per phase of the fastest of the Controller's step records (see ``best``); ``probe`` is the
    behavioural sync check (0 when it did not run), ``idle`` the part of that step in none of the timed
    phases (collation, advantages, driver work)."""
    keys = ("rollout", "reward", "train", "sync")
    fastest = min(records, key=lambda r: r["timing/step_s"])
    out = {k: fastest[f"timing/{k}_s"] for k in (*keys, "step")}
    out["probe"] = fastest.get("timing/sync_probe_s", 0.0)
    out["idle"] = fastest["timing/step_s"] - sum(fastest[f"timing/{k}_s"] for k in keys) - out["probe"]
    return out


def bench_e2e(s: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    config: dict[str, Any] = {"cases": {}}
    figures: list[dict[str, Any]] = []
    for case in e2e_cases(s):
        case_config, case_figures = _e2e_case(s, case)
        config["cases"][case.label] = case_config
        figures += case_figures
    return config, figures
