"""``template_check: fork``: where a chat template rewrites history, the trajectory goes on as a new sequence
whose context is the template's rendering; the learner trains on each sequence and counts the trajectory
once, whatever the loss mode and however its rows are split over micro-batches, ranks and mini-batches."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from grpo_dist import algo
from grpo_dist.config import apply_overrides, parse_config
from grpo_dist.data.prompts import with_bos
from grpo_dist.envs import Environment, EnvReply, ModelTurn
from grpo_dist.envs.tools import ToolEnv
from grpo_dist.learner.batch import collate
from grpo_dist.learner.work import MicroBatching, split_step
from grpo_dist.models.builder import tokenizer_corpus, train_tokenizer
from grpo_dist.rollout.trajectory import Budgets, ChatRenderer, HistoryRewrittenError
from grpo_dist.types import Completion, Prompt, RolloutGroup, ScoredGroup, Segment
from tests.unit.scripted_policy import FORGETFUL, Script, chat_tok, encode, rollout

BUDGETS = Budgets(max_turns=4, max_total_tokens=256)

THINKING = (  # Qwen3-style: an assistant turn before the last user message loses its reasoning
    "{% set ns = namespace(last_user=-1) %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}{% set content = m['content'] %}"
    "{% if m['role'] == 'assistant' and loop.index0 < ns.last_user %}{% set content = content.split('</think>')[-1] %}"
    "{% endif %}<|{{ m['role'] }}|>{{ content }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tok() -> Any:
    return train_tokenizer(tokenizer_corpus(0), 512)


def _rendered(chat: Any, messages: list[dict[str, Any]]) -> list[int]:
    text = chat.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return with_bos(encode(chat, text), chat.bos_token_id)


def _chat_prompt(chat: Any, question: str, prompt_id: int = 11) -> Prompt:
    messages = [{"role": "user", "content": question}]
    return Prompt(prompt_id=prompt_id, token_ids=_rendered(chat, messages), text=question, messages=messages)


def test_a_template_that_rewrites_history_forks_the_trajectory(tok: Any) -> None:
    """FORGETFUL drops earlier assistant turns: after the tool answers, the engine is given the conversation
    as the template renders it (the call gone), and the model's own tokens are the two segments' mask-1
    tokens, verbatim."""
    chat = chat_tok(tok, FORGETFUL)
    prompt = _chat_prompt(chat, "1+1=")
    call = [*encode(chat, "<calculator>1+1</calculator>"), chat.eos_token_id]
    answer = [*encode(chat, "2"), chat.eos_token_id]
    script = Script(chat, [call, answer])
    (traj,) = rollout(
        [prompt], generate=script, make_env=ToolEnv, renderer=ChatRenderer(chat, fork=True), budgets=BUDGETS
    )
    context = _rendered(
        chat,
        [
            {"role": "user", "content": "1+1="},
            {"role": "assistant", "content": chat.decode(call, skip_special_tokens=True)},
            {"role": "tool", "content": "<result>2</result>"},
        ],
    )
    assert script.received == [[prompt.token_ids], [context]]  # what the engine was given at each turn
    assert "<calculator>" not in chat.decode(context)  # the template's rendering, not the trajectory's tokens
    assert [t.forked for t in traj.turns] == [True, False]
    completion = traj.completion()
    assert (completion.token_ids, completion.loss_mask) == (call, [1] * len(call))
    assert completion.forks == [Segment(context, answer, [-0.25] * len(answer), [1] * len(answer))]
    assert completion.num_model_tokens == len(call) + len(answer) == completion.response_length
    assert completion.segments(prompt.token_ids)[0].context_ids == prompt.token_ids
    with pytest.raises(HistoryRewrittenError, match=r"row 11, turn 0: the chat template rewrites earlier turns"):
        rollout(
            [prompt],
            generate=Script(chat, [call, answer]),
            make_env=ToolEnv,
            renderer=ChatRenderer(chat),
            budgets=BUDGETS,
        )


class ToolThenUser(Environment):
    """Answers turn 0 as a tool, turn 1 as the user, and ends at turn 2."""

    def reset(self, prompt: Prompt, seed: int) -> None:
        pass

    def step(self, turn: ModelTurn) -> EnvReply:
        if turn.index == 0:
            return EnvReply(messages=[{"role": "tool", "content": "<result>4</result>"}], tool_calls=1)
        if turn.index == 1:
            return EnvReply(messages=[{"role": "user", "content": "and 3+3?"}])
        return EnvReply(done=True)


def test_a_qwen3_style_template_forks_only_where_it_drops_reasoning(tok: Any) -> None:
    """Reasoning is kept through a tool loop (the prefix holds: tokens are appended) and dropped once the user
    speaks again: the trajectory forks there, and the new context holds the earlier answers without their
    reasoning."""
    chat = chat_tok(tok, THINKING)
    prompt = _chat_prompt(chat, "2+2=")
    turns = [
        [*encode(chat, "<think>add</think><calculator>2+2</calculator>"), chat.eos_token_id],
        [*encode(chat, "<think>copy</think>4"), chat.eos_token_id],
        [*encode(chat, "<think>again</think>6"), chat.eos_token_id],
    ]
    script = Script(chat, turns)
    (traj,) = rollout(
        [prompt], generate=script, make_env=ToolThenUser, renderer=ChatRenderer(chat, fork=True), budgets=BUDGETS
    )
    assert [t.forked for t in traj.turns] == [False, True, False]
    completion = traj.completion()
    (fork,) = completion.forks
    first = completion.token_ids
    assert first[: len(turns[0])] == turns[0] and first[len(first) - len(turns[1]) :] == turns[1]
    tool = completion.loss_mask[len(turns[0]) : len(first) - len(turns[1])]
    assert tool and set(tool) == {0}  # the tool's answer, appended: no fork in a tool loop
    assert script.received[2] == [fork.context_ids] and fork.token_ids == turns[2]
    context = chat.decode(fork.context_ids)
    assert "add" not in context and "copy" not in context and "4</s>" in context and "and 3+3?" in context
    assert completion.num_model_tokens == sum(len(t) for t in turns)


def test_a_fork_shares_the_token_budget_and_keeps_its_context_within_the_prompts_plus_it(tok: Any) -> None:
    chat = chat_tok(tok, FORGETFUL)
    prompt = _chat_prompt(chat, "1+1=")
    call = [*encode(chat, "<calculator>1+1</calculator>"), chat.eos_token_id]
    script = Script(chat, [call, [7] * 100])
    budgets = Budgets(max_turns=4, max_total_tokens=40)
    (traj,) = rollout(
        [prompt], generate=script, make_env=ToolEnv, renderer=ChatRenderer(chat, fork=True), budgets=budgets
    )
    context = script.received[1][0]
    room = min(40 - len(call), len(prompt.token_ids) + 40 - len(context))
    assert script.budgets[1] == [room] and traj.response_tokens == len(call) + room
    assert traj.finish_reason == "length"
    long_question = "1+1=" + " please" * 30  # a context that outgrows the prompt's length plus the budget
    script = Script(chat, [call, [7] * 100])
    (traj,) = rollout(
        [_chat_prompt(chat, "1+1=")],
        generate=script,
        make_env=lambda: _Rewrites(long_question),
        renderer=ChatRenderer(chat, fork=True),
        budgets=budgets,
    )
    assert len(script.received) == 1 and traj.finish_reason == "length" and traj.turns[0].info["unanswered"]


class _Rewrites(Environment):
    def __init__(self, reply: str) -> None:
        self.reply = reply

    def reset(self, prompt: Prompt, seed: int) -> None:
        pass

    def step(self, turn: ModelTurn) -> EnvReply:
        return EnvReply(messages=[{"role": "user", "content": self.reply}])


def _forked_group() -> ScoredGroup:
    """Two completions of prompt [1, 2]: the first forked (3 model tokens, then 2 from a context of 4), the
    second one sequence of 4 model tokens and 1 environment token."""
    forked = Completion(
        [3, 4, 5],
        [-0.1, -0.2, -0.3],
        "stop",
        "a",
        loss_mask=[1, 1, 1],
        forks=[Segment([1, 9, 9, 2], [6, 7], [-0.4, -0.5], [1, 1])],
    )
    plain = Completion([3, 8, 4, 5, 6], [-0.1, 0.0, -0.2, -0.3, -0.4], "stop", "b", loss_mask=[1, 0, 1, 1, 1])
    prompt = Prompt(prompt_id=0, token_ids=[1, 2], text="")
    return ScoredGroup(RolloutGroup(prompt, [forked, plain], 0, 0), [1.0, 0.0], {}, [True, True])


def test_collate_gives_a_row_per_segment_sharing_its_completions_advantage() -> None:
    batch = collate([_forked_group()], torch.tensor([1.0, -1.0]), pad_token_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 0, 0], [1, 9, 9, 2, 6, 7, 0], [1, 2, 3, 8, 4, 5, 6]]
    assert batch.loss_mask.tolist() == [[0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 1, 0, 1, 1, 1]]
    assert batch.advantages.tolist() == [1.0, 1.0, -1.0]
    assert batch.sample_index.tolist() == [0, 0, 1] and batch.sample_tokens.tolist() == [5.0, 5.0, 4.0]
    assert batch.engine_logprobs[1, 3:5].tolist() == pytest.approx([-0.4, -0.5])
    group = _forked_group().group
    plain = ScoredGroup(RolloutGroup(group.prompt, [group.completions[1]] * 2, 0, 0), [0.0, 0.0], {}, [True, True])
    unforked = collate([plain], torch.zeros(2), pad_token_id=0)
    assert unforked.sample_index is None and unforked.sample_tokens is None  # one row per completion: as before


@pytest.mark.parametrize("mode", algo.LOSS_AGG_MODES)
def test_a_forked_trajectory_counts_once_whatever_the_loss_mode_and_the_split(mode: str) -> None:
    """The loss over the three rows equals the loss of the same tokens with the forked completion as one
    sequence, and splitting its rows over micro-batches (a global denominator) changes nothing."""
    batch = collate([_forked_group()], torch.tensor([1.0, -1.0]), pad_token_id=0)
    lp = torch.linspace(-2.0, -0.1, batch.loss_mask.numel()).reshape(batch.loss_mask.shape)
    kw = {"loss_agg_mode": mode, "max_response_length": 8}

    def loss(rows: list[int], denominator: float | None = None) -> torch.Tensor:
        part = batch.select(torch.tensor(rows))
        value, _ = algo.policy_loss(
            lp[rows], None, part.advantages, part.loss_mask, loss_scale_denominator=denominator,
            sample_tokens=part.sample_tokens, **kw,
        )  # fmt: skip
        return value

    whole = loss([0, 1, 2])
    expected, _ = algo.policy_loss(_joined(batch, lp), None, torch.tensor([1.0, -1.0]), _joined_mask(batch), **kw)
    torch.testing.assert_close(whole, expected)
    count = algo.loss_denominator(batch.loss_mask, mode, batch.sample_tokens)
    assert count == (9.0 if mode == "token-mean" else 2.0)
    parts = [[0], [1, 2]]
    split = sum(loss(rows, algo.data_parallel_denominator(count)) for rows in parts)
    torch.testing.assert_close(split, whole)
    if mode == "seq-mean-token-mean":  # (without sample_tokens the forked completion would count twice)
        naive, _ = algo.policy_loss(lp, None, batch.advantages, batch.loss_mask, **kw)
        assert abs(float(naive) - float(whole)) > 1e-3


def test_a_forked_trajectorys_rows_stay_in_its_mini_batch() -> None:
    group = _forked_group().group
    plain = ScoredGroup(RolloutGroup(group.prompt, [group.completions[1]] * 2, 0, 0), [0.0, 0.0], {}, [True, True])
    batch = collate([_forked_group(), plain], torch.tensor([1.0, -1.0, 1.0, -1.0]), pad_token_id=0)
    assert batch.num_sequences == 5
    works = split_step(
        batch,
        num_ranks=2,
        num_minibatches=2,
        cut=MicroBatching(max_tokens=None, max_sequences=1, padded=True),
        loss_agg_mode="seq-mean-token-mean",
    )
    assert [w.denominators for w in works] == [[2.0, 2.0], [2.0, 2.0]]  # two completions per mini-batch
    for m, owners in enumerate(([0, 0, 1], [2, 3])):
        rows = sorted(w.rows[i] for w in works for micro in w.micro_batches[m] for i in micro)
        assert batch.sample_index[rows].tolist() == owners


def test_fork_reaches_the_engines_and_takes_sequence_level_ratios() -> None:
    from grpo_dist.rollout.multi_turn import MultiTurnSettings
    from grpo_dist.rollout.pool import multi_turn_settings

    fork = ["rollout.multi_turn.env=grpo_dist.envs.tools:ToolEnv", "rollout.multi_turn.template_check=fork"]
    settings = MultiTurnSettings(**multi_turn_settings(parse_config(apply_overrides({}, fork))))  # type: ignore[arg-type]
    assert settings.template_check == "fork"
    gspo = parse_config(
        apply_overrides({}, [*fork, "algo.ratio_level=sequence", "algo.rollout_correction.mode=seq_mask_tis"])
    )
    assert gspo.algo.ratio_level == "sequence" and gspo.algo.rollout_correction.mode == "seq_mask_tis"


def _joined(batch: Any, x: torch.Tensor) -> torch.Tensor:
    """``x`` of ``_forked_group``'s batch with the forked completion as one row: its two segments' loss
    positions side by side (then the plain completion's row as it is)."""
    one = torch.nn.functional.pad(torch.cat([x[0, 1:4], x[1, 3:5]]).unsqueeze(0), (0, 1))
    return torch.cat([one, x[2:3, :]])


def _joined_mask(batch: Any) -> torch.Tensor:
    return torch.tensor([[1.0] * 5 + [0.0], batch.loss_mask[2].tolist()])


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean"])
def test_gspos_sequence_ratio_of_a_forked_trajectory_is_the_whole_trajectorys(mode: str) -> None:
    """GSPO: one ratio per sample, the mean log-ratio over the tokens of all its segments. Loss and gradient
    over the three rows equal those of the same tokens with the forked completion as one sequence; with each
    segment its own ratio (no ``sample_index``) they do not."""
    batch = collate([_forked_group()], torch.tensor([1.0, -1.0]), pad_token_id=0)
    old = torch.linspace(-2.0, -0.1, batch.loss_mask.numel()).reshape(batch.loss_mask.shape)
    shift = torch.zeros_like(old)
    shift[0], shift[1] = 0.3, -0.05  # the first segment moved, the fork hardly: per-segment ratios differ
    kw = {"loss_agg_mode": mode, "ratio_level": "sequence", "clip_ratio_low": 0.5, "clip_ratio_high": 0.5}

    def run(lp_rows: torch.Tensor, old_rows: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, **extra: Any):
        lp = lp_rows.clone().requires_grad_(True)
        value, metrics = algo.policy_loss(lp, old_rows, adv, mask, **kw, **extra)
        value.backward()
        return value.detach(), lp.grad, metrics

    lp = old + shift
    rows = {"sample_tokens": batch.sample_tokens, "sample_index": batch.sample_index}
    value, grad, metrics = run(lp, old, batch.advantages, batch.loss_mask, **rows)
    one, one_grad, one_metrics = run(
        _joined(batch, lp), _joined(batch, old), torch.tensor([1.0, -1.0]), _joined_mask(batch)
    )
    torch.testing.assert_close(value, one)
    torch.testing.assert_close(_joined(batch, grad), one_grad)
    assert metrics["ratio_mean"] == pytest.approx(one_metrics["ratio_mean"])
    segments, _, _ = run(lp, old, batch.advantages, batch.loss_mask, sample_tokens=batch.sample_tokens)
    assert abs(float(segments) - float(value)) > 1e-3


def test_seq_mask_tis_keeps_or_drops_a_forked_trajectory_whole() -> None:
    """The geometric-mean ratio of ``seq_mask_tis`` spans all of a sample's segments: a trajectory whose
    first segment alone is in the band, its fork far outside, is dropped in both rows, as the joined
    sequence is."""
    batch = collate([_forked_group()], torch.tensor([1.0, -1.0]), pad_token_id=0)
    engine = batch.engine_logprobs
    old = engine.clone()
    old[1] += 0.5  # the fork: far off the engine; the first segment and the plain row: exact
    kw = {"mode": "seq_mask_tis", "seq_mask_low": 0.9, "seq_mask_high": 1.1}
    weights, affected = algo.rollout_is_weights(old, engine, batch.loss_mask, sample_index=batch.sample_index, **kw)
    one, one_affected = algo.rollout_is_weights(_joined(batch, old), _joined(batch, engine), _joined_mask(batch), **kw)
    torch.testing.assert_close(_joined(batch, weights), one)
    assert _joined(batch, affected.float()).tolist() == one_affected.float().tolist()
    assert weights[0].sum() == 0 and weights[2].sum() == 4.0  # dropped whole; the plain row kept
    per_segment, _ = algo.rollout_is_weights(old, engine, batch.loss_mask, **kw)
    assert per_segment[0].sum() == 3.0  # (each segment on its own would keep the first)


def test_a_forked_trajectorys_rows_share_a_micro_batch() -> None:
    group = _forked_group().group
    plain = ScoredGroup(RolloutGroup(group.prompt, [group.completions[1]] * 2, 0, 0), [0.0, 0.0], {}, [True, True])
    batch = collate([plain, _forked_group(), _forked_group()], torch.zeros(6), pad_token_id=0)
    for cut in (MicroBatching(None, 1, True), MicroBatching(8, None, False), MicroBatching(20, 2, True)):
        works = split_step(batch, num_ranks=2, num_minibatches=1, cut=cut, loss_agg_mode="seq-mean-token-mean")
        micros = [[w.rows[i] for i in micro] for w in works for micro in w.micro_batches[0]]
        assert sorted(r for m in micros for r in m) == list(range(batch.num_sequences))
        owners = [set(batch.sample_index[m].tolist()) for m in micros]
        for sample in (2, 4):  # the forked completions
            assert sum(sample in o for o in owners) == 1, (cut, micros)
