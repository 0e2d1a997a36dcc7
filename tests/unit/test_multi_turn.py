"""Multi-turn trajectories with a scripted policy (fixed outputs) against the real calculator environment:
the ids the engine gets at each turn are the trajectory's own prefix, the model's tokens stay verbatim (also
where re-tokenizing would change them), environment tokens never count, and the budgets hold."""

from __future__ import annotations

import dataclasses
import random
import sys
import threading
import time
from typing import Any, ClassVar

import pytest
import torch

from grpo_dist import algo
from grpo_dist.envs import Environment, EnvReply, ModelTurn, load_environment
from grpo_dist.envs.tools import ToolEnv, calculate, parse_calls
from grpo_dist.learner.batch import collate
from grpo_dist.models.builder import tokenizer_corpus, train_tokenizer
from grpo_dist.rollout.multi_turn import BatchedSampler, EnvironmentStepError, run_trajectories
from grpo_dist.rollout.trajectory import Budgets, ChatRenderer, PlainRenderer, Trajectory, TrajectoryError
from grpo_dist.types import Prompt, RolloutGroup, ScoredGroup
from tests.unit.scripted_policy import CHAT_TEMPLATE, FORGETFUL, Script, calc_prompt, chat_tok, encode, rollout

BUDGETS = Budgets(max_turns=4, max_total_tokens=256)


@pytest.fixture(scope="module")
def tok() -> Any:
    return train_tokenizer(tokenizer_corpus(0), 512)


def test_scripted_policy_against_the_calculator_is_token_exact(tok: Any) -> None:
    call, answer = encode(tok, "<calculator>37*48</calculator>"), encode(tok, "1776")
    script = Script(tok, [call, answer])
    prompt = calc_prompt(tok)
    (traj,) = rollout([prompt], generate=script, make_env=ToolEnv, renderer=PlainRenderer(tok), budgets=BUDGETS)
    env_ids = encode(tok, "<result>1776</result>")
    assert traj.token_ids == call + env_ids + answer
    assert script.received == [[prompt.token_ids], [prompt.token_ids + call + env_ids]]  # the trajectory's prefix
    assert traj.loss_mask == [1] * len(call) + [0] * len(env_ids) + [1] * len(answer)
    assert sum(traj.loss_mask) == len(call) + len(answer)  # the sampled tokens, and only they
    assert traj.logprobs == [-0.25] * len(call) + [0.0] * len(env_ids) + [-0.25] * len(answer)
    assert [t.tool_calls for t in traj.turns] == [1, 0] and traj.done and traj.finish_reason == "stop"
    completion = traj.completion()
    assert completion.text == "1776" and completion.mask() == traj.loss_mask
    assert completion.turns[0]["messages"] == [{"role": "tool", "content": "<result>1776</result>"}]


def test_the_models_tokens_stay_verbatim_where_re_encoding_would_change_them() -> None:
    """BPE is not a bijection: a turn sampled as a non-canonical split decodes to text that encodes to
    other ids. The trajectory keeps what was sampled."""
    tok = train_tokenizer(["<calculator>37*48</calculator> the answer is 1776"] * 50, 400)  # one with merges
    canonical = encode(tok, "<calculator>37*48</calculator>")
    k = next(i for i, t in enumerate(canonical) if len(tok.decode([t])) > 1)
    piece = tok.decode([canonical[k]])
    split = canonical[:k] + encode(tok, piece[0]) + encode(tok, piece[1:]) + canonical[k + 1 :]
    assert tok.decode(split) == tok.decode(canonical) and encode(tok, tok.decode(split)) != split
    script = Script(tok, [split, encode(tok, "1776")])
    (traj,) = rollout(
        [calc_prompt(tok)], generate=script, make_env=ToolEnv, renderer=PlainRenderer(tok), budgets=BUDGETS
    )
    assert traj.token_ids[: len(split)] == split
    assert script.received[1][0][len(calc_prompt(tok).token_ids) :][: len(split)] == split


