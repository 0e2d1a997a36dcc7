"""LoRA through the real actors (Ray, vLLM, DeepSpeed on CPU, fp32): in both ways to the engines the engines
compute the learner's policy after every update; the adapter the engines serve and the merged weights give
the same logprobs; syncs never touch the learner's base weights; the checkpoint's adapter is peft's format,
and a run resumed from it continues exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import TINY_CONFIG, tiny_overrides

pytestmark = pytest.mark.slow

PARITY = 1e-4  # fp32: engine vs learner logprobs, as the issue asks
LORA = ["model.lora.rank=8", "model.lora.alpha=16"]
RSLORA_ZERO3 = ["learner.zero_stage=3", "model.lora.use_rslora=true"]  # scale 16 / sqrt(8), not 16 / 8


def _overrides(assets: dict[str, str], run_dir: Path, sync: str, *extra: str) -> list[str]:
    return [
        *tiny_overrides(assets, run_dir),
        *LORA,
        f"model.lora.sync={sync}",
        "learner.lr=1e-2",  # the adapters must move the policy visibly in three steps
        "sync.probe_every=1",  # every sync is checked by behaviour
        f"sync.probe_tolerance={PARITY}",
        "trainer.save_every=2",
        "algo.kl_coef=0.01",  # the reference is the base with the adapters off
        "reward.functions=[{name: exact_match}, {name: digits, path: 'tests.integration.reward_fns:digit_fraction'}]",
        *extra,
    ]


def _steps(run_dir: Path) -> list[dict[str, Any]]:
    from grpo_dist.metrics import read_metrics

    return [m for m in read_metrics(run_dir) if "learner/loss" in m]


def _base_checksums(learners: Any) -> dict[str, int]:
    """CRC32 of every frozen base tensor of learner rank 0, read inside the actor."""
    import ray

    def read(worker: Any) -> dict[str, int]:
        from grpo_dist.sync.plan import checksum

        return {n: checksum(p.data) for n, p in worker.engine.module.named_parameters() if not p.requires_grad}

    return ray.get(learners.actors[0].__ray_call__.remote(read), timeout=120)


def _adapter_bytes(model: str, *, rank: int) -> int:
    """fp32 bytes of a rank-``rank`` adapter on every linear layer of a Llama: ``r * (in + out)`` per layer."""
    c = json.loads((Path(model) / "config.json").read_text())
    h, i, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
    per_layer = 2 * (h + h) + 2 * (h + kv) + 2 * (h + i) + (i + h)  # q, o; k, v; gate, up; down
    return 4 * layers * rank * per_layer


def _logprobs(model: Any, seqs: list[list[int]]) -> list[list[float]]:
    import torch

    out = []
    with torch.no_grad():
        for s in seqs:
            ids = torch.tensor(s)[None]
            lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
            out.append(lp.tolist())
    return out


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for r1, r2 in zip(a, b) for x, y in zip(r1, r2))


def test_merged_sync_keeps_engines_on_the_learners_policy_and_never_touches_the_base(
    local_ray: None, tiny_assets: dict[str, str], tmp_path: Path
) -> None:
    """``merged`` (ZeRO-2): three updates, each checked by behaviour (< 1e-4); then 100 more syncs, after
    which the learner's frozen base is bit-identical to what it was before the first, and the engines still
    agree."""
    from grpo_dist.config import load_config
    from grpo_dist.controller import Controller

    run_dir = tmp_path / "merged"
    cfg = load_config(TINY_CONFIG, _overrides(tiny_assets, run_dir, "merged"))
    with Controller(cfg) as controller:
        controller.start()
        before = _base_checksums(controller.learners)
        controller.run()
        steps = _steps(run_dir)
        assert len(steps) == 3 and all(m["sync/probe_max_diff"] < PARITY for m in steps)
        sync = controller.weight_sync
        assert sync is not None and sync.adapter_config is None  # whole weights travel
        for _ in range(100):
            sync.sync(version=3)
        assert sync.check_behaviour(3).max_abs < PARITY
        assert _base_checksums(controller.learners) == before
        assert steps[-1]["sync/bytes"] > 1e6  # the whole model (about 1.2M fp32 parameters)


def test_adapter_sync_serves_the_learners_policy_and_matches_the_merged_model(
    local_ray: None, tiny_assets: dict[str, str], tmp_path: Path
) -> None:
    """``adapter`` under ZeRO-3 (every export gathers its sources on all ranks) and rsLoRA (the engines must
    take the adapter's scale from its config, as vLLM does, or the probe fails): only the adapter travels
    and every sync is checked by behaviour; the checkpoint holds a peft adapter that
    ``PeftModel.from_pretrained`` loads and a merged model, and the engines serving the adapter compute what
    transformers computes with either (< 1e-4); a run resumed from the step-2 checkpoint (its engines start
    from the base and the checkpoint's adapter) repeats step 3 exactly."""
    import ray
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from grpo_dist.config import load_config
    from grpo_dist.controller import Controller

    run_dir = tmp_path / "adapter"
    cfg = load_config(TINY_CONFIG, _overrides(tiny_assets, run_dir, "adapter", *RSLORA_ZERO3))
    with Controller(cfg) as controller:
        controller.start()
        controller.run()
        steps = _steps(run_dir)
        assert len(steps) == 3 and all(m["sync/probe_max_diff"] < PARITY for m in steps)
        assert controller.weight_sync is not None and controller.weight_sync.adapter_config is not None
        assert steps[-1]["sync/bytes"] == _adapter_bytes(tiny_assets["model"], rank=8)  # the adapter only
        seqs = [list(p.token_ids) + list(p.token_ids) for p in controller.inputs.train_prompts[:4]]
        engine = ray.get(controller.engines.actors[0].sequence_token_logprobs.remote(seqs), timeout=120)

    final = run_dir / "final"
    adapter_dir = final / "adapter"
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16 and config["peft_type"] == "LORA" and config["use_rslora"]
    base = AutoModelForCausalLM.from_pretrained(tiny_assets["model"], dtype=torch.float32)
    with_adapter = _logprobs(PeftModel.from_pretrained(base, str(adapter_dir)).eval(), seqs)
    merged = _logprobs(AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32).eval(), seqs)
    bare = _logprobs(AutoModelForCausalLM.from_pretrained(tiny_assets["model"], dtype=torch.float32).eval(), seqs)
    assert _max_diff(engine, with_adapter) < PARITY
    assert _max_diff(engine, merged) < PARITY
    assert _max_diff(engine, bare) > 100 * PARITY  # and the adapter did move the policy

    resumed_dir = tmp_path / "resumed"
    resumed = load_config(
        TINY_CONFIG,
        [
            *_overrides(tiny_assets, resumed_dir, "adapter", *RSLORA_ZERO3),
            f"trainer.resume={run_dir / 'checkpoints' / 'step_000002'}",
        ],
    )
    with Controller(resumed) as controller:
        controller.start()
        controller.run()
    again = _steps(resumed_dir)
    assert [m["step"] for m in again] == [3]
    for key in ("learner/loss", "learner/grad_norm", "reward/mean", "sync/probe_max_diff"):
        assert again[0][key] == steps[2][key], key
