"""``bench sync``: seconds for ``WeightSync`` to publish the weights vs one raw transfer of the same bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grpo_dist.bench.baselines import GlooPeer, ObjectPeer, RawVllm
from grpo_dist.bench.common import (
    Settings,
    bench_config,
    bench_model,
    engine_settings,
    model_facts,
    per_model,
    private_ray,
    settle,
    start_actor,
)
from grpo_dist.bench.records import best, figure

# ---------------------------------------------------------------------------------------------------- sync


def _sync_model(s: Settings, model: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from grpo_dist.learner.group import LearnerGroup
    from grpo_dist.placement import RolePlacement, role_specs

    path = bench_model(model)
    facts = model_facts(path)
    common = ["algo.kl_coef=0.0", "rollout.ignore_eos=true"]
    measured: dict[tuple[int, int, str, bool], list[float]] = {}
    plan: dict[str, int] = {}
    with private_ray(verbose=s.verbose):
        for z in s.sync_zero_stages:
            cfg = bench_config(path, [*common, f"learner.zero_stage={z}"])
            placement = RolePlacement(role_specs(cfg, "cpu")["learner"], timeout_s=120)
            learners = LearnerGroup(cfg, placement=placement, model_path=str(path), device="cpu")
            try:
                for n in s.sync_engines:
                    measured |= _sync_times(s, path, [*common, f"learner.zero_stage={z}"], learners, n, z, plan)
            finally:
                learners.shutdown()
        # the bounds: one flat transfer of the same bytes between plain processes
        gloo = {n: _gloo_bound(plan["bytes"], n, s.reps) for n in s.sync_engines}
        objstore = {n: _object_store_bound(plan["bytes"], n, s.reps) for n in s.sync_engines}
        reload = _reload_bound(path, s.reps)
    nbytes, nbuckets = plan["bytes"], plan["buckets"]
    model_config = {
        **facts,
        "bytes": nbytes,
        "buckets": nbuckets,
        "zero_stages": list(s.sync_zero_stages),
        "bucket_size_mb": bench_config(path, []).sync.bucket_size_mb,
    }
    gb = nbytes / 1e9
    figures = []
    for (z, n, transport, verify), times in measured.items():
        if not verify:
            continue
        t = best(times)
        unverified = measured[(z, n, transport, False)]
        details = {
            "seconds": times,
            "seconds_without_verify": unverified,
            "bound_gloo_seconds": gloo[n],
            "bound_object_store_seconds": objstore[n],
            "raw_vllm_reload_seconds": reload,
            "bytes": nbytes,
            "buckets": nbuckets,
        }
        note = (
            f"{t * 1000:.1f} ms per sync ({nbuckets} bucket{'s' if nbuckets > 1 else ''}, {nbytes / 1e6:.1f} MB); "
            f"without checksums (sync.verify=false) {best(unverified) * 1000:.1f} ms = "
            f"{gb / best(unverified):.2f} GB/s"
        )
        base = {"benchmark": "sync", "model": model, "unit": "GB/s", "value": gb / t, "details": details}
        name = f"WeightSync {transport}, ZeRO-{z}, {n} engine{'s' if n > 1 else ''}"
        figures.append(
            figure(
                **base,
                name=name,
                bound=gb / best(gloo[n]),
                bound_name=f"one raw gloo broadcast, {n + 1} processes",
                note=note,
            )
        )
        if transport == "object_store":
            figures.append(
                figure(**base, name=name, bound=gb / best(objstore[n]), bound_name=f"one raw ray.put + {n} x ray.get")
            )
        transfer = best(gloo[n]) if transport == "broadcast" else best(objstore[n])
        figures.append(
            figure(
                **base,
                name=name,
                bound=gb / (transfer + best(reload)),
                bound_name=f"the raw transfer above + raw vLLM reload_weights ({best(reload) * 1000:.1f} ms)",
            )
        )
    return model_config, figures


def _reload_bound(path: Path, reps: int) -> list[float]:
    """Seconds of a raw in-process vLLM weight reload of the model, engine settings as in the pool."""
    import ray

    from grpo_dist import cluster
    from grpo_dist.rollout.engine import engine_env

    cfg = bench_config(path, [])
    engine = engine_settings(cfg, path, cfg.data.max_prompt_length + cfg.data.max_response_length)
    per_engine = int(cfg.cluster.num_cpus_per_engine)
    env = engine_env(device="cpu", cpu_ids=cluster.cpu_ids_for(0, per_engine))
    raw = start_actor(RawVllm, num_cpus=per_engine, env=env, **engine)
    try:
        return ray.get(raw.reload_seconds.remote(reps + 1))
    finally:
        ray.kill(raw)


def _sync_times(
    s: Settings, path: Path, overrides: list[str], learners: Any, n: int, z: int, plan: dict[str, int]
) -> dict[tuple[int, int, str, bool], list[float]]:
    """Seconds per ``WeightSync.sync`` to a pool of ``n`` engines, per transport, with and without the
    checksums."""
    from grpo_dist.placement import RolePlacement, role_specs
    from grpo_dist.rollout.pool import EnginePool
    from grpo_dist.sync.manager import WeightSync

    cfg_n = bench_config(path, [*overrides, f"rollout.num_engines={n}"])
    pool = EnginePool(
        cfg_n,
        placement=RolePlacement(role_specs(cfg_n, "cpu", with_learner=False)["rollout"], timeout_s=120),
        model_path=str(path),
        device="cpu",
        max_model_len=cfg_n.data.max_prompt_length + cfg_n.data.max_response_length,
    )
    out: dict[tuple[int, int, str, bool], list[float]] = {}
    try:
        pool.wait_ready()
        version = 0
        for transport in ("broadcast", "object_store"):
            for verify in (True, False):
                cfg_t = bench_config(
                    path,
                    [
                        *overrides,
                        f"rollout.num_engines={n}",
                        f"sync.transport={transport}",
                        f"sync.verify={str(verify).lower()}",
                    ],
                )
                ws = WeightSync(cfg_t, learners, pool, device="cpu")
                plan["bytes"], plan["buckets"] = ws.num_bytes, len(ws.plan)
                version += 1
                ws.sync(version)  # warm-up
                times = []
                for _ in range(s.reps + 1):
                    settle()
                    version += 1
                    times.append(ws.sync(version)["timing/sync_s"])
                out[(z, n, transport, verify)] = times
    finally:
        pool.shutdown()
    return out


def _gloo_bound(nbytes: int, receivers: int, reps: int) -> list[float]:
    """Seconds of one gloo broadcast of ``nbytes`` from one process to ``receivers`` others."""
    import ray

    peers = [start_actor(GlooPeer, num_cpus=1) for _ in range(receivers + 1)]
    try:
        host, port = ray.get(peers[0].address.remote())
        ray.get([p.join.remote(host, port, r, receivers + 1) for r, p in enumerate(peers)])
        per_rank = ray.get([p.broadcast.remote(nbytes // 4, reps + 1) for p in peers])
        return [max(ts) for ts in zip(*per_rank[1:])]  # a broadcast ends when its last receiver has it
    finally:
        for p in peers:
            ray.kill(p)


def _object_store_bound(nbytes: int, receivers: int, reps: int) -> list[float]:
    """Seconds of one ``ray.put`` of ``nbytes`` plus the slowest of ``receivers`` concurrent gets."""
    import ray

    sender = start_actor(ObjectPeer, num_cpus=1, nbytes=nbytes)
    others = [start_actor(ObjectPeer, num_cpus=1, nbytes=nbytes) for _ in range(receivers)]
    try:
        times = []
        for rep in range(reps + 2):
            refs, put_s = ray.get(sender.put.remote())
            get_s = ray.get([r.get.remote(refs) for r in others])
            del refs
            if rep:  # the first is a warm-up
                times.append(put_s + max(get_s))
        return times
    finally:
        for a in [sender, *others]:
            ray.kill(a)


def bench_sync(s: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return per_model(s.sync_models, _sync_model, s)
