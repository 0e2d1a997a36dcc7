"""``bench trl-real``: grpo-dist against TRL's ``GRPOTrainer`` on the workload a user runs here.

SmolLM2-135M-Instruct (the real model of ``configs/smollm2_135m_instruct.yaml``), single-digit sums asked
as chat questions (``chat-addition-1d``: TRL applies the same chat template itself), G = 8 on 8 prompts,
answers ending at the model's EOS within ``max_response_length`` 256, the same ``exact_match`` reward
(``extract: last_number``), one optimizer update per batch, no reference model (TRL's default ``beta`` 0),
in float32 and in bfloat16, against TRL with its defaults (gradient checkpointing on) and without
checkpointing. grpo-dist runs ``LAYOUT``: one engine and one learner rank with both cores each (the
phases of a synchronous step take turns, so each gets the whole machine; one copy of the weights and
optimizer instead of two), packed micro-batches under a token budget; TRL runs in its own virtual
environment (``vs_trl``).

Each side is measured with the machine's memory sampled (``bench.memory``): the peak the run adds, and each
process's resident high-water mark. The bound of the step is the ideal synchronous step on grpo-dist's
very prompts (raw vLLM generate + plain torch on the packed tokens in one process, float32). Answers have
natural lengths, so the two trainers do not generate the same tokens: the notes give both sides' lengths.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from grpo_dist.bench.common import (
    Settings,
    model_facts,
    private_ray,
    settle,
)
from grpo_dist.bench.e2e import e2e_phases, start_ideal, train_seeds
from grpo_dist.bench.memory import MemorySampler, actor_peaks, peak_rss_mb
from grpo_dist.bench.records import REPO_ROOT, best, figure
from grpo_dist.bench.vs_trl import TRL_VERSION, ensure_trl_venv, run_trl, trl_spec
from grpo_dist.config import load_config
from grpo_dist.embedded import cache_root

NUM_PROMPTS, GROUP, MAX_RESPONSE = 8, 8, 256
TRL_MICRO_BATCH = 8  # TRL's per-device batch: 8 completions per forward/backward, 8 accumulation steps
REWARD_KWARGS = {"extract": "last_number"}
LAYOUT = [
    "rollout.num_engines=1",
    "reward.num_workers=1",
    "learner.num_ranks=1",
    "learner.zero_stage=1",
    "cluster.num_cpus=4",  # Ray's logical CPUs: 2 + 2, on 2 cores that the phases use in turn
    "cluster.num_cpus_per_engine=2",
    "cluster.num_cpus_per_rank=2",
    "learner.max_tokens_per_micro_batch=2048",
]
WARMUP, STEPS, TRL_STEPS = 1, 1, 1  # a step is 2-4 minutes on 2 cores: one warm-up, one measured, each side
GOAL = 2.0
_figure = functools.partial(figure, benchmark="trl-real", model="smollm2-135m-instruct")


def ensure_chat_data() -> tuple[Path, Path]:
    """``chat-addition-1d``'s train/eval parquet files in the cache (written once)."""
    from grpo_dist.models.assets import atomic_build
    from grpo_dist.tasks.arithmetic import named_task, write_splits

    named = named_task("chat-addition-1d")
    target = cache_root() / "data" / "chat-addition-1d-seed0"

    def build(tmp: Path) -> None:
        write_splits(tmp, num_train=named.num_train, num_eval=named.num_eval, seed=0, task=named.task)

    root = atomic_build(target, build)
    return root / "train.parquet", root / "eval.parquet"


def workload_overrides(s: Settings, model: Path, train: Path, evals: Path, run_dir: Path, dtype: str) -> list[str]:
    return [
        f"model.path={model}",
        f"model.dtype={dtype}",
        f"data.train_files=[{train}]",
        f"data.eval_files=[{evals}]",
        f"data.train_batch_size={NUM_PROMPTS}",
        f"data.max_response_length={MAX_RESPONSE}",
        f"rollout.num_generations={GROUP}",
        "algo.kl_coef=0.0",
        f"learner.mini_batch_size={NUM_PROMPTS}",
        *LAYOUT,
        f"trainer.total_steps={WARMUP + STEPS}",
        "trainer.eval_every=0",
        f"trainer.output_dir={run_dir}",
        "cluster.device=cpu",
        "logging.progress=off",
        "logging.tensorboard=false",
        "logging.log_rollouts=false",
        *s.overrides,
    ]


