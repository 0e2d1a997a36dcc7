"""``bench lora``: what LoRA costs and saves, against full fine-tuning of the same model in the same run.

* a weight sync: bytes and seconds for ``adapter`` (only the adapter travels; the engine loads it as a new
  adapter), ``merged`` (``W0 + s * B @ A`` per layer, then the whole model) and full fine-tuning;
* a learner step on the same batch: seconds, and each rank's peak resident memory (``VmHWM``: the
  optimizer state and gradients of the frozen base are gone with LoRA);
* an engine: generated tokens/s serving base + adapter (vLLM's LoRA kernels) vs the plain model.

Every figure's bound is full fine-tuning (or the plain engine), measured in the same run, interleaved.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from grpo_dist.bench.common import (
    Settings,
    bench_config,
    bench_model,
    interleaved,
    model_facts,
    per_model,
    private_ray,
    settle,
    synthetic_batch,
    synthetic_prompts,
)
from grpo_dist.bench.memory import peak_rss_mb
from grpo_dist.bench.records import best, figure

RANK, ALPHA = 16, 32
VARIANTS = {
    "full": [],
    "merged": [f"model.lora.rank={RANK}", f"model.lora.alpha={ALPHA}", "model.lora.sync=merged"],
    "adapter": [f"model.lora.rank={RANK}", f"model.lora.alpha={ALPHA}", "model.lora.sync=adapter"],
}


def _lora_model(s: Settings, model: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import ray

    from grpo_dist.learner.group import LearnerGroup
    from grpo_dist.placement import RolePlacement, role_specs
    from grpo_dist.rollout.engine import SamplingSpec
    from grpo_dist.rollout.pool import EnginePool
    from grpo_dist.sync.manager import WeightSync

    n_prompts, g, plen, rlen = s.learner_prompts, s.group_size, s.learner_prompt_len, s.learner_response_len
    path = bench_model(model)
    facts = model_facts(path)
    batch = synthetic_batch(n_prompts * g, plen, rlen, facts["vocab_size"], seed=0)
    common = [
        "algo.kl_coef=0.0",
        "rollout.num_engines=1",
        "rollout.ignore_eos=true",
        f"data.train_batch_size={n_prompts}",
        f"learner.mini_batch_size={n_prompts}",
        f"rollout.num_generations={g}",
        f"learner.micro_batch_size={s.micro_batch_size}",
        f"data.max_prompt_length={plen}",
        f"data.max_response_length={rlen}",
    ]
    cfgs = {name: bench_config(path, [*common, *extra]) for name, extra in VARIANTS.items()}
    max_model_len = plen + rlen
    out: dict[str, Any] = {}
    with private_ray(verbose=s.verbose):
        groups: dict[str, Any] = {}
        pools: dict[str, Any] = {}
        try:
            for name, cfg in cfgs.items():
                placement = RolePlacement(role_specs(cfg, "cpu")["learner"], timeout_s=120)
                groups[name] = LearnerGroup(cfg, placement=placement, model_path=str(path), device="cpu")
            for name in ("full", "adapter"):  # a plain engine (full and merged weights) and a LoRA-serving one
                cfg = cfgs[name]
                placement = RolePlacement(role_specs(cfg, "cpu", with_learner=False)["rollout"], timeout_s=120)
                pools[name] = EnginePool(
                    cfg, placement=placement, model_path=str(path), device="cpu", max_model_len=max_model_len
                )
                pools[name].wait_ready()

            def train(name: str, rep: int) -> dict[str, float]:
                t0 = time.perf_counter()
                groups[name].train(batch, step=rep + 1)
                return {"seconds": time.perf_counter() - t0}

            steps = interleaved({n: lambda r, n=n: train(n, r) for n in ("full", "merged")}, s.reps)
            infos = {n: ray.get([a.info.remote() for a in groups[n].actors], timeout=60) for n in ("full", "merged")}
            out["peak_rss_mb"] = {n: max(peak_rss_mb(int(i["pid"])) or 0.0 for i in v) for n, v in infos.items()}
            out["train_seconds"] = {n: [x["seconds"] for x in v] for n, v in steps.items()}

            out["sync_seconds"], out["sync_bytes"] = {}, {}
            for name, cfg in cfgs.items():  # each sync needs its own group on the engine: one variant at a time
                pool = pools["adapter" if name == "adapter" else "full"]
                sync = WeightSync(cfg, groups[name], pool, device="cpu")
                version = s.reps + 1
                sync.sync(version)  # warm-up
                times = []
                for _ in range(s.reps + 1):
                    settle()
                    version += 1
                    times.append(sync.sync(version)["timing/sync_s"])
                out["sync_seconds"][name], out["sync_bytes"][name] = times, sync.num_bytes

            prompts = synthetic_prompts(s.rollout_prompts, s.rollout_prompt_len, facts["vocab_size"], seed=0)
            spec = SamplingSpec(n=g, max_tokens=rlen, temperature=1.0, ignore_eos=True)

            def generate(name: str, rep: int) -> dict[str, float]:
                t0 = time.perf_counter()
                done = pools[name].generate_all(prompts, spec, step=rep, stream="bench", min_version=0)
                tokens = sum(len(c.token_ids) for grp in done for c in grp.completions)
                return {"seconds": time.perf_counter() - t0, "tokens": float(tokens)}

            gen: dict[str, Callable[[int], dict[str, float]]] = {n: lambda r, n=n: generate(n, r) for n in pools}
            rollouts = interleaved(gen, s.reps)
            out["tokens_per_s"] = {n: [x["tokens"] / x["seconds"] for x in v] for n, v in rollouts.items()}
        finally:
            for part in [*groups.values(), *pools.values()]:
                part.shutdown()
    model_config = {
        **facts,
        "lora_rank": RANK,
        "lora_alpha": ALPHA,
        "target_modules": "all-linear",
        "sequences": n_prompts * g,
        "prompt_len": plen,
        "response_len": rlen,
        "ranks": cfgs["full"].learner.num_ranks,
        "zero_stage": cfgs["full"].learner.zero_stage,
        "config": cfgs["adapter"].to_dict(),
    }
    return model_config, _figures(model, out)


def _figures(model: str, out: dict[str, Any]) -> list[dict[str, Any]]:
    bench = {"benchmark": "lora", "model": model, "details": out}
    sync_s, sync_b = out["sync_seconds"], out["sync_bytes"]
    full = {"bound": best(sync_s["full"]), "bound_name": f"full fine-tuning's sync ({sync_b['full'] / 1e6:.1f} MB)"}
    figures = [
        figure(
            **bench,
            **full,
            name=f"LoRA sync: {name}",
            unit="s per sync",
            value=best(sync_s[name]),
            higher_is_better=False,
            note=f"{sync_b[name] / 1e6:.2f} MB per sync ({sync_b[name] / sync_b['full']:.1%} of the full weights)",
        )
        for name in ("adapter", "merged")
    ]
    steps, rss = out["train_seconds"], out["peak_rss_mb"]
    figures.append(
        figure(
            **bench,
            name=f"LoRA learner step (rank {RANK})",
            unit="s per step",
            value=best(steps["merged"]),
            bound=best(steps["full"]),
            bound_name="full fine-tuning's step",
            higher_is_better=False,
        )
    )
    figures.append(
        figure(
            **bench,
            name="LoRA learner peak memory per rank",
            unit="MB (VmHWM)",
            value=rss["merged"],
            bound=rss["full"],
            bound_name="full fine-tuning's",
            higher_is_better=False,
        )
    )
    tps = out["tokens_per_s"]
    figures.append(
        figure(
            **bench,
            name="engine serving base + LoRA adapter",
            unit="generated tokens/s",
            value=max(tps["adapter"]),
            bound=max(tps["full"]),
            bound_name="the same engine settings without LoRA",
        )
    )
    return figures


def bench_lora(s: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return per_model(s.sync_models, _lora_model, s)
