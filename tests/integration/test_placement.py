"""The resource plan on Ray's simulated multi-node cluster (3 nodes x 4 fake GPUs): engines' TP GPUs on one
node and engines spread, learner ranks packed, colocated engine/rank pairs sharing a GPU, each actor seeing
exactly its own GPUs; what cannot fit is refused before any placement group."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from grpo_dist.config import load_config
from grpo_dist.placement import fit_problems, place_roles, role_specs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fake_gpu_cluster() -> Iterator[list[dict[str, float]]]:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    for _ in range(3):
        cluster.add_node(num_cpus=8, num_gpus=4)
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    try:
        yield [dict(n["Resources"]) for n in ray.nodes() if n["Alive"]]
    finally:
        ray.shutdown()
        cluster.shutdown()


def _probe_cls() -> Any:
    import ray

    @ray.remote
    class Probe:
        def where(self) -> tuple[str, list[int], str]:
            ctx = ray.get_runtime_context()
            return ctx.get_node_id(), [int(g) for g in ray.get_gpu_ids()], os.environ.get("CUDA_VISIBLE_DEVICES", "")

    return Probe


def _place(cfg: Any) -> tuple[dict[str, Any], dict[str, list[tuple[str, list[int], str]]]]:
    import ray

    placements = place_roles(role_specs(cfg, "cuda"), timeout_s=60)
    probe = _probe_cls()
    where: dict[str, list[tuple[str, list[int], str]]] = {}
    actors = []
    for role, placement in placements.items():
        handles = [probe.options(**placement.options(i)).remote() for i in range(len(placement.spec.bundles))]
        actors += handles
        where[role] = ray.get([h.where.remote() for h in handles], timeout=60)
    for a in actors:
        ray.kill(a)
    for placement in placements.values():
        placement.remove()
    return placements, where


def _cfg(*overrides: str) -> Any:
    return load_config(
        None,
        [
            "cluster.device=cuda",
            "data.train_batch_size=8",
            "learner.mini_batch_size=8",
            "learner.micro_batch_size=2",
            *overrides,
        ],
    )


def test_engines_spread_tp_packed_ranks_packed(fake_gpu_cluster: list[dict[str, float]]) -> None:
    cfg = _cfg("rollout.num_engines=3", "rollout.tensor_parallel_size=2", "learner.num_ranks=4")
    assert fit_problems(role_specs(cfg, "cuda"), fake_gpu_cluster) == []
    _, where = _place(cfg)
    engines, ranks = where["rollout"], where["learner"]
    assert all(len(gpus) == 2 for _, gpus, _ in engines)  # an engine's TP GPUs, on its node
    assert all(len(visible.split(",")) == 2 for _, _, visible in engines)  # and exactly those are visible
    assert len({node for node, _, _ in engines}) == 3  # engines spread over the 3 GPU nodes
    assert all(len(gpus) == 1 for _, gpus, _ in ranks)
    assert len({node for node, _, _ in ranks}) == 2  # packed: 4 ranks on the 2 free GPUs of 2 nodes
    used = [(node, g) for node, gpus, _ in engines + ranks for g in gpus]
    assert len(used) == len(set(used)) == 10  # no GPU handed out twice


def test_colocated_engine_and_rank_share_a_gpu(fake_gpu_cluster: list[dict[str, float]]) -> None:
    cfg = _cfg("cluster.colocate=true", "rollout.num_engines=4", "learner.num_ranks=4")
    _, where = _place(cfg)
    for (e_node, e_gpus, _), (r_node, r_gpus, _) in zip(where["rollout"], where["learner"], strict=True):
        assert (e_node, e_gpus) == (r_node, r_gpus)
        assert len(e_gpus) == 1


def test_what_cannot_fit_is_refused(fake_gpu_cluster: list[dict[str, float]]) -> None:
    too_wide = fit_problems(
        role_specs(_cfg("rollout.tensor_parallel_size=8", "rollout.num_engines=1"), "cuda"), fake_gpu_cluster
    )
    assert any("largest node has {'GPU': 4.0}" in p and "cannot span nodes" in p for p in too_wide), too_wide
    too_many = fit_problems(role_specs(_cfg("rollout.num_engines=10", "learner.num_ranks=4"), "cuda"), fake_gpu_cluster)
    assert any(p.startswith("GPUs: asked 14") and "the cluster has 12" in p for p in too_many), too_many
