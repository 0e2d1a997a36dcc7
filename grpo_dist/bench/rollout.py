"""``bench rollout``: generated tokens/s of the ``EnginePool`` vs raw ``vllm.LLM.generate``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from grpo_dist.bench.baselines import RawVllm
from grpo_dist.bench.common import (
    Settings,
    all_cores,
    bench_config,
    bench_model,
    engine_settings,
    interleaved,
    model_facts,
    per_model,
    private_ray,
    start_actor,
    synthetic_prompts,
)
from grpo_dist.bench.records import best, figure, fmt, ratio

# ------------------------------------------------------------------------------------------------- rollout


def _rollout_model(s: Settings, model: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import ray

    from grpo_dist import cluster
    from grpo_dist.placement import RolePlacement, role_specs
    from grpo_dist.rollout.engine import SamplingSpec, engine_env
    from grpo_dist.rollout.pool import EnginePool

    n_prompts, g, plen, rlen = s.rollout_prompts, s.group_size, s.rollout_prompt_len, s.rollout_response_len
    expected_tokens = n_prompts * g * rlen
    path = bench_model(model)
    facts = model_facts(path)
    cfgs = {n: bench_config(path, [f"rollout.num_engines={n}", "rollout.ignore_eos=true"]) for n in (1, 2)}
    cfg = cfgs[1]
    chunks = cfg.rollout.chunks_per_engine
    max_model_len = plen + rlen
    engine = engine_settings(cfg, path, max_model_len)
    prompts = synthetic_prompts(n_prompts, plen, facts["vocab_size"], seed=0)
    ids = [list(p.token_ids) for p in prompts]
    spec = SamplingSpec(n=g, max_tokens=rlen, temperature=cfg.rollout.temperature, ignore_eos=True)
    cores = all_cores()
    per_engine = int(cfg.cluster.num_cpus_per_engine)
    one_core = cluster.cpu_ids_for(0, per_engine)  # the cores grpo-dist binds engine slot 0 to
    model_config = {
        **facts,
        "prompts": n_prompts,
        "group_size": g,
        "prompt_len": plen,
        "response_len": rlen,
        "engine": {k: v for k, v in engine.items() if k != "model_path"},
        "chunks_per_engine": chunks,
        "cpus_per_engine": per_engine,
        "raw_1_engine_binding": one_core,
        "raw_all_cores_binding": cores,
        "config": cfg.to_dict(),
    }
    with private_ray(verbose=s.verbose):
        raw1 = start_actor(RawVllm, num_cpus=per_engine, env=engine_env(device="cpu", cpu_ids=one_core), **engine)
        raw_all = start_actor(RawVllm, num_cpus=len(cores), env=engine_env(device="cpu", cpu_ids=cores), **engine)
        pools = {
            n: EnginePool(
                c,
                placement=RolePlacement(role_specs(c, "cpu", with_learner=False)["rollout"], timeout_s=120),
                model_path=str(path),
                device="cpu",
                max_model_len=max_model_len,
            )
            for n, c in cfgs.items()
        }
        ray.get([raw1.ready.remote(), raw_all.ready.remote()])
        for p in pools.values():
            p.wait_ready()

        def pool_run(n: int, num_chunks: int, step: int) -> dict[str, float]:
            t0 = time.perf_counter()
            groups = pools[n].generate_all(
                prompts, spec, step=step, stream="bench", min_version=0, chunks_per_engine=num_chunks
            )
            tokens = sum(len(c.token_ids) for grp in groups for c in grp.completions)
            return {"seconds": time.perf_counter() - t0, "tokens": float(tokens)}

        def raw_run(actor: Any, per_sample: bool, step: int) -> dict[str, float]:
            return ray.get(actor.generate.remote(ids, g, rlen, spec.temperature, per_sample, step))

        runs: dict[str, Callable[[int], dict[str, float]]] = {
            "raw_same_requests": lambda r: raw_run(raw1, True, r),
            "raw_plain": lambda r: raw_run(raw1, False, r),
            "raw_all_cores": lambda r: raw_run(raw_all, False, r),
            "pool_1": lambda r: pool_run(1, chunks, r),
            "pool_1_one_chunk": lambda r: pool_run(1, 1, r),
            "pool_2": lambda r: pool_run(2, chunks, r),
        }
        samples = interleaved(runs, s.reps)
        for p in pools.values():
            p.shutdown()
    for name, results in samples.items():
        if any(x["tokens"] != expected_tokens for x in results):
            raise RuntimeError(f"rollout {name}: {[x['tokens'] for x in results]} tokens, expected {expected_tokens}")
    secs = {k: best([x["seconds"] for x in v]) for k, v in samples.items()}
    tps = {k: expected_tokens / secs[k] for k in samples}
    details = {
        "tokens_per_s": tps,
        "seconds_per_call": secs,
        "seconds_each_rep": {k: [x["seconds"] for x in v] for k, v in samples.items()},
        "tokens_per_call": expected_tokens,
        "reps": s.reps,
    }
    overhead_ms = 1000 * (secs["pool_1"] - secs["raw_same_requests"])
    one_chunk = ratio(tps["pool_1_one_chunk"], tps["raw_same_requests"])
    seeded = ratio(tps["raw_same_requests"], tps["raw_plain"])
    common = {"benchmark": "rollout", "model": model, "unit": "generated tokens/s", "details": details}
    figures = [
        figure(
            **common,
            name="EnginePool, 1 engine (1 core)",
            value=tps["pool_1"],
            bound=tps["raw_same_requests"],
            bound_name="raw vLLM, same requests, same core",
            goal=0.95,
            note=(
                f"a pool call takes {overhead_ms:+.0f} ms more than raw ({secs['raw_same_requests']:.2f} s); "
                f"with chunks_per_engine=1 instead of {chunks} the ratio is {fmt(one_chunk)}"
            ),
        ),
        figure(
            **common,
            name="EnginePool, 1 engine (1 core)",
            value=tps["pool_1"],
            bound=tps["raw_plain"],
            bound_name="raw vLLM, n=G unseeded, same core",
            note=f"raw vLLM with one seeded request per sample (as grpo-dist asks) runs at {fmt(seeded)}x n=G",
        ),
        figure(
            **common,
            name="EnginePool, 2 engines (1 core each)",
            value=tps["pool_2"],
            bound=tps["raw_all_cores"],
            bound_name=f"raw vLLM, 1 engine on {len(cores)} cores",
        ),
        figure(
            **common,
            name="scaling 1 -> 2 engines",
            value=tps["pool_2"],
            bound=2 * tps["pool_1"],
            bound_name="2 x EnginePool of 1 engine",
        ),
    ]
    return model_config, figures


def bench_rollout(s: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return per_model(s.rollout_models, _rollout_model, s)