def test_environment_tokens_change_neither_loss_nor_gradient(tok: Any) -> None:
    """The tool's tokens carry mask 0: whatever logprobs they hold, the loss and its gradient are the same."""
    script = Script(tok, [encode(tok, "<calculator>2+2</calculator>"), encode(tok, "4")])
    prompt = calc_prompt(tok, "2+2=")
    trajs = rollout([prompt, prompt], generate=script, make_env=ToolEnv, renderer=PlainRenderer(tok), budgets=BUDGETS)
    completions = [t.completion() for t in trajs]

    def loss_and_grad(tool_logprob: float) -> tuple[torch.Tensor, torch.Tensor]:
        changed = [
            dataclasses.replace(c, logprobs=[lp if m else tool_logprob for lp, m in zip(c.logprobs, c.mask())])
            for c in completions
        ]
        group = ScoredGroup(RolloutGroup(prompt, changed, 0, 0), [1.0, 0.0], {}, [True, True])
        batch = collate([group], torch.tensor([1.0, -1.0]), pad_token_id=0)
        current = torch.full(batch.loss_mask.shape, -0.3, requires_grad=True)
        loss, _ = algo.policy_loss(
            current, batch.engine_logprobs, batch.advantages, batch.loss_mask, clip_ratio_low=0.2, clip_ratio_high=0.2
        )
        (grad,) = torch.autograd.grad(loss, current)
        return loss.detach(), grad

    loss_a, grad_a = loss_and_grad(-0.1)
    loss_b, grad_b = loss_and_grad(-9.0)
    assert torch.equal(loss_a, loss_b) and torch.equal(grad_a, grad_b)
    batch = collate(
        [ScoredGroup(RolloutGroup(prompt, completions, 0, 0), [1.0, 0.0], {}, [True, True])],
        torch.tensor([1.0, -1.0]),
        pad_token_id=0,
    )
    assert batch.loss_mask.sum() == sum(sum(c.mask()) for c in completions)  # mask sums: the sampled tokens


def test_budgets_end_trajectories(tok: Any) -> None:
    call = encode(tok, "<calculator>1+1</calculator>")
    looping = Script(tok, [call] * 10)
    (traj,) = rollout(
        [calc_prompt(tok)], generate=looping, make_env=ToolEnv, renderer=PlainRenderer(tok), budgets=Budgets(3, 512)
    )
    assert len(traj.turns) == 3 and traj.finish_reason == "length"
    (short,) = rollout(
        [calc_prompt(tok)],
        generate=Script(tok, [call] * 10),
        make_env=ToolEnv,
        renderer=PlainRenderer(tok),
        budgets=Budgets(10, len(call) * 2),
    )
    assert len(short.token_ids) <= len(call) * 2 and short.finish_reason == "length"


@pytest.mark.parametrize("side", ["left", "right"])
def test_tool_responses_are_cut_to_their_budget_on_the_chosen_side(tok: Any, side: str) -> None:
    class Echo(Environment):
        def reset(self, prompt: Prompt, seed: int) -> None:
            pass

        def step(self, turn: ModelTurn) -> EnvReply:
            content = "0<|eos|>123456789" * 3  # (a special token's text in a tool's output)
            return EnvReply(messages=[{"role": "tool", "content": content}], done=turn.index > 0)

    budgets = Budgets(4, 256, max_tool_response_tokens=5, truncation_side=side)  # type: ignore[arg-type]
    (traj,) = rollout(
        [calc_prompt(tok)],
        generate=Script(tok, [[5], [6]]),
        make_env=Echo,
        renderer=PlainRenderer(tok),
        budgets=budgets,
    )
    content = traj.turns[0].messages[0]["content"]
    assert len(encode(tok, content)) == 5
    assert content == ("0<|eos|>123" if side == "right" else "56789")  # the kept tokens' text, as it was


