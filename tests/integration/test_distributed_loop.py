"""The whole loop on real actors: 2 vLLM engines, 2 reward workers, 2 DeepSpeed ranks (ZeRO-2 and ZeRO-3).

Two training steps on the tiny model, then checks on what the run wrote and on the live actors:
every prompt got exactly G completions, the logged rewards are the reward functions applied to the
logged completions, the engines hold exactly the learner's weights after the sync (fp32 logprobs), and
the weights version advanced once per step. A stalled engine makes the next sync fail within its
deadline, naming the engine.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import TINY_CONFIG, tiny_overrides

pytestmark = pytest.mark.slow

NUM_STEPS = 2
G = 4
BATCH = 4


VARIANTS = {
    # ZeRO-2, collective broadcast, GRPO with a KL term (so the reference model is exercised)
    "zero2-broadcast-grpo": ["learner.zero_stage=2", "sync.transport=broadcast", "algo.kl_coef=0.01"],
    # ZeRO-3 (bucket-by-bucket gathers), the object-store transport, DAPO with dynamic sampling
    "zero3-objectstore-dapo": ["learner.zero_stage=3", "sync.transport=object_store", "algo.preset=dapo"],
}
# the second variant also checks the behavioural check's settings: every 2nd sync, a smaller probe
PROBE_SETTINGS = {
    "zero3-objectstore-dapo": ["sync.probe_every=2", "sync.probe_num_sequences=2", "sync.probe_length=16"],
}


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def trained(
    request: pytest.FixtureRequest, local_ray: None, tiny_assets: dict[str, str], tmp_path_factory
) -> Iterator[Any]:
    from grpo_dist.config import load_config
    from grpo_dist.controller import Controller

    run_dir = tmp_path_factory.mktemp(f"run-{request.param}")
    cfg = load_config(
        TINY_CONFIG,
        [
            *tiny_overrides(tiny_assets, run_dir),
            f"trainer.total_steps={NUM_STEPS}",
            *VARIANTS[request.param],
            *PROBE_SETTINGS.get(request.param, []),
            f"rollout.num_generations={G}",
            f"data.train_batch_size={BATCH}",
            "learner.lr=1e-3",  # large enough that one step visibly moves the weights
            "sync.timeout_s=10",
            "reward.functions=[{name: exact_match}, {name: format, weight: 0.1, kwargs: {pattern: '^\\s*-?\\d+\\s*$'}},"
            " {name: digits, path: 'tests.integration.reward_fns:digit_fraction', weight: 0.5}]",
        ],
    )
    controller = Controller(cfg)
    controller.start()
    controller.history = controller.run()
    yield controller
    controller.shutdown()


def _rollouts(run_dir: Path, step: int) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(run_dir / "rollouts" / f"step_{step:06d}.parquet").to_pylist()


def test_every_prompt_got_exactly_g_completions(trained: Any) -> None:
    for step in range(1, NUM_STEPS + 1):
        rows = _rollouts(trained.run_dir, step)
        per_prompt: dict[tuple[int, int], int] = {}
        for r in rows:
            key = (r["prompt_id"], r["sample_index"])
            assert key not in per_prompt
            per_prompt[key] = 1
        prompt_ids = {r["prompt_id"] for r in rows}
        assert len(prompt_ids) == BATCH
        for pid in prompt_ids:
            assert sorted(i for p, i in per_prompt if p == pid) == list(range(G))


def test_logged_rewards_are_the_functions_applied_to_logged_completions(trained: Any) -> None:
    from grpo_dist.metrics import read_metrics
    from grpo_dist.reward.builtins import exact_match, format_reward
    from tests.integration.reward_fns import digit_fraction

    pattern = trained.cfg.reward.functions[1].kwargs["pattern"]
    by_step = {m["step"]: m for m in read_metrics(trained.run_dir) if "reward/mean" in m}
    for step in range(1, NUM_STEPS + 1):
        rows = _rollouts(trained.run_dir, step)
        totals = []
        for r in rows:
            em = exact_match(r["data_source"], r["completion"], r["ground_truth"], None)
            fmt = format_reward(r["data_source"], r["completion"], r["ground_truth"], None, pattern=pattern)
            assert r["reward_exact_match"] == em
            assert r["reward_format"] == fmt
            digits = digit_fraction(r["data_source"], r["completion"], r["ground_truth"], None)
            assert r["reward_digits"] == pytest.approx(digits)
            assert r["reward"] == pytest.approx(1.0 * em + 0.1 * fmt + 0.5 * digits)
            totals.append(r["reward"])
        assert by_step[step]["reward/mean"] == pytest.approx(sum(totals) / len(totals))
        assert by_step[step]["reward/exact_match"] == pytest.approx(
            sum(r["reward_exact_match"] for r in rows) / len(rows)
        )


def test_engines_hold_the_learners_weights_after_sync(trained: Any) -> None:
    import ray
    import torch
    from transformers import AutoModelForCausalLM

    rows = _rollouts(trained.run_dir, NUM_STEPS)
    tok = trained.inputs.tokenizer
    seqs = [tok(r["prompt"] + r["completion"], add_special_tokens=False).input_ids for r in rows[:8]]
    seqs = [[tok.bos_token_id, *s] for s in seqs]
    learner = trained.learners.sequence_token_logprobs(seqs)
    for actor in trained.engines.actors:
        engine = ray.get(actor.sequence_token_logprobs.remote(seqs), timeout=60)
        diff = max(abs(a - b) for s1, s2 in zip(learner, engine) for a, b in zip(s1, s2))
        assert diff < 1e-4, diff
    # and the weights did move: the initial model scores the same tokens differently
    initial = AutoModelForCausalLM.from_pretrained(trained.inputs.model_path, dtype=torch.float32)
    with torch.no_grad():
        ids = torch.tensor(seqs[0])[None]
        lp = torch.log_softmax(initial(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
    assert max(abs(a - b) for a, b in zip(lp.tolist(), learner[0])) > 1e-3


def test_behavioural_check_ran_as_configured(trained: Any) -> None:
    from grpo_dist.metrics import read_metrics

    sc = trained.cfg.sync
    length = min(sc.probe_length, trained.cfg.data.max_prompt_length + trained.cfg.data.max_response_length - 1)
    assert [len(seq) for seq in trained.weight_sync.probe] == [length] * sc.probe_num_sequences
    steps = [m for m in read_metrics(trained.run_dir) if "learner/loss" in m]
    assert len(steps) == NUM_STEPS
    for i, m in enumerate(steps):
        if i % sc.probe_every:  # sync.probe_every=2: the 2nd sync goes unchecked
            assert "sync/probe_max_diff" not in m
            continue
        assert 0.0 <= m["sync/probe_max_diff"] < 1e-4, m["sync/probe_max_diff"]
        assert m["timing/sync_probe_s"] > 0.0


def test_weights_version_advanced_once_per_step(trained: Any) -> None:
    import ray

    from grpo_dist.metrics import read_metrics

    steps = [m for m in read_metrics(trained.run_dir) if "weights/version" in m]
    assert [m["weights/version"] for m in steps] == [float(s) for s in range(1, NUM_STEPS + 1)]
    for step in range(1, NUM_STEPS + 1):
        assert {r["weights_version"] for r in _rollouts(trained.run_dir, step)} == {step - 1}
    infos = ray.get([a.info.remote() for a in trained.engines.actors], timeout=30)
    assert [i["version"] for i in infos] == [NUM_STEPS] * len(infos)


def test_step_metrics_are_complete(trained: Any) -> None:
    from grpo_dist.metrics import read_metrics

    required = {
        "step",
        "reward/mean",
        "reward/std",
        "reward/exact_match",
        "reward/format",
        "reward/digits",
        "reward/frac_zero_std",
        "response_length/mean",
        "response_length/clip_frac",
        "learner/loss",
        "learner/kl",
        "learner/clip_fraction",
        "learner/entropy",
        "learner/grad_norm",
        "learner/lr",
        "timing/rollout_s",
        "timing/reward_s",
        "timing/train_s",
        "timing/sync_s",
        "timing/step_s",
        "throughput/tokens_per_s",
        "weights/version",
    }
    records = [m for m in read_metrics(trained.run_dir) if "reward/mean" in m]
    assert len(records) == NUM_STEPS
    for m in records:
        assert required <= set(m), required - set(m)
        assert m["learner/kl"] is not None
        assert m["learner/kl"] >= 0.0
        assert m["rollout/sampling_rounds"] >= 1
    # until the deprecated flat names are dropped, the file itself carries them beside the new ones
    raw = [json.loads(line) for line in (trained.run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in (r for r in raw if "reward/mean" in r):
        assert {"loss", "kl", "grad_norm", "lr", "frac_reward_zero_std"} <= set(line)
        assert line["loss"] == line["learner/loss"]
    evals = [m for m in read_metrics(trained.run_dir) if "eval/pass@1" in m]
    assert [m["step"] for m in evals] == [0, NUM_STEPS]
    assert (trained.run_dir / "final" / "model.safetensors").is_file()


def test_eval_command_scores_the_final_policy(trained: Any) -> None:
    """`grpo-dist eval --run RUN_DIR` loads the run's exported policy into fresh engines and scores it."""
    import json

    from grpo_dist.cli import main

    assert main(["eval", "--run", str(trained.run_dir), "logging.progress=off"]) == 0
    result = json.loads((trained.run_dir / "eval.json").read_text())
    assert 0.0 <= result["eval/pass@1"] <= 1.0
    assert result["eval/num_prompts"] == 4
    assert {"eval/pass@1", "eval/pass@2", "eval/pass@1_sampled"} <= set(result)
    assert (trained.run_dir / "rollouts" / "eval_cli_greedy_000000.parquet").is_file()


def test_stalled_engine_fails_the_sync_within_its_deadline(trained: Any) -> None:
    """Runs last in the module: it leaves the sync group broken."""
    import ray

    from grpo_dist.sync.manager import WeightSyncError

    pid = ray.get(trained.engines.actors[1].info.remote(), timeout=30)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(WeightSyncError, match="engine 1") as info:
            trained.weight_sync.sync(version=NUM_STEPS + 1)
        elapsed = time.monotonic() - start
    finally:
        os.kill(pid, signal.SIGCONT)
    assert elapsed < trained.cfg.sync.timeout_s + 10, elapsed
    assert "not responding at all: engine 1" in str(info.value)
