"""The overlapping modes on real Ray, vLLM and DeepSpeed. ``async`` with a bound of 2: the batches ahead are
generated with the versions the schedule fixes while the ranks train (staleness up to 2, never more), a
checkpoint step is a barrier so that a resumed run continues exactly. ``one_step_off`` (the schedule of
``async`` with bound 1, as the unit tests show): an engine killed while the ranks train is replaced with
no group lost; with partial rollouts, the samples in flight continue under the update that landed, each
token tagged with the weights that sampled it. (``async`` with bound 0 reproducing ``sync`` bit for bit is
part of ``test_resume``.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import TINY_CONFIG, tiny_overrides

pytestmark = pytest.mark.slow

BATCH, G = 4, 4
VOLATILE = ("timing/", "throughput/", "sync/gb_per_s", "faults/")


def _config(tiny_assets: dict[str, str], run_dir: Path, *extra: str, mode: str = "one_step_off") -> Any:
    from grpo_dist.config import load_config

    return load_config(
        TINY_CONFIG,
        [
            *tiny_overrides(tiny_assets, run_dir),
            f"trainer.async_mode={mode}",
            f"data.train_batch_size={BATCH}",
            f"rollout.num_generations={G}",
            "learner.lr=1e-3",
            *extra,
        ],
    )


def _run(cfg: Any) -> Any:
    from grpo_dist.controller import Controller

    controller = Controller(cfg)
    try:
        controller.start()
        controller.run()
    finally:
        controller.shutdown()
    return controller


def _steps(run_dir: Path) -> dict[int, dict[str, Any]]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "reward/mean" in record:
            out[record["step"]] = {k: v for k, v in record.items() if not k.startswith(VOLATILE)}
    return out


def _versions(run_dir: Path, step: int) -> set[int]:
    import pyarrow.parquet as pq

    return set(pq.read_table(run_dir / "rollouts" / f"step_{step:06d}.parquet").column("weights_version").to_pylist())


def _async(tiny_assets: dict[str, str], run_dir: Path, *extra: str) -> Any:
    # no held-out set: the evaluation is not what this test looks at
    return _config(tiny_assets, run_dir, "sync.max_staleness=2", "trainer.save_every=3", "data.eval_files=[]",
                   *extra, mode="async")  # fmt: skip


def test_async_within_the_bound_and_exact_resume_across_the_barrier(
    local_ray: None, tiny_assets: dict[str, str], tmp_path: Path
) -> None:
    reference = tmp_path / "reference"
    _run(_async(tiny_assets, reference, "trainer.total_steps=4"))
    steps = _steps(reference)
    # step 1's batch came before any update; steps 2 and 3's were generated during step 1's update, with
    # version 0 (the bound admits both); step 3 writes a checkpoint (a barrier), so step 4's batch is
    # generated after it, with version 3
    assert [_versions(reference, s) for s in (1, 2, 3, 4)] == [{0}, {0}, {0}, {3}]
    assert [steps[s]["async/staleness_max"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 2.0, 0.0]
    assert [steps[s]["async/batches_ahead"] for s in (1, 2, 3, 4)] == [2.0, 0.0, 0.0, 0.0]
    assert all(steps[s]["async/dropped_stale"] == 0.0 for s in steps)
    raw = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    overlapped = {r["step"] for r in raw if "timing/rollout_idle_ratio" in r}
    assert overlapped == {1}  # the only step that generated batches ahead while training
    assert all(0.0 <= r["timing/trainer_idle_ratio"] <= 1.0 for r in raw if "reward/mean" in r)

    # a run resumed from the barrier's checkpoint (a run stopped there left the same one) continues exactly
    resumed = tmp_path / "resumed"
    barrier = reference / "checkpoints" / "step_000003"
    _run(_async(tiny_assets, resumed, "trainer.total_steps=4", f"trainer.resume={barrier}"))
    assert _steps(resumed) == {4: steps[4]}
    assert _versions(resumed, 4) == {3}


def test_engine_killed_while_the_ranks_train_is_replaced(
    local_ray: None, tiny_assets: dict[str, str], tmp_path: Path
) -> None:
    """The kill lands while step 2's batch is scored, i.e. during step 1's update: the replacement waits for
    that update, gets its weights (version 1) and the lost prompts are generated again."""
    import ray

    from grpo_dist.controller import Controller

    trigger = tmp_path / "run.trigger"
    eval_calls = 4 * (2 + 1)  # the evaluation before step 1: 4 prompts x (2 samples + greedy)
    cfg = _config(
        tiny_assets,
        tmp_path / "run",
        "trainer.total_steps=2",
        "trainer.save_every=2",
        "data.max_response_length=64",
        "rollout.ignore_eos=true",  # long generations: the kill lands mid-rollout
        "reward.functions=[{name: exact_match},"
        f" {{name: fault, path: 'tests.integration.fault_fns:kill_after', weight: 0.0,"
        f" kwargs: {{trigger_file: '{trigger}', after_calls: {eval_calls + BATCH * G}}}}}]",
    )
    controller = Controller(cfg)
    try:
        controller.start()
        trigger.write_text(str(ray.get(controller.engines.actors[1].info.remote(), timeout=60)["pid"]))
        history = controller.run()
        stats = dict(controller.engines.fault_stats)
    finally:
        controller.shutdown()
    assert (tmp_path / "run.fired").exists()
    assert stats["engines_restarted"] == 1 and stats["chunks_resubmitted"] >= 1
    assert len(history) == 2
    versions = _versions(tmp_path / "run", 2)
    assert versions <= {0, 1} and 1 in versions  # resubmitted groups came from the replacement, at version 1
    for step in (1, 2):
        import pyarrow.parquet as pq

        rows = pq.read_table(tmp_path / "run" / "rollouts" / f"step_{step:06d}.parquet").to_pylist()
        assert sorted((r["prompt_id"], r["sample_index"]) for r in rows) == sorted(
            {(r["prompt_id"], r["sample_index"]) for r in rows}
        )
        assert len(rows) == BATCH * G  # every group once, none lost


def _rows(run_dir: Path, step: int) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(run_dir / "rollouts" / f"step_{step:06d}.parquet").to_pylist()


def test_partial_rollout_continues_samples_under_the_update_that_landed(
    local_ray: None, tiny_assets: dict[str, str], tmp_path: Path
) -> None:
    """one_step_off with 96-token samples generated in segments of 4: step 1's update lands while the
    engines are part-way through batch 2, is published at the next segment boundary, and the samples
    continue under it. The tags are checked against what the engines did, not against what they were
    told: the tokens tagged 0 carry the initial model's logprobs, the ones tagged 1 do not."""
    import torch
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "run"
    cfg = _config(
        tiny_assets,
        run_dir,
        "rollout.partial_rollout=resume",
        "rollout.partial_segment_tokens=4",
        "data.max_response_length=96",
        "rollout.ignore_eos=true",
        "trainer.total_steps=3",
        "trainer.save_every=3",
        "data.eval_files=[]",
        # digits rewarded: even the untrained model's groups differ, so each update moves the weights
        "reward.functions=[{name: digits, path: 'tests.integration.reward_fns:digit_fraction'}]",
    )
    _run(cfg)
    steps, rows = _steps(run_dir), {s: _rows(run_dir, s) for s in (1, 2, 3)}
    assert all(r["token_versions"] == [0] * 96 for r in rows[1])  # before any update: whole, version 0
    assert steps[1]["learner/off_policy_token_frac"] == 0.0
    for s in (2, 3):  # generated during step s-1's update: started with s-2, continued with s-1
        for r in rows[s]:
            v = r["token_versions"]
            assert len(v) == r["response_length"] == 96 and v == sorted(v) and set(v) <= {s - 2, s - 1}
            assert r["weights_version"] == v[0]
        partial = sum(len(set(r["token_versions"])) > 1 for r in rows[s]) / len(rows[s])
        assert steps[s]["async/partial_ratio"] == partial
        # the ranks, reading the versions against the weights they hold, count the same off-policy tokens
        stale = [v < s - 1 for r in rows[s] for v in r["token_versions"]]
        assert steps[s]["learner/off_policy_token_frac"] == pytest.approx(sum(stale) / len(stale))
        assert steps[s]["async/staleness_max"] == 1.0 and steps[s]["async/dropped_stale"] == 0.0
    continued = [r for r in rows[2] if len(set(r["token_versions"])) > 1]
    assert continued, f"step 1's update landed after batch 2 was whole: {steps[1]['timing/train_s']:.2f} s train"

    initial = AutoModelForCausalLM.from_pretrained(tiny_assets["model"], dtype=torch.float32).eval()
    before, after = [], []  # |engine logprob - initial model's logprob| of tokens tagged 0, and tagged 1
    for r in continued:
        prompt, tokens = r["prompt_token_ids"], r["token_ids"]
        with torch.no_grad():
            logits = initial(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1].float()
        logprobs = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(tokens)[:, None])[:, 0]
        for lp, engine_lp, version in zip(logprobs.tolist(), r["engine_logprobs"], r["token_versions"]):
            (before if version == 0 else after).append(abs(lp - engine_lp))
    assert max(before) < 1e-3, f"tokens tagged 0 were not sampled with the initial weights: {max(before):.2e}"
    assert sum(after) / len(after) > 10 * max(before), (
        f"tokens tagged 1 look sampled with the initial weights too: mean |diff| {sum(after) / len(after):.2e}"
    )