def test_chat_messages_are_the_rendered_suffix_after_the_models_own_tokens(tok: Any) -> None:
    chat = chat_tok(tok, CHAT_TEMPLATE)
    messages = [{"role": "user", "content": "37*48="}]
    text = chat.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = Prompt(prompt_id=3, token_ids=encode(chat, text), text=text, messages=messages)
    call = [*encode(chat, "<calculator>37*48</calculator>"), chat.eos_token_id]  # the model ends its turn
    script = Script(chat, [call, [*encode(chat, "1776"), chat.eos_token_id]])
    (traj,) = rollout([prompt], generate=script, make_env=ToolEnv, renderer=ChatRenderer(chat), budgets=BUDGETS)
    env_ids = traj.token_ids[len(call) : traj.loss_mask.index(1, len(call))]
    assert chat.decode(env_ids) == "\n<|tool|><result>1776</result></s>\n<|assistant|>"  # closing + message + cue
    assert traj.token_ids[: len(call)] == call


def test_a_template_that_rewrites_history_is_refused_naming_row_and_turn(tok: Any) -> None:
    chat = chat_tok(tok, FORGETFUL)
    messages = [{"role": "user", "content": "1+1="}]
    prompt = Prompt(prompt_id=11, token_ids=[5, 6], text="", messages=messages)
    script = Script(chat, [encode(chat, "<calculator>1+1</calculator>"), encode(chat, "<calculator>2+2</calculator>")])
    with pytest.raises(TrajectoryError, match=r"row 11, turn 0: the chat template rewrites earlier turns"):
        rollout([prompt], generate=script, make_env=ToolEnv, renderer=ChatRenderer(chat), budgets=BUDGETS)


def test_a_raising_environment_stops_the_rollout_naming_row_and_turn(tok: Any) -> None:
    class Broken(Environment):
        def reset(self, prompt: Prompt, seed: int) -> None:
            pass

        def step(self, turn: ModelTurn) -> EnvReply:
            raise KeyError("no such tool")

    with pytest.raises(EnvironmentStepError, match=r"row 7, turn 0: KeyError"):
        rollout(
            [calc_prompt(tok)],
            generate=Script(tok, [[5]]),
            make_env=Broken,
            renderer=PlainRenderer(tok),
            budgets=BUDGETS,
        )


@pytest.mark.parametrize(
    ("expression", "value"), [("37*48", "1776"), ("(2+3)**2", "25"), ("7/2", "3.5"), ("-4//3", "-2"), ("1e3", "1000")]
)
def test_calculator_computes_arithmetic(expression: str, value: str) -> None:
    assert calculate(expression) == value


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os')",
        "abs(-1)",
        "2**1000",
        "1/0",
        "x+1",
        "[1]*9",
        "1e200**2",  # a float overflow
        "9" * 400 + "/3",  # too large for a float
        "(-1)**0.5",  # complex
        "-" * 300 + "1",
        "1+" * 3000 + "1",  # deep nesting, or simply too long
        "9" * 40,
    ],
)
def test_calculator_never_evaluates_code_and_never_raises_anything_but_value_error(expression: str) -> None:
    with pytest.raises(ValueError, match=r"unsupported syntax|above|division by zero|range|longer|not an arithmetic"):
        calculate(expression)


def test_hermes_calls_and_their_errors_are_parsed() -> None:
    text = (
        '<tool_call>{"name": "calculator", "arguments": {"expression": "1+2"}}</tool_call> <tool_call>{bad</tool_call>'
    )
    calls = parse_calls(text, "hermes")
    assert calls[0] == ("calculator", "1+2") and calls[1][0] == "invalid"


