"""``bench e2e``: samples/s of ``Trainer.train_step`` and its phase split vs the ideal synchronous step."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
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
    per_model,
    private_ray,
    settle,
    start_actor,
)
from grpo_dist.bench.records import figure

# ----------------------------------------------------------------------------------------------------- e2e


def _e2e_model(s: Settings, model: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import ray

    from grpo_dist.controller import Trainer
    from grpo_dist.models.assets import ensure_task_data
    from grpo_dist.rollout.engine import engine_env

    train_file, eval_file = ensure_task_data()
    path = bench_model(model)
    facts = model_facts(path)
    run_dir = Path(tempfile.mkdtemp(prefix="gd-bench-run-"))
    total = s.e2e_warmup_steps + s.e2e_steps
    overrides = [
        f"data.train_files=[{train_file}]",
        f"data.eval_files=[{eval_file}]",
        f"data.max_response_length={s.e2e_response_len}",
        "rollout.ignore_eos=true",
        # the same work as the ideal step: one optimizer step per batch, no reference model
        "algo.kl_coef=0.0",
        "learner.mini_batch_size=16",
        f"trainer.total_steps={total}",
        f"trainer.output_dir={run_dir}",
    ]
    cfg = bench_config(path, overrides)
    records: list[dict[str, Any]] = []
    ideal_runs: list[dict[str, float]] = []
    cores = all_cores()
    try:
        with private_ray(verbose=s.verbose), Trainer(cfg, run_dir=run_dir) as trainer:
            trainer.start()
            pad = trainer.tokenizer.pad_token_id
            # The ideal step's process lives beside the trainer's actors (idle while they run, and the
            # other way round), and the two alternate step by step on the same prompts, so that a change
            # in the machine's load falls on both.
            ideal = start_actor(
                IdealStep,
                num_cpus=len(cores),
                env=engine_env(device="cpu", cpu_ids=cores),
                engine=engine_settings(cfg, path, cfg.data.max_prompt_length + cfg.data.max_response_length),
                lr=cfg.learner.lr,
                threads=len(cores),
                seed=cfg.trainer.seed,
            )
            ray.get(ideal.ready.remote())

            def ideal_step(prompts: list[list[int]]) -> dict[str, float]:
                args = (cfg.rollout.num_generations, cfg.data.max_response_length, cfg.rollout.temperature)
                opts = (cfg.learner.micro_batch_size, cfg.learner.max_grad_norm, 0 if pad is None else int(pad))
                return ray.get(ideal.step.remote(prompts, *args, *opts))

            for step in range(1, total + 1):
                state = trainer.cursor.state_dict()  # peek at the step's prompts for the ideal step
                prompts = [list(trainer.train_prompts[i].token_ids) for i in trainer.cursor.next_batch()]
                trainer.cursor.load_state_dict(state)
                if step % 2:
                    settle()
                    records.append(trainer.train_step(step))
                settle()
                ideal_runs.append(ideal_step(prompts))
                if not step % 2:
                    settle()
                    records.append(trainer.train_step(step))
            ray.kill(ideal)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    measured = records[s.e2e_warmup_steps :]
    ideal_measured = ideal_runs[s.e2e_warmup_steps :]
    samples = cfg.data.train_batch_size * cfg.rollout.num_generations
    phases = e2e_phases(measured)
    ideal_ph = min(ideal_measured, key=lambda r: r["step_s"])  # its fastest step, as for grpo-dist
    model_config = {
        **facts,
        "samples_per_step": samples,
        "warmup_steps": s.e2e_warmup_steps,
        "measured_steps": s.e2e_steps,
        "ideal": "1 process on all cores: raw vLLM generate (n=G) + plain torch step + in-process reload",
        "config": cfg.to_dict(),
    }
    details = {
        "grpo_dist_phase_s": phases,
        "ideal_phase_s": ideal_ph,
        "grpo_dist_steps": [{k: v for k, v in r.items() if k.startswith(("timing/", "throughput/"))} for r in measured],
        "ideal_steps": ideal_measured,
    }
    split = ", ".join(f"{k} {phases[k]:.2f}" for k in ("rollout", "reward", "train", "sync", "idle"))
    ideal_split = ", ".join(f"{k.removesuffix('_s')} {ideal_ph[k]:.2f}" for k in ("generate_s", "train_s", "reload_s"))
    figures = [
        figure(
            benchmark="e2e",
            model=model,
            name="train step, demo-like config",
            unit="samples/s",
            value=samples / phases["step"],
            bound=samples / ideal_ph["step_s"],
            bound_name="ideal synchronous step",
            goal=round(1 / 1.1, 3) if model == "large" else None,
            note=f"grpo-dist {phases['step']:.2f} s/step = {split}; ideal {ideal_ph['step_s']:.2f} s = {ideal_split}",
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
    """Seconds per phase of the fastest of the Trainer's step records (see ``best``); ``idle`` is the part
    of that step in none of the timed phases (collation, advantages, driver work)."""
    keys = ("rollout", "reward", "train", "sync")
    fastest = min(records, key=lambda r: r["timing/step_s"])
    out = {k: fastest[f"timing/{k}_s"] for k in (*keys, "step")}
    out["idle"] = fastest["timing/step_s"] - sum(fastest[f"timing/{k}_s"] for k in keys)
    return out


def bench_e2e(s: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return per_model(s.e2e_models, _e2e_model, s)
