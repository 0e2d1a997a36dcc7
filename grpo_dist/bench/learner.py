"""``bench learner``: trained tokens/s of the DeepSpeed ``LearnerGroup`` vs plain single-process torch."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from grpo_dist.bench.baselines import PlainTorch
from grpo_dist.bench.common import (
    Settings,
    all_cores,
    bench_config,
    bench_model,
    interleaved,
    model_facts,
    per_model,
    private_ray,
    start_actor,
    synthetic_batch,
)
from grpo_dist.bench.records import best, figure

# ------------------------------------------------------------------------------------------------- learner


def _learner_model(s: Settings, model: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import ray

    from grpo_dist.learner.group import LearnerGroup
    from grpo_dist.placement import RolePlacement, role_specs

    n_prompts, g, plen, rlen = s.learner_prompts, s.group_size, s.learner_prompt_len, s.learner_response_len
    path = bench_model(model)
    facts = model_facts(path)
    batch = synthetic_batch(n_prompts * g, plen, rlen, facts["vocab_size"], seed=0)
    tokens = float(batch.attention_mask.sum())
    overrides = [
        "algo.kl_coef=0.0",
        f"data.train_batch_size={n_prompts}",
        f"learner.mini_batch_size={n_prompts}",
        f"rollout.num_generations={g}",
        f"learner.micro_batch_size={s.micro_batch_size}",
        f"data.max_prompt_length={plen}",
        f"data.max_response_length={rlen}",
    ]
    cfgs = {z: bench_config(path, [*overrides, f"learner.zero_stage={z}"]) for z in s.zero_stages}
    base = next(iter(cfgs.values()))
    lc = base.learner
    threads = len(all_cores())
    model_config = {
        **facts,
        "sequences": n_prompts * g,
        "tokens_per_step": tokens,
        "prompt_len": plen,
        "response_len": rlen,
        "micro_batch_size": s.micro_batch_size,
        "ranks": lc.num_ranks,
        "threads_per_rank": int(base.cluster.num_cpus_per_rank),
        "plain_torch_threads": threads,
        "optimizer_steps_per_call": 1,
        "config": base.to_dict(),
    }
    with private_ray(verbose=s.verbose):
        plain = start_actor(PlainTorch, num_cpus=threads, model_path=str(path), lr=lc.lr, threads=threads, seed=0)
        batch_ref = ray.put(batch)
        # every group stays up (idle while the others run) so that the runs can alternate
        groups = {}
        try:
            for z, cfg in cfgs.items():
                placement = RolePlacement(role_specs(cfg, "cpu")["learner"], timeout_s=120)
                groups[z] = LearnerGroup(cfg, placement=placement, model_path=str(path), device="cpu")

            def plain_run(_rep: int) -> dict[str, float]:
                return {"seconds": ray.get(plain.train.remote(batch_ref, s.micro_batch_size, lc.max_grad_norm))}

            def group_run(z: int, rep: int) -> dict[str, float]:
                t0 = time.perf_counter()
                groups[z].train(batch, step=rep + 1)
                return {"seconds": time.perf_counter() - t0}

            runs: dict[str, Callable[[int], dict[str, float]]] = {"plain": plain_run}
            runs |= {f"zero{z}": functools.partial(group_run, z) for z in cfgs}
            samples = interleaved(runs, s.reps)
        finally:
            for group in groups.values():
                group.shutdown()
            ray.kill(plain)
    plain_s = [x["seconds"] for x in samples["plain"]]
    plain_tps = tokens / best(plain_s)
    figures = []
    for z in cfgs:
        times = [x["seconds"] for x in samples[f"zero{z}"]]
        figures.append(
            figure(
                benchmark="learner",
                model=model,
                name=f"LearnerGroup ZeRO-{z}, {lc.num_ranks} ranks x {int(base.cluster.num_cpus_per_rank)} thread",
                unit="trained tokens/s",
                value=tokens / best(times),
                bound=plain_tps,
                bound_name=f"plain torch, 1 process x {threads} threads",
                note=(
                    f"a step takes {best(times):.2f} s (range {min(times):.2f}-{max(times):.2f}) vs plain "
                    f"{best(plain_s):.2f} s (range {min(plain_s):.2f}-{max(plain_s):.2f})"
                ),
                details={"seconds": times, "plain_seconds": plain_s, "tokens_per_step": tokens},
            )
        )
    return model_config, figures


def bench_learner(s: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return per_model(s.learner_models, _learner_model, s)