def test_environments_load_by_import_path_with_clear_errors() -> None:
    assert isinstance(load_environment("grpo_dist.envs.tools:ToolEnv", {"tools": ["calculator"]}), ToolEnv)
    with pytest.raises(ValueError, match="not a subclass"):
        load_environment("grpo_dist.envs.tools:calculate")
    with pytest.raises(ValueError, match="cannot import"):
        load_environment("grpo_dist.envs.nope:Env")
    with pytest.raises(ValueError, match="env_kwargs do not fit"):
        load_environment("grpo_dist.envs.tools:ToolEnv", {"colour": "red"})

    class Picky(Environment):
        def __init__(self, size: int = 1) -> None:
            len(size)  # type: ignore[arg-type]  (a bug in the user's constructor: a TypeError, kwargs fine)

        def reset(self, prompt: Prompt, seed: int) -> None: ...

        def step(self, turn: ModelTurn) -> EnvReply:
            return EnvReply(done=True)

    sys.modules[__name__].Picky = Picky  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"Picky'.*its constructor raised TypeError: object of type 'int' has no len"):
        load_environment(f"{__name__}:Picky")


def test_a_turn_cut_by_its_own_cap_is_still_answered(tok: Any) -> None:
    class Nudge(Environment):
        def reset(self, prompt: Prompt, seed: int) -> None:
            pass

        def step(self, turn: ModelTurn) -> EnvReply:
            return EnvReply(messages=[{"role": "user", "content": "go on"}], done=turn.index >= 1)

    script = Script(tok, [[5] * 10, [6] * 10])
    (traj,) = rollout(
        [calc_prompt(tok)],
        generate=script,
        make_env=Nudge,
        renderer=PlainRenderer(tok),
        budgets=Budgets(4, 256, None, "right", 3),
    )
    assert [(t.num_tokens, t.finish_reason) for t in traj.turns] == [(3, "length"), (3, "length")]
    assert traj.token_ids == [5, 5, 5, *encode(tok, "go on"), 6, 6, 6]


def test_the_config_reaches_the_trajectories(tok: Any) -> None:
    """``rollout.multi_turn`` as a user writes it, through the settings the engines get: the environment by
    import path with its kwargs, the turn limit, the per-turn cap and the tool response cut all act."""
    from grpo_dist.config import apply_overrides, parse_config
    from grpo_dist.rollout.multi_turn import MultiTurnSettings, sample_completions
    from grpo_dist.rollout.pool import multi_turn_settings

    cfg = parse_config(
        apply_overrides(
            {},
            [
                "rollout.multi_turn.env=grpo_dist.envs.tools:ToolEnv",
                "rollout.multi_turn.env_kwargs={tools: [calculator]}",
                "rollout.multi_turn.max_turns=2",
                "rollout.multi_turn.max_tokens_per_turn=40",
                "rollout.multi_turn.max_tool_response_length=3",
                "rollout.multi_turn.tool_response_truncation=left",
            ],
        )
    )
    settings = MultiTurnSettings(**multi_turn_settings(cfg))  # type: ignore[arg-type]
    call = encode(tok, "<calculator>123456*7</calculator>")
    turns = [call, call, call]

    def generate(trajectories: list[Trajectory], budget: list[int], seeds: list[int]):
        assert budget == [min(40, b) for b in budget]
        return [(turns[0][:b], [-0.1] * min(b, len(turns[0])), tok.decode(turns[0][:b]), "stop") for b in budget]

    ((completion,),), _ = sample_completions(
        [calc_prompt(tok)],
        1,
        settings=settings,
        tokenizer=tok,
        max_total_tokens=256,
        seed_of=lambda k, i, t: t,
        sampler=BatchedSampler(generate),
    )
    assert len(completion.turns) == 2 and completion.finish_reason == "length"  # max_turns = 2
    reply = completion.turns[0]["messages"][0]["content"]
    assert len(encode(tok, reply)) == 3 and reply == tok.decode(encode(tok, "<result>864192</result>")[-3:])


