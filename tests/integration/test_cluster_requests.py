"""Requests the cluster can never hold are refused up front, saying what was asked and what there is;
a placement group that cannot be placed ends in an error at its deadline, never a hang."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.conftest import TINY_CONFIG, tiny_overrides
from tests.records import write_record

pytestmark = pytest.mark.slow


def _trainer(tiny_assets: dict[str, str], tmp_path: Path, *extra: str):  # -> Controller
    from grpo_dist.config import load_config
    from grpo_dist.controller import Controller

    return Controller(load_config(TINY_CONFIG, [*tiny_overrides(tiny_assets, tmp_path), *extra]))


def test_too_many_cpus_and_gpus_refused_before_any_placement_group(
    local_ray: None, tiny_assets: dict[str, str], tmp_path: Path
) -> None:
    import ray
    from ray.util import placement_group_table

    before = len(placement_group_table())
    cases = {
        "cpus": (["rollout.num_engines=12"], r"CPUs: asked 14 \(rollout 12 x 1 \+ learner 2 x 1\)"),
        "gpus": (["cluster.device=cuda"], r"GPUs: asked 4 \(rollout 2 x 1 \+ learner 2 x 1\), the cluster has 0"),
    }
    refused = 0
    for name, (overrides, pattern) in cases.items():
        controller = _trainer(tiny_assets, tmp_path / name, *overrides)
        start = time.monotonic()
        with pytest.raises(ValueError, match=pattern):
            controller.start()
        controller.shutdown()
        assert time.monotonic() - start < 60
        refused += 1
    assert len(placement_group_table()) == before  # refused before any placement group
    assert ray.available_resources().get("CPU") == ray.cluster_resources().get("CPU")
    write_record("impossible_cluster_requests", {"requests": len(cases), "refused_up_front": refused, "hangs": 0})


def test_unplaceable_placement_group_times_out_with_a_clear_error(local_ray: None) -> None:
    from grpo_dist.placement import placement_group

    start = time.monotonic()
    with pytest.raises(
        TimeoutError, match=r"placement group 'grpo-dist-test-\w+' \(1 bundles of .*was not placed within 2 s"
    ):
        placement_group([{"CPU": 1, "no_such_resource": 1}], "PACK", name="grpo-dist-test", timeout_s=2)
    assert time.monotonic() - start < 10
