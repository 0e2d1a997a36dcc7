"""The behavioural sync check catches a sync whose checksums all match but whose engine does not compute
with the learner's weights.

The engine is made to drop one tensor of every update (as a reload that forgets a layout would): each
bucket still arrives intact, so the checksums agree, but one layer keeps its old weights. The check after
the first sync must stop the run with a message naming the engine and the worst token, leaving the
step's checkpoint to resume from.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import TINY_CONFIG, tiny_overrides

pytestmark = pytest.mark.slow

DROPPED = "model.layers.0.mlp.down_proj.weight"


def _drop_one_tensor(engine: Any, name: str) -> bool:
    """Runs inside the engine actor: its weight loads silently skip ``name``."""
    load = engine._load

    def lossy(weights: Any) -> None:
        load((n, t) for n, t in weights if n != name)

    engine._load = lossy
    return True


def _config(tiny_assets: dict[str, str], run_dir: Any, *extra: str) -> Any:
    from grpo_dist.config import load_config

    return load_config(
        TINY_CONFIG,
        [
            *tiny_overrides(tiny_assets, run_dir),
            "trainer.total_steps=2",
            "rollout.num_engines=2",
            "learner.num_ranks=1",
            "learner.lr=1e-3",
            "algo.kl_coef=0",
            "sync.verify=true",
            # a graded reward, so that every group has a signal and the update moves the weights
            "reward.functions=[{name: digits, path: 'tests.integration.reward_fns:digit_fraction'}]",
            *extra,
        ],
    )


def test_a_sync_that_leaves_a_layer_stale_stops_the_run_with_a_checkpoint(
    local_ray: None, tiny_assets: dict[str, str], tmp_path
) -> None:
    import ray

    from grpo_dist.controller import Controller
    from grpo_dist.faults import TrainingAborted
    from grpo_dist.metrics import read_metrics

    cfg = _config(tiny_assets, tmp_path)
    with Controller(cfg) as controller:
        controller.start()  # the check before any update passes: both sides load the same model
        ray.get(controller.engines.actors[1].__ray_call__.remote(_drop_one_tensor, DROPPED), timeout=60)
        with pytest.raises(TrainingAborted) as info:
            controller.run()
    message = str(info.value)
    assert "engine 1 does not compute with the learner's weights" in message
    assert "probe sequence" in message and "sync.probe_tolerance" in message
    assert "step_000001" in message and "trainer.resume=auto" in message
    assert (tmp_path / "checkpoints" / "step_000001" / "hf" / "model.safetensors").is_file()
    assert not any("learner/loss" in m for m in read_metrics(tmp_path))  # the broken step was never logged as done


def test_the_tolerance_decides_what_counts_as_broken(local_ray: None, tiny_assets: dict[str, str], tmp_path) -> None:
    """The same stale layer under a tolerance far above it: the run completes, and its metrics show the
    difference the default tolerance would have stopped it for."""
    import ray

    from grpo_dist.controller import Controller
    from grpo_dist.metrics import read_metrics
    from grpo_dist.sync.probe import default_tolerance

    cfg = _config(tiny_assets, tmp_path, "sync.probe_tolerance=100")
    with Controller(cfg) as controller:
        controller.start()
        ray.get(controller.engines.actors[1].__ray_call__.remote(_drop_one_tensor, DROPPED), timeout=60)
        controller.run()
    steps = [m for m in read_metrics(tmp_path) if "learner/loss" in m]
    assert len(steps) == 2
    assert max(m["sync/probe_max_diff"] for m in steps) > default_tolerance("float32")