class Gate(Environment):
    """Sample 0's first tool call waits (up to ``wait_s``) for another sample's second turn to be generated;
    everyone else answers at once. Records whether the gate opened."""

    opened = threading.Event()
    saw_open: ClassVar[list[bool]] = []
    wait_s = 5.0

    def reset(self, prompt: Prompt, seed: int) -> None:
        self.first = prompt.prompt_id == 0

    def step(self, turn: ModelTurn) -> EnvReply:
        if turn.index == 0:
            if self.first:
                Gate.saw_open.append(Gate.opened.wait(Gate.wait_s))
            return EnvReply(messages=[{"role": "tool", "content": "ok"}], tool_calls=1)
        return EnvReply(done=True)


@pytest.mark.parametrize("schedule", ["continuous", "rounds"])
def test_tool_calls_run_while_other_samples_generate_under_the_continuous_schedule(tok: Any, schedule: str) -> None:
    Gate.opened.clear()
    Gate.saw_open.clear()
    Gate.wait_s = 5.0 if schedule == "continuous" else 0.3

    def generate(trajectories: list[Trajectory], budget: list[int], seeds: list[int]):
        if any(t.prompt.prompt_id == 1 and len(t.turns) == 1 for t in trajectories):
            Gate.opened.set()  # sample 1's second turn is being generated
        return [([5], [-0.1], "x", "stop") for _ in trajectories]

    prompts = [dataclasses.replace(calc_prompt(tok), prompt_id=k) for k in range(2)]
    result = run_trajectories(
        prompts,
        sampler=BatchedSampler(generate),
        make_env=Gate,
        renderer=PlainRenderer(tok),
        budgets=BUDGETS,
        schedule=schedule,  # type: ignore[arg-type]
    )
    assert [len(t.turns) for t in result.trajectories] == [2, 2]
    # continuous: sample 1 went on while sample 0's tool ran; rounds: the round waited for the tool first
    assert Gate.saw_open == [schedule == "continuous"]
    stats = result.stats
    assert stats.num_turns == 4 and stats.num_replies == 4 and stats.num_tool_calls == 2
    if schedule == "rounds":  # the engine sat idle while sample 0's tool ran out its 0.3 s
        assert stats.env_s >= 0.3 and stats.env_wait_s >= 0.25


def test_an_environment_that_misses_its_deadline_stops_the_rollout(tok: Any) -> None:
    class Slow(Environment):
        def reset(self, prompt: Prompt, seed: int) -> None:
            pass

        def step(self, turn: ModelTurn) -> EnvReply:
            time.sleep(3.0)
            return EnvReply(done=True)

    aborted: list[bool] = []

    class Recording(BatchedSampler):
        def abort(self) -> None:
            aborted.append(True)

    began = time.perf_counter()
    with pytest.raises(EnvironmentStepError, match=r"did not answer within .*env_timeout_s = 0.2 s at row 7, turn 0"):
        run_trajectories(
            [calc_prompt(tok)],
            sampler=Recording(Script(tok, [[5]])),
            make_env=Slow,
            renderer=PlainRenderer(tok),
            budgets=BUDGETS,
            env_timeout_s=0.2,
        )
    assert time.perf_counter() - began < 2.0 and aborted == [True]  # not held up by the hung step


def test_environments_get_each_samples_own_seed_the_same_on_a_rerun(tok: Any) -> None:
    """A stochastic environment seeded from ``reset`` answers the same when the rollout is repeated (a retry,
    a resume) and differently for each sample of a group."""

    class Dice(Environment):
        def reset(self, prompt: Prompt, seed: int) -> None:
            self.rng = random.Random(seed)

        def step(self, turn: ModelTurn) -> EnvReply:
            return EnvReply(messages=[{"role": "user", "content": str(self.rng.randrange(10**6))}], done=turn.index > 0)

    def run() -> list[str]:
        trajectories = run_trajectories(
            [calc_prompt(tok)] * 4,
            sampler=BatchedSampler(Script(tok, [[5], [6]])),
            make_env=Dice,
            renderer=PlainRenderer(tok),
            budgets=BUDGETS,
            seed_of=lambda t: 1000 * t.index + len(t.turns),  # as the engine's: per sample, per turn
        ).trajectories
        return [t.turns[0].messages[0]["content"] for t in trajectories]

    first = run()
    assert run() == first and len(set(first)) == 4


