"""Ray start-up, resource checks and placement groups.

Every request is checked against what the cluster has before a placement group is created, and every
placement group is awaited with a deadline: an impossible request fails at once saying what was asked
and what is available, never as a hang.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any

from grpo_dist.config import Config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResourcePlan:
    """What each role asks for."""

    num_engines: int
    cpus_per_engine: float
    gpus_per_engine: int
    num_ranks: int
    cpus_per_rank: float
    gpus_per_rank: int
    num_reward_workers: int
    cpus_per_reward_worker: float

    @property
    def total_cpus(self) -> float:
        return (
            self.num_engines * self.cpus_per_engine
            + self.num_ranks * self.cpus_per_rank
            + self.num_reward_workers * self.cpus_per_reward_worker
        )

    @property
    def total_gpus(self) -> int:
        if self.gpus_per_engine == 0:
            return 0
        return self.num_engines * self.gpus_per_engine + self.num_ranks * self.gpus_per_rank


def resolve_device(cfg: Config) -> str:
    if cfg.cluster.device != "auto":
        return cfg.cluster.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resource_plan(cfg: Config, device: str, *, with_learner: bool = True) -> ResourcePlan:
    gpu = device == "cuda"
    c = cfg.cluster
    return ResourcePlan(
        num_engines=cfg.rollout.num_engines,
        cpus_per_engine=c.num_cpus_per_engine,
        gpus_per_engine=cfg.rollout.tensor_parallel_size if gpu else 0,
        num_ranks=cfg.learner.num_ranks if with_learner else 0,
        cpus_per_rank=c.num_cpus_per_rank,
        gpus_per_rank=1 if gpu and not c.colocate else 0,
        num_reward_workers=cfg.reward.num_workers,
        cpus_per_reward_worker=c.num_cpus_per_reward_worker,
    )


def init_ray(cfg: Config, plan: ResourcePlan) -> bool:
    """Start a private local Ray (``cluster.address: local``) or join an existing cluster; returns whether
    this call started it (and so should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}}
    if cfg.cluster.address == "local":
        # Actors of different phases take turns on the cores, so a local Ray offers at least as many
        # logical CPUs as the roles ask for, whatever the machine has.
        num_cpus = cfg.cluster.num_cpus or max(os.cpu_count() or 1, int(plan.total_cpus + 0.999))
        ray.init(
            address="local",
            dashboard_host="127.0.0.1",  # never exposed beyond this machine by default
            num_cpus=num_cpus,
            include_dashboard=False,
            runtime_env=env,
            log_to_driver=True,
            logging_level=logging.WARNING,
        )
    else:
        ray.init(address=cfg.cluster.address, runtime_env=env, logging_level=logging.WARNING)
    return True


def check_resources(plan: ResourcePlan) -> None:
    """Refuse a request the cluster can never hold, before creating any placement group."""
    import ray

    available = ray.cluster_resources()
    cpus, gpus = available.get("CPU", 0.0), available.get("GPU", 0.0)
    problems = []
    if plan.total_cpus > cpus:
        problems.append(
            f"CPUs: asked {plan.total_cpus:g} ({plan.num_engines} engines x {plan.cpus_per_engine:g} + "
            f"{plan.num_ranks} learner ranks x {plan.cpus_per_rank:g} + {plan.num_reward_workers} reward "
            f"workers x {plan.cpus_per_reward_worker:g}), the cluster has {cpus:g}"
        )
    if plan.total_gpus > gpus:
        problems.append(
            f"GPUs: asked {plan.total_gpus} ({plan.num_engines} engines x {plan.gpus_per_engine} + "
            f"{plan.num_ranks} learner ranks x {plan.gpus_per_rank}), the cluster has {gpus:g}"
        )
    if problems:
        raise ValueError("the cluster cannot hold this run:\n  " + "\n  ".join(problems))


def placement_group(bundles: list[dict[str, float]], strategy: str, *, name: str, timeout_s: float) -> Any:
    """Create a placement group and wait for it with a deadline."""
    import ray
    from ray.util.placement_group import placement_group as create
    from ray.util.placement_group import remove_placement_group

    # unique per run: several runs (a training run and an eval, two jobs) may share one cluster
    name = f"{name}-{uuid.uuid4().hex[:8]}"
    pg = create(bundles, strategy=strategy, name=name)
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise TimeoutError(
            f"placement group {name!r} ({len(bundles)} bundles of {bundles[0]}, {strategy}) was not placed within "
            f"{timeout_s:g} s; cluster resources: {ray.available_resources()}"
        ) from None
    return pg


def bundle_strategy(pg: Any, index: int) -> Any:
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=index)


def cpu_ids_for(index: int, count: float) -> list[int]:
    """Cores for the ``index``-th CPU engine on this machine, round-robin over the allowed cores."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    n = max(1, int(count))
    return [allowed[(index * n + k) % len(allowed)] for k in range(n)]


class ActorDiedError(RuntimeError):
    """An actor died while the driver waited on it; ``dead`` names which."""

    def __init__(self, message: str, *, dead: list[str]) -> None:
        super().__init__(message)
        self.dead = dead


def wait_all(refs: list[Any], *, timeout_s: float, what: str, names: list[str]) -> list[Any]:
    """``ray.get`` with a deadline that names whichever actors did not answer in time, or died."""
    import ray

    _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    if pending:
        late = [names[i] for i, r in enumerate(refs) if r in pending]
        for r in pending:
            ray.cancel(r, force=False)
        raise TimeoutError(f"{what}: no answer within {timeout_s:g} s from {', '.join(late)}")
    results, dead = [], []
    for name, ref in zip(names, refs, strict=True):
        try:
            results.append(ray.get(ref, timeout=1.0))
        except ray.exceptions.RayActorError:
            dead.append(name)
    if dead:
        raise ActorDiedError(f"{what}: {', '.join(dead)} died", dead=dead)
    return results
