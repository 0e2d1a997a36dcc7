"""The engine pool: N ``RolloutEngine`` actors, data-parallel over prompts.

A prompt's whole group goes to one engine (its G requests share the prompt's KV blocks through prefix
caching). Prompts are balanced across engines by estimated work (prompt + response tokens x G), and
results stream back per chunk as engines finish, so reward scoring starts before the slowest engine
is done.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Iterator
from typing import Any

from grpo_dist import cluster
from grpo_dist.cluster import wait_all
from grpo_dist.config import Config
from grpo_dist.rollout.engine import SamplingSpec, create_engine_actor, engine_env
from grpo_dist.types import Prompt, RolloutGroup

logger = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """An engine failed or missed its deadline; the message names it."""


def balance(costs: list[int], num_bins: int) -> list[list[int]]:
    """Indices of ``costs`` split into ``num_bins`` lists of near-equal total cost (longest first, each to
    the least-loaded bin); each bin keeps its indices in ascending order."""
    bins: list[list[int]] = [[] for _ in range(num_bins)]
    heap = [(0, b) for b in range(num_bins)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, b = heapq.heappop(heap)
        bins[b].append(i)
        heapq.heappush(heap, (load + costs[i], b))
    return [sorted(b) for b in bins]


def chunk(items: list[Any], num_chunks: int) -> list[list[Any]]:
    size = -(-len(items) // max(1, num_chunks))
    return [items[i : i + size] for i in range(0, len(items), size)] if items else []


class EnginePool:
    def __init__(
        self, cfg: Config, *, model_path: str, device: str, max_model_len: int, initial_version: int = 0
    ) -> None:
        """Start the engine actors (without waiting for them: see ``wait_ready``)."""
        self.cfg = cfg
        r = cfg.rollout
        plan = cluster.resource_plan(cfg, device)
        bundle = {"CPU": plan.cpus_per_engine} | ({"GPU": float(plan.gpus_per_engine)} if plan.gpus_per_engine else {})
        strategy = "SPREAD" if device == "cuda" else "PACK"
        self.pg = cluster.placement_group(
            [bundle] * r.num_engines, strategy, name="grpo-dist-rollout", timeout_s=cfg.cluster.placement_timeout_s
        )
        self.names = [f"engine {i}" for i in range(r.num_engines)]
        self.actors = [
            create_engine_actor(
                num_cpus=plan.cpus_per_engine,
                num_gpus=plan.gpus_per_engine if r.tensor_parallel_size == 1 else 0,
                env=engine_env(
                    device=device, cpu_ids=cluster.cpu_ids_for(i, plan.cpus_per_engine) if device == "cpu" else None
                ),
                scheduling=cluster.bundle_strategy(self.pg, i),
                engine_index=i,
                model_path=model_path,
                dtype=_engine_dtype(cfg.model.dtype, device),
                device=device,
                max_model_len=max_model_len,
                seed=cfg.trainer.seed,
                tensor_parallel_size=r.tensor_parallel_size,
                kv_cache_gib=r.kv_cache_gib,
                gpu_memory_utilization=r.gpu_memory_utilization,
                enforce_eager=r.enforce_eager,
                initial_version=initial_version,
            )
            for i in range(r.num_engines)
        ]

    def wait_ready(self) -> list[dict[str, Any]]:
        return self.call_all("info", timeout_s=self.cfg.rollout.request_timeout_s, what="engine start-up")

    @property
    def num_engines(self) -> int:
        return len(self.actors)

    def call_all(self, method: str, *args: Any, timeout_s: float, what: str, **kwargs: Any) -> list[Any]:
        refs = [getattr(a, method).remote(*args, **kwargs) for a in self.actors]
        return wait_all(refs, timeout_s=timeout_s, what=what, names=self.names)

    def generate(
        self,
        prompts: list[Prompt],
        spec: SamplingSpec,
        *,
        step: int,
        stream: str,
        min_version: int,
        chunks_per_engine: int = 1,
    ) -> Iterator[list[RolloutGroup]]:
        """Yield lists of groups as engines finish them; every prompt's group arrives exactly once."""
        import ray

        costs = [(len(p.token_ids) + spec.max_tokens) * spec.n for p in prompts]
        seen: dict[int, int] = {}
        occurrences = []
        for p in prompts:
            occurrences.append(seen.get(p.prompt_id, 0))
            seen[p.prompt_id] = occurrences[-1] + 1
        pending: dict[Any, str] = {}
        for e, indices in enumerate(balance(costs, self.num_engines)):
            for part in chunk(indices, chunks_per_engine):
                ref = self.actors[e].generate.remote(
                    [prompts[i] for i in part],
                    spec,
                    run_seed=self.cfg.trainer.seed,
                    stream=stream,
                    step=step,
                    min_version=min_version,
                    batch_indices=part,
                    occurrences=[occurrences[i] for i in part],
                )
                pending[ref] = self.names[e]
        deadline = time.monotonic() + self.cfg.rollout.request_timeout_s
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                late = sorted(set(pending.values()))
                for ref in pending:
                    ray.cancel(ref)
                raise EngineError(
                    f"rollout of step {step}: no result within {self.cfg.rollout.request_timeout_s:g} s from "
                    f"{', '.join(late)}"
                )
            ref = ready[0]
            name = pending.pop(ref)
            try:
                yield ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                raise EngineError(f"rollout of step {step}: {name} died: {exc}") from exc
            except ray.exceptions.RayTaskError as exc:
                raise EngineError(f"rollout of step {step}: {name} failed: {exc}") from exc

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for a in self.actors:
            ray.kill(a, no_restart=True)
        remove_placement_group(self.pg)


def _engine_dtype(name: str, device: str) -> str:
    if name == "auto":
        return "bfloat16" if device == "cuda" else "float32"
    return name