@pytest.mark.parametrize("workers", [1, 4])
def test_max_env_workers_is_how_many_environment_steps_run_at_once(tok: Any, workers: int) -> None:
    class Counting(Environment):
        running: ClassVar[list[int]] = [0]
        most: ClassVar[list[int]] = [0]
        lock = threading.Lock()

        def reset(self, prompt: Prompt, seed: int) -> None:
            pass

        def step(self, turn: ModelTurn) -> EnvReply:
            with Counting.lock:
                Counting.running[0] += 1
                Counting.most[0] = max(Counting.most[0], Counting.running[0])
            time.sleep(0.1)
            with Counting.lock:
                Counting.running[0] -= 1
            return EnvReply(done=True)

    run_trajectories(
        [calc_prompt(tok)] * 4,
        sampler=BatchedSampler(Script(tok, [[5]])),
        make_env=Counting,
        renderer=PlainRenderer(tok),
        budgets=BUDGETS,
        max_workers=workers,
    )
    assert Counting.most[0] == workers


def test_a_turn_the_engine_aborted_ends_its_trajectory_without_an_environment_step(tok: Any) -> None:
    asked: list[int] = []

    class Asked(Environment):
        def reset(self, prompt: Prompt, seed: int) -> None:
            pass

        def step(self, turn: ModelTurn) -> EnvReply:
            asked.append(turn.index)
            return EnvReply(messages=[{"role": "user", "content": "go on"}])

    (traj,) = rollout(
        [calc_prompt(tok)],
        generate=Script(tok, [[5], [6]], finish="abort"),
        make_env=Asked,
        renderer=PlainRenderer(tok),
        budgets=BUDGETS,
    )
    assert traj.done and traj.finish_reason == "abort" and len(traj.turns) == 1 and asked == []


def test_an_environment_whose_reset_takes_no_seed_is_refused_by_name() -> None:
    from grpo_dist.envs.base import environment_class

    with pytest.raises(ValueError, match=r"its reset must take \(self, prompt, seed\)"):
        environment_class("tests.unit.old_env:OldEnv")
    assert environment_class("grpo_dist.envs.tools:ToolEnv", {"tools": ["python"]}) is ToolEnv


def test_a_raising_reset_names_the_environment_and_row(tok: Any) -> None:
    class BadReset(Environment):
        def reset(self, prompt: Prompt, seed: int) -> None:
            raise KeyError("ground_truth")

        def step(self, turn: ModelTurn) -> EnvReply:
            return EnvReply(done=True)

    with pytest.raises(EnvironmentStepError, match=r"environment.reset raised at row 7: KeyError"):
        rollout(
            [calc_prompt(tok)],
            generate=Script(tok, [[5]]),
            make_env=BadReset,
            renderer=PlainRenderer(tok),
            budgets=BUDGETS,
        )


def test_a_step_queued_behind_busy_threads_is_not_counted_against_its_deadline(tok: Any) -> None:
    class Steady(Environment):
        def reset(self, prompt: Prompt, seed: int) -> None:
            pass

        def step(self, turn: ModelTurn) -> EnvReply:
            time.sleep(0.3)
            return EnvReply(done=True)

    trajectories = rollout(
        [calc_prompt(tok)] * 4,
        generate=Script(tok, [[5]]),
        make_env=Steady,
        renderer=PlainRenderer(tok),
        budgets=BUDGETS,
        max_workers=1,  # the fourth step waits 0.9 s for its thread, and runs 0.3 s of its 0.5
        env_timeout_s=0.5,
    )
    assert [t.done for t in trajectories] == [True] * 4
