"""Where each role's actors go: the resource plan as placement-group bundles, per-node fit checks, and the
scheduling strategy of each actor.

- rollout engines: one bundle per engine holding its ``tensor_parallel_size`` GPUs, so an engine's TP
  workers are packed on one node; engines are spread across nodes (``SPREAD``).
- learner ranks: one GPU bundle per rank, packed (``PACK``) so their collectives stay on as few nodes as
  possible.
- colocated (``cluster.colocate``): engine i and learner rank i share bundle i (one GPU), half a GPU each.
- on CPU the same shapes with CPUs only.

``check_resources`` refuses a request the cluster can never hold before any placement group exists, and
every placement group is awaited with a deadline: an impossible request fails at once saying what was asked
and what is available, never as a hang. ``fit_problems`` is pure (a list of node resource dicts in,
messages out) so the same check serves a local run (``ray.nodes()``) and ``grpo-dist submit`` (the
cluster's state API) before any placement group exists.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from grpo_dist.config import Config


@dataclass(frozen=True)
class RoleSpec:
    role: str
    bundles: tuple[dict[str, float], ...]
    strategy: str
    actor_cpus: float
    actor_gpus: float

    def total(self, resource: str) -> float:
        return sum(b.get(resource, 0.0) for b in self.bundles)


def role_specs(cfg: Config, device: str, *, with_learner: bool = True) -> dict[str, RoleSpec]:
    """The ``rollout`` and ``learner`` roles' bundles (a colocated run has one shared spec for both;
    ``with_learner=False``, for evaluation, only the engines)."""
    specs = _role_specs(cfg, device)
    return specs if with_learner else {"rollout": specs["rollout"]}


def reward_cpus(cfg: Config) -> float:
    return cfg.reward.num_workers * cfg.cluster.num_cpus_per_reward_worker


def total_cpus(specs: dict[str, RoleSpec], extra_cpus: float = 0.0) -> float:
    unique = {id(s.bundles): s for s in specs.values()}.values()
    return sum(s.total("CPU") for s in unique) + extra_cpus


def _role_specs(cfg: Config, device: str) -> dict[str, RoleSpec]:
    r, lrn, c = cfg.rollout, cfg.learner, cfg.cluster
    gpu = device == "cuda"
    if gpu and c.colocate:
        bundle = {"CPU": c.num_cpus_per_engine + c.num_cpus_per_rank, "GPU": 1.0}
        shared = (bundle,) * lrn.num_ranks
        return {
            "rollout": RoleSpec("colocated", shared, "PACK", c.num_cpus_per_engine, 0.5),
            "learner": RoleSpec("colocated", shared, "PACK", c.num_cpus_per_rank, 0.5),
        }
    engine = {"CPU": c.num_cpus_per_engine} | ({"GPU": float(r.tensor_parallel_size)} if gpu else {})
    rank = {"CPU": c.num_cpus_per_rank} | ({"GPU": 1.0} if gpu else {})
    return {
        "rollout": RoleSpec(
            "rollout",
            (engine,) * r.num_engines,
            "SPREAD" if gpu else "PACK",
            c.num_cpus_per_engine,
            float(r.tensor_parallel_size) if gpu else 0.0,
        ),
        "learner": RoleSpec("learner", (rank,) * lrn.num_ranks, "PACK", c.num_cpus_per_rank, 1.0 if gpu else 0.0),
    }


def fit_problems(specs: dict[str, RoleSpec], nodes: list[dict[str, float]], *, extra_cpus: float = 0.0) -> list[str]:
    """Why the roles can never be placed on ``nodes`` (each node's total resources); empty if they can.

    Checks the totals (CPUs, GPUs) and that every bundle fits on at least one node (a bundle never spans
    nodes: an engine asking for 8 GPUs cannot run on 4-GPU nodes, whatever the cluster's total).
    """
    unique = {id(s.bundles): s for s in specs.values()}.values()  # a colocated spec is shared
    problems = []
    for resource in ("CPU", "GPU"):
        asked = total_cpus(specs, extra_cpus) if resource == "CPU" else sum(s.total(resource) for s in unique)
        have = sum(n.get(resource, 0.0) for n in nodes)
        if asked > have:
            parts = " + ".join(f"{s.role} {len(s.bundles)} x {s.bundles[0].get(resource, 0.0):g}" for s in unique)
            extra = f" + reward workers {extra_cpus:g}" if resource == "CPU" and extra_cpus else ""
            problems.append(f"{resource}s: asked {asked:g} ({parts}{extra}), the cluster has {have:g}")
    largest = {res: max((n.get(res, 0.0) for n in nodes), default=0.0) for res in ("CPU", "GPU")}
    for spec in unique:
        bundle = spec.bundles[0]
        too_big = [res for res, amount in bundle.items() if amount > largest.get(res, 0.0)]
        if too_big:
            problems.append(
                f"{spec.role}: each bundle asks {bundle} but the largest node has "
                f"{ {res: largest[res] for res in too_big} } (a bundle cannot span nodes)"
            )
    return problems


def live_nodes() -> list[dict[str, float]]:
    """Total resources of each alive node of the connected Ray cluster."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def check_resources(specs: dict[str, RoleSpec], extra_cpus: float) -> None:
    """Refuse a request the cluster can never hold, before creating any placement group."""
    problems = fit_problems(specs, live_nodes(), extra_cpus=extra_cpus)
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


class RolePlacement:
    """A role's placement group, created with a deadline, and the strategy for the actor of each bundle."""

    def __init__(self, spec: RoleSpec, *, timeout_s: float, pg: Any = None) -> None:
        self.spec = spec
        self.pg = pg or placement_group(
            list(spec.bundles), spec.strategy, name=f"grpo-dist-{spec.role}", timeout_s=timeout_s
        )
        self.owns_pg = pg is None

    def options(self, index: int) -> dict[str, Any]:
        """``actor.options(**...)`` for the actor placed in bundle ``index``."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return {
            "num_cpus": self.spec.actor_cpus,
            "num_gpus": self.spec.actor_gpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.pg, placement_group_bundle_index=index
            ),
        }

    def remove(self) -> None:
        if self.owns_pg:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.pg)


def place_roles(specs: dict[str, RoleSpec], *, timeout_s: float) -> dict[str, RolePlacement]:
    """Placement groups for the roles in ``specs`` (one shared group when colocated)."""
    timeout = timeout_s
    rollout = RolePlacement(specs["rollout"], timeout_s=timeout)
    if "learner" not in specs:
        return {"rollout": rollout}
    if specs["learner"].bundles is specs["rollout"].bundles:
        return {"rollout": rollout, "learner": RolePlacement(specs["learner"], timeout_s=timeout, pg=rollout.pg)}
    return {"rollout": rollout, "learner": RolePlacement(specs["learner"], timeout_s=timeout)}