def _grpo_dist(s: Settings, cfg: Any, run_dir: Path) -> dict[str, Any]:
    """grpo-dist's measured steps, the machine's memory sampled from before anything starts (as TRL's covers
    its whole process), and the prompts of every step (for the ideal step)."""
    import os

    from grpo_dist.controller import Controller

    records, prompts, peaks = [], [], {}
    with MemorySampler() as sampler:
        try:
            with private_ray(verbose=s.verbose), Controller(cfg, run_dir=run_dir) as controller:
                controller.start()
                for step in range(1, WARMUP + STEPS + 1):
                    state = controller.state.cursor.state_dict()  # peek at the step's prompts for the ideal step
                    prompts.append([controller.inputs.train_prompts[i] for i in controller.state.cursor.next_batch()])
                    controller.state.cursor.load_state_dict(state)
                    settle()
                    records.append(controller.train_step(step))
                peaks = actor_peaks(controller)
                peaks["driver"] = peak_rss_mb(os.getpid()) or 0.0
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "records": records[WARMUP:],
        "prompts": prompts,
        "peak_rss_mb": peaks,
        "machine_peak_added_mb": sampler.peak_added_mb,
    }


def _ideal(s: Settings, cfg: Any, model: Path, prompts: list[list[Any]], pad_id: int) -> list[dict[str, float]]:
    """The ideal step on grpo-dist's prompts of each step, with the same per-sample seeds, after grpo-dist
    has stopped (so that neither's memory counts in the other's)."""
    import ray

    runs = []
    with private_ray(verbose=s.verbose):
        ideal = start_ideal(cfg, model, packed_tokens=cfg.learner.max_tokens_per_micro_batch)
        for step, step_prompts in enumerate(prompts, start=1):
            settle()
            seeds = train_seeds(cfg.trainer.seed, step, step_prompts, GROUP)
            ids = [list(p.token_ids) for p in step_prompts]
            args = (ids, GROUP, MAX_RESPONSE, cfg.rollout.temperature, 8, cfg.learner.max_grad_norm, pad_id)
            runs.append(ray.get(ideal.step.remote(*args, seeds=seeds, ignore_eos=False)))
        ray.kill(ideal)
    return runs[WARMUP:]


def _trl(python: Path, cfg: Any, model: Path, train: Path, dtype: str, checkpointing: bool, s: Settings) -> dict:
    spec = trl_spec(cfg, model_path=model, train_file=train, s=s, dtype=dtype, checkpointing=checkpointing)
    spec |= {
        "micro_batch_size": TRL_MICRO_BATCH,
        "reward_kwargs": REWARD_KWARGS,
        "warmup_steps": WARMUP,
        "steps": TRL_STEPS,
    }
    settle()
    with MemorySampler() as sampler:
        run = run_trl(python, spec)
    run["machine_peak_added_mb"] = sampler.peak_added_mb
    return run


def _pad_id(model: Path) -> int:
    from transformers import AutoTokenizer

    pad = AutoTokenizer.from_pretrained(model).pad_token_id
    return 0 if pad is None else int(pad)


def _mean_length(records: list[dict[str, Any]]) -> float:
    values = [r["response_length/mean"] for r in records if "response_length/mean" in r]
    return sum(values) / len(values) if values else float("nan")


