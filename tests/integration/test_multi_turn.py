"""A real two-turn rollout: a vLLM engine on CPU continues each trajectory from its own token ids, and the
logprobs it reports for the model's tokens (mask 1) are the learner's (its forward path, fp32, < 1e-4)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("schedule", ["continuous", "rounds"])
def test_two_turn_rollout_logprobs_match_the_learners(
    local_ray: None, tiny_assets: dict[str, str], schedule: str
) -> None:
    """Under both schedules: ``continuous`` drives the engine request by request (``LLMEngine.add_request`` /
    ``step``), ``rounds`` with one ``LLM.generate`` per round."""
    import dataclasses

    import ray
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo_dist.learner.forward import ForwardSettings, token_outputs
    from grpo_dist.rollout.engine import SamplingSpec, create_engine_actor, engine_env
    from grpo_dist.types import Prompt

    tok = AutoTokenizer.from_pretrained(tiny_assets["model"])
    settings = {
        "env": "tests.integration.envs:TwoTurns",
        "max_turns": 4,
        "max_tokens_per_turn": 10,
        "schedule": schedule,
    }
    engine = create_engine_actor(
        options={"num_cpus": 1},
        env=engine_env(device="cpu", cpu_ids=None),
        engine_index=0,
        model_path=tiny_assets["model"],
        dtype="float32",
        device="cpu",
        max_model_len=96,
        seed=0,
        kv_cache_gib=0.25,
        multi_turn=settings,
    )
    prompts = [
        Prompt(prompt_id=i, token_ids=[tok.bos_token_id, *tok(text, add_special_tokens=False).input_ids], text=text)
        for i, text in enumerate(["37+48=", "5+9="])
    ]
    spec = SamplingSpec(n=2, max_tokens=24, temperature=1.0)
    try:
        groups = ray.get(engine.generate.remote(prompts, spec, run_seed=0, stream="train", step=1), timeout=300)
        again = ray.get(engine.generate.remote(prompts, spec, run_seed=0, stream="train", step=1), timeout=300)
        broken = [*prompts, dataclasses.replace(prompts[0], prompt_id=5, extra_info={"raise_at_turn": 1})]
        with pytest.raises(ray.exceptions.RayTaskError, match=r"raised at row 5, turn 1: RuntimeError: the tool broke"):
            ray.get(engine.generate.remote(broken, spec, run_seed=0, stream="train", step=1), timeout=300)
        unfinished = ray.get(engine.__ray_call__.remote(lambda e: e.llm.llm_engine.get_num_unfinished_requests()))
        after = ray.get(engine.generate.remote(prompts, spec, run_seed=0, stream="train", step=2), timeout=300)
    finally:
        ray.kill(engine, no_restart=True)
    reply = tok(" 12+30=", add_special_tokens=False).input_ids
    model = AutoModelForCausalLM.from_pretrained(tiny_assets["model"], dtype=torch.float32).eval()
    settings_fwd = ForwardSettings(packing=False, temperature=1.0, chunk_size=1024)
    worst = 0.0
    for group in groups:
        for c in group.completions:
            mask, turns = c.mask(), c.turns
            assert len(turns) == 2 and [t["reward"] for t in turns] == [0.5, 1.0]
            first = turns[0]["num_tokens"]
            assert mask == [1] * first + [0] * len(reply) + [1] * turns[1]["num_tokens"]
            assert c.token_ids[first : first + len(reply)] == reply  # the environment's message, as tokens
            assert all(lp == 0.0 for lp, m in zip(c.logprobs, mask) if not m)
            ids = torch.tensor([[*group.prompt.token_ids, *c.token_ids]])
            with torch.no_grad():
                lp, _ = token_outputs(model, ids, torch.ones_like(ids), settings_fwd)
            learner = lp[0, len(group.prompt.token_ids) - 1 :].tolist()
            diffs = [abs(a - b) for a, b, m in zip(c.logprobs, learner, mask) if m]
            worst = max(worst, *diffs)
    assert worst < 1e-4, worst
    # A failed rollout leaves no request in the engine: the next one runs (vLLM would mix a leftover's output in).
    assert unfinished == 0 and all(len(c.turns) == 2 for g in after for c in g.completions)
    if schedule == "rounds":  # the same seeds and the same batches sample the same trajectories
        assert [c.token_ids for g in again for c in g.completions] == [
            c.token_ids for g in groups for c in g.completions
        ]


FORGETFUL = (  # a chat template that drops earlier assistant turns once a later message exists
    "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}<|{{ m['role'] }}|>{{ m['content'] }}</s>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _with_chat_template(model: str, out: Path, template: str) -> str:
    """A copy of the model directory whose tokenizer has ``template`` (as a user's model ships one)."""
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(model, out)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = template
    tok.save_pretrained(out)
    return str(out)


@pytest.mark.parametrize(("async_mode", "template_check"), [("sync", None), ("async", "fork")])
def test_training_steps_with_an_environment_from_the_config(
    local_ray: None, tiny_assets: dict[str, str], tmp_path: Path, async_mode: str, template_check: str | None
) -> None:
    """The user's path: ``rollout.multi_turn.env`` named in the config, two GRPO steps through the real
    actors; every sample has two turns, the environment's step rewards reach the reward (``env_reward``),
    the learner trains on the model's tokens only, and every turn is in the rollout log. Also with
    rollouts overlapping training (``trainer.async_mode = async``): whole groups of trajectories, each
    tagged with the weights version it was sampled with; there the prompts are chat messages and the
    model's chat template drops the model's first turn once the user answers (``template_check: fork``):
    each trajectory goes on from the template's rendering, and the learner trains on both sequences with
    the engine's logprobs (under GSPO's sequence-level ratio)."""
    import json

    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from grpo_dist.config import load_config
    from grpo_dist.controller import Controller
    from grpo_dist.metrics import read_metrics
    from tests.integration.conftest import TINY_CONFIG, tiny_overrides

    run_dir = tmp_path / "run"
    assets = dict(tiny_assets)
    chat = []
    if template_check == "fork":
        assets["model"] = _with_chat_template(tiny_assets["model"], tmp_path / "chat_model", FORGETFUL)
        chat = [
            "data.apply_chat_template=always",
            "data.max_prompt_length=64",
            "data.max_response_length=64",  # (the template's tags are many tokens for this tokenizer)
            f"rollout.multi_turn.template_check={template_check}",
            "algo.ratio_level=sequence",  # (GSPO: a trajectory's sequences share one ratio and a micro-batch)
        ]
    cfg = load_config(
        TINY_CONFIG,
        [
            *tiny_overrides(assets, run_dir),
            "trainer.total_steps=2",
            "trainer.eval_every=0",
            "data.eval_files=[]",  # (no held-out evaluation: it is the same engine call)
            "rollout.num_engines=1",
            "learner.num_ranks=1",
            "reward.num_workers=1",
            "data.max_response_length=16",
            "rollout.multi_turn.env=tests.integration.envs:TwoTurns",
            "rollout.multi_turn.max_tokens_per_turn=6",
            "reward.functions=[{name: env_reward, kwargs: {mode: last}}, {name: exact_match}]",
            "sync.probe_tolerance=1e-4",
            f"trainer.async_mode={async_mode}",
            *chat,
        ],
    )
    with Controller(cfg) as controller:
        controller.start()
        controller.run()
    steps = [m for m in read_metrics(run_dir) if "learner/loss" in m]
    assert len(steps) == 2
    assert all(m["rollout/num_turns_mean"] == 2.0 and m["rollout/tool_calls_mean"] == 0.0 for m in steps)
    assert all(m["reward/env_reward"] == 1.0 for m in steps)  # mode last: the second step's reward
    table = pq.read_table(run_dir / "rollouts" / "step_000001.parquet").to_pylist()
    tok = AutoTokenizer.from_pretrained(assets["model"])
    for row in table:
        turns = json.loads(row["turns"])
        assert row["num_turns"] == 2 and [t["reward"] for t in turns] == [0.5, 1.0]
        assert row["completion"] == turns[-1]["text"]
        if template_check == "fork":  # the first sequence is the first turn; the second starts from the rendering
            (fork,) = row["forks"]
            assert (
                row["loss_mask"] == [1] * turns[0]["num_tokens"] and fork["loss_mask"] == [1] * turns[1]["num_tokens"]
            )
            assert tok.decode(fork["context_ids"]).endswith("</s>\n<|user|> 12+30=</s>\n<|assistant|>")
            assert [t["forked"] for t in turns] == [True, False]
        else:
            assert sum(row["loss_mask"]) == sum(t["num_tokens"] for t in turns) < len(row["token_ids"])
    # the learner counted the model's tokens only (of every sequence)
    model_tokens = [sum(r["loss_mask"]) + sum(sum(f["loss_mask"]) for f in r["forks"]) for r in table if r["valid"]]
    assert steps[0]["learner/loss_tokens"] == sum(model_tokens)
    if template_check == "fork":  # the engine's logprobs of both sequences are the learner's (same weights at step 1)
        assert all(m["rollout/forks_mean"] == 1.0 for m in steps)
        assert steps[0]["rollout_corr/logp_diff_max"] < 1e-4
    if async_mode == "async":  # step 2 trained on trajectories sampled before step 1's update reached the engine
        later = pq.read_table(run_dir / "rollouts" / "step_000002.parquet").to_pylist()
        assert {r["weights_version"] for r in later} <= {0, 1} and steps[1]["async/staleness_max"] <= 1