def bench_trl_real(s: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from grpo_dist.models.gguf import ensure_smollm2

    python = ensure_trl_venv()
    model = ensure_smollm2()
    train, evals = ensure_chat_data()
    samples = NUM_PROMPTS * GROUP
    figures: list[dict[str, Any]] = []
    runs: dict[str, Any] = {}
    for dtype in s.trl_dtypes:
        run_dir = Path(tempfile.mkdtemp(prefix="gd-bench-run-"))
        cfg = load_config(
            REPO_ROOT / "configs" / "smollm2_135m_instruct.yaml",
            workload_overrides(s, model, train, evals, run_dir, dtype),
        )
        ours = _grpo_dist(s, cfg, run_dir)
        if dtype == "float32":  # the ideal step trains in float32
            ours["ideal"] = _ideal(s, cfg, model, ours["prompts"], _pad_id(model))
        theirs = {ckpt: _trl(python, cfg, model, train, dtype, ckpt, s) for ckpt in s.trl_checkpointing}
        phases = e2e_phases(ours["records"])
        my_peak = ours["machine_peak_added_mb"]
        runs[dtype] = {
            "grpo_dist_config": cfg.to_dict(),
            "grpo_dist_phases_s": phases,
            "grpo_dist_steps": ours["records"],
            "grpo_dist_peak_rss_mb": ours["peak_rss_mb"],
            "grpo_dist_machine_peak_added_mb": my_peak,
            "ideal_steps": ours.get("ideal", []),
            "trl": {f"gradient_checkpointing={k}": v for k, v in theirs.items()},
        }
        split = ", ".join(f"{k} {phases[k]:.1f}" for k in ("rollout", "train", "sync", "probe", "idle"))
        for ckpt, run in theirs.items():
            trl_s = best(run["step_s"][run["warmup_steps"] :])
            gen = best(run["generate_s"][run["warmup_steps"] :])
            trl_len = run["mean_completion_length"][run["warmup_steps"] :]
            label = "TRL defaults (gradient checkpointing on)" if ckpt else "gradient checkpointing off"
            figures.append(
                _figure(
                    name=f"train step, {dtype}, vs TRL {run.get('trl_version', TRL_VERSION)}: {label}",
                    unit="samples/s",
                    value=samples / phases["step"],
                    bound=samples / trl_s,
                    bound_name="TRL GRPOTrainer, same workload",
                    goal=GOAL,
                    note=(
                        f"{samples} samples/step; grpo-dist {phases['step']:.1f} s/step ({split}), mean answer "
                        f"{_mean_length(ours['records']):.0f} tokens; TRL {trl_s:.1f} s/step (generate {gen:.1f}), "
                        f"mean answer {sum(trl_len) / max(1, len(trl_len)):.0f} tokens; memory added: grpo-dist "
                        f"{my_peak / 1024:.1f} GB, TRL {run['machine_peak_added_mb'] / 1024:.1f} GB"
                    ),
                    details={"grpo_dist_step_s": [r["timing/step_s"] for r in ours["records"]], "trl_step_s": trl_s},
                )
            )
            figures.append(
                _figure(
                    name=f"peak memory added, {dtype}, vs TRL: {label}",
                    unit="MB",
                    value=my_peak,
                    bound=run["machine_peak_added_mb"],
                    bound_name="TRL GRPOTrainer, same workload",
                    higher_is_better=False,
                    goal=round(1 / 1.5, 3),
                    note=(
                        "the machine's used memory above its level before the run started (model loading included), "
                        "sampled every 0.1 s; "
                        "grpo-dist per process (MB): "
                        f"{json.dumps({k: round(v) for k, v in ours['peak_rss_mb'].items()})}"
                        f"; TRL's process {run.get('peak_rss_mb', float('nan')):.0f} MB"
                    ),
                )
            )
        if ours.get("ideal"):
            ideal = min(ours["ideal"], key=lambda r: r["step_s"])
            figures.append(
                _figure(
                    name=f"train step, {dtype}, vs the ideal step",
                    unit="samples/s",
                    value=samples / phases["step"],
                    bound=samples / ideal["step_s"],
                    bound_name="ideal synchronous step (raw vLLM + plain torch on packed tokens)",
                    goal=0.9,
                    note=(
                        f"grpo-dist {phases['step']:.1f} s ({split}); ideal {ideal['step_s']:.1f} s = generate "
                        f"{ideal['generate_s']:.1f}, train {ideal['train_s']:.1f}, reload {ideal['reload_s']:.1f}; "
                        f"ideal answers {ideal['tokens'] / samples:.0f} tokens on average"
                    ),
                )
            )
    config = {**model_facts(model), "samples_per_step": samples, "trl_venv": "bench-venvs/trl-" + TRL_VERSION}
    return {**config, "runs": runs}, figures
