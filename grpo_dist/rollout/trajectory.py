"""Token-exact multi-turn trajectories (pure: no vLLM, no Ray).

A trajectory is the prompt's tokens followed by turns: the model's tokens, appended verbatim as the engine
sampled them (loss mask 1, with their sampling logprobs), then the environment's messages turned into
tokens (loss mask 0, logprobs ignored). Nothing is decoded and re-encoded: BPE is not a bijection (the
text of sampled ids can encode to other ids), so re-tokenizing a conversation trains the learner on tokens
the engine never sampled. The engine is given the trajectory's own ids at every turn.

Environment messages become tokens through a ``Renderer``:

* ``PlainRenderer`` (a model without a chat template, or prompts used as plain text): each message's
  content is encoded as it is and appended.
* ``ChatRenderer``: the chat template is rendered over the conversation without and with the new
  messages (as text, the assistant turns as the text of their tokens), and the new part is the suffix. That
  is only right if adding messages never rewrites what came before (the *prefix invariant*), which is
  checked at every turn (``rollout.multi_turn.template_check``): ``strict`` raises naming the row and the
  turn. The template's closing of an assistant turn that the model did not sample itself (a newline after
  its end-of-turn token, or the end-of-turn token when the turn was cut by length) is appended as
  environment tokens too.

Forks (``template_check: fork``). Some templates rewrite history on purpose: Qwen3's drops the reasoning of
assistant turns before the last user message. Appending would then train the model on a context it never
sees at inference, and re-tokenizing the whole conversation would train it on tokens it never sampled.
Instead the trajectory forks: its sequence so far is closed as a ``Segment`` and a new one starts whose
context is the conversation as the template now renders it (tokenized like a prompt). The model's earlier
turns appear in it only as context (loss mask 0); its turns from then on are its own sampled tokens again.
The learner trains on every segment, each from the context the engine was given, and counts the
trajectory once (``TrainBatch.sample_tokens``).

Budgets: ``max_turns`` model turns, ``max_total_tokens`` response tokens shared by all turns (model and
environment, in every segment; a fork's context also stays within the prompt's length plus it, as an
unforked one does), ``max_turn_tokens`` per model turn, and ``max_tool_response_tokens`` per environment
message, cut on ``truncation_side``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from grpo_dist.data.prompts import with_bos
from grpo_dist.envs.base import EnvReply, Message, ModelTurn
from grpo_dist.types import Completion, FinishReason, Prompt, Segment

TruncationSide = Literal["left", "right"]


class TrajectoryError(ValueError):
    """A trajectory cannot be continued token-exactly; the message names the row and the turn."""


class HistoryRewrittenError(TrajectoryError):
    """Adding messages makes the chat template render earlier turns differently (the prefix invariant fails)."""


@dataclass(frozen=True)
class Continuation:
    """What follows a model turn once the environment answered: tokens to append, or (``fork``) the whole
    context of a new segment."""

    ids: list[int]
    fork: bool = False


class Renderer(ABC):
    """Turns messages into the tokens that follow a model turn, with the model's tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @abstractmethod
    def closing(self, history: list[Message], turn: ModelTurn, *, where: str) -> list[int]:
        """Tokens the conversation's format puts after the model's turn that the model did not sample."""

    @abstractmethod
    def messages(self, history: list[Message], new: list[Message], *, where: str) -> list[int]:
        """The tokens of ``new`` messages appended after ``history`` (which ends with the model's turn)."""

    def continuation(self, history: list[Message], turn: ModelTurn, new: list[Message], *, where: str) -> Continuation:
        """The tokens after the model's ``turn`` (the last of ``history``) and the ``new`` messages."""
        return Continuation(self.closing(history, turn, where=where) + self.messages(history, new, where=where))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` as they are (special tokens included: a cut message keeps what it said)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


class PlainRenderer(Renderer):
    """Messages as their content, encoded and appended (the environment writes its own framing)."""

    def closing(self, history: list[Message], turn: ModelTurn, *, where: str) -> list[int]:
        return []

    def messages(self, history: list[Message], new: list[Message], *, where: str) -> list[int]:
        return [t for m in new for t in self.encode(m["content"])]


class ChatRenderer(Renderer):
    """Messages through the tokenizer's chat template, as the suffix of the rendered conversation; with
    ``fork``, a template that rewrote history gives a new segment's context instead of an error."""

    def __init__(self, tokenizer: Any, *, fork: bool = False) -> None:
        super().__init__(tokenizer)
        self.fork = fork

    def _render(self, messages: list[Message], *, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def closing(self, history: list[Message], turn: ModelTurn, *, where: str) -> list[int]:
        before = self._render(history[:-1], generation_prompt=True)
        after = self._render(history, generation_prompt=False)
        content = history[-1]["content"]
        if not after.startswith(before):
            raise HistoryRewrittenError(
                f"{where}: the chat template renders the conversation before the model's turn differently once the "
                "turn is added (its generation prompt is not the start of the assistant turn)"
            )
        start = after.find(content, len(before))
        if start < 0:
            raise HistoryRewrittenError(
                f"{where}: the chat template does not render the model's turn verbatim (it trims or rewrites it)"
            )
        ids = self.encode(after[start + len(content) :])
        special = set(self.tokenizer.all_special_ids)
        if ids and turn.token_ids and turn.token_ids[-1] == ids[0] and ids[0] in special:
            ids = ids[1:]  # the model sampled the end-of-turn token itself (vLLM keeps a stop token's id)
        return ids

    def messages(self, history: list[Message], new: list[Message], *, where: str) -> list[int]:
        before = self._render(history, generation_prompt=False)
        after = self._render([*history, *new], generation_prompt=True)
        if not after.startswith(before):
            i = next((k for k, (a, b) in enumerate(zip(before, after)) if a != b), min(len(before), len(after)))
            raise HistoryRewrittenError(
                f"{where}: the chat template rewrites earlier turns when messages are added (first difference at "
                f"character {i}: {before[i : i + 40]!r} became {after[i : i + 40]!r}); the trajectory cannot be "
                "continued token-exactly (rollout.multi_turn.template_check = 'fork' starts a new sequence there)"
            )
        return self.encode(after[len(before) :])

    def continuation(self, history: list[Message], turn: ModelTurn, new: list[Message], *, where: str) -> Continuation:
        try:
            return super().continuation(history, turn, new, where=where)
        except HistoryRewrittenError:
            if not self.fork:
                raise
            return Continuation(self.context([*history, *new]), fork=True)

    def context(self, messages: list[Message]) -> list[int]:
        """A fork's context: the conversation rendered with the generation cue, tokenized as a prompt is."""
        return with_bos(self.encode(self._render(messages, generation_prompt=True)), self.tokenizer.bos_token_id)


@dataclass(frozen=True)
class Budgets:
    max_turns: int
    max_total_tokens: int
    max_tool_response_tokens: int | None = None
    truncation_side: TruncationSide = "right"
    max_turn_tokens: int | None = None
    """Most new tokens in one model turn (a turn cut there can still be answered)."""


@dataclass
class Turn:
    """One turn, for the rollout log and the reward: the model's text and token count, then what the
    environment answered."""

    index: int
    text: str
    num_tokens: int
    finish_reason: str
    messages: list[Message] = field(default_factory=list)
    reward: float = 0.0
    tool_calls: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    env_s: float = 0.0
    """Seconds the environment took to answer (its tool calls)."""
    forked: bool = False
    """The answer started a new segment (the chat template rewrote history; ``template_check: fork``)."""


@dataclass
class Trajectory:
    prompt: Prompt
    messages: list[Message]
    """The conversation as text, starting with the prompt's messages."""
    token_ids: list[int] = field(default_factory=list)
    """Everything after the current segment's context (the prompt, unless it forked): model and environment
    tokens."""
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    done: bool = False
    finish_reason: FinishReason = "stop"
    index: int = 0
    """The trajectory's position in its rollout (which sample of which prompt: its seeds)."""
    context: list[int] | None = None
    """The current segment's context after a fork (the re-rendered conversation); None: the prompt's ids."""
    closed: list[Segment] = field(default_factory=list)
    """The segments before the current one, in order (the first continues the prompt)."""

    @property
    def input_ids(self) -> list[int]:
        """What the engine is given for the next turn: the segment's context and the segment so far."""
        return [*(self.prompt.token_ids if self.context is None else self.context), *self.token_ids]

    @property
    def response_tokens(self) -> int:
        """Model and environment tokens after the contexts, in every segment."""
        return sum(len(s.token_ids) for s in self.closed) + len(self.token_ids)

    def add_model_turn(self, token_ids: Sequence[int], logprobs: Sequence[float], text: str, finish: str) -> ModelTurn:
        assert len(token_ids) == len(logprobs), (len(token_ids), len(logprobs))
        turn = ModelTurn(len(self.turns), text, list(token_ids), finish)
        self.token_ids += turn.token_ids
        self.loss_mask += [1] * len(token_ids)
        self.logprobs += [float(x) for x in logprobs]
        self.messages.append({"role": "assistant", "content": text})
        self.turns.append(Turn(turn.index, text, len(token_ids), finish))
        return turn

    def _add_env_tokens(self, ids: Sequence[int]) -> None:
        self.token_ids += list(ids)
        self.loss_mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)

    def add_reply(self, turn: ModelTurn, reply: EnvReply, renderer: Renderer, budgets: Budgets) -> None:
        """Record the environment's answer to ``turn`` and append its tokens; ends the trajectory when the
        environment is done, the turns are used up, or the tokens would not fit the budget."""
        record = self.turns[turn.index]
        record.reward, record.tool_calls, record.info = float(reply.reward), int(reply.tool_calls), dict(reply.info)
        if reply.done or not reply.messages:
            self.end("length" if turn.finish_reason == "length" else "stop")
            return
        if turn.finish_reason == "length" and self.num_tokens_left(budgets) <= 0:
            self.end("length")
            return
        where = f"row {self.prompt.prompt_id}, turn {turn.index}"
        messages = [_truncated(m, renderer, budgets) for m in reply.messages]
        after = renderer.continuation(self.messages, turn, messages, where=where)
        if after.fork:
            room = self._room(budgets, response=self.response_tokens, context=len(after.ids))
        else:
            grown = len(after.ids)
            room = self._room(budgets, response=self.response_tokens + grown, context=len(self.input_ids) + grown)
        if room <= 0 or len(self.turns) >= budgets.max_turns:
            self.end("length")  # no room (or no turn) left for the model to read the answer and reply
            record.info["unanswered"] = True  # (the reply is not in the tokens, so not in the record either)
            return
        record.messages = messages
        self.messages += messages
        if after.fork:
            self.closed.append(self._segment())
            self.context, self.token_ids, self.loss_mask, self.logprobs = after.ids, [], [], []
            record.forked = True
        else:
            self._add_env_tokens(after.ids)

    def end(self, reason: FinishReason) -> None:
        """End the trajectory: its environment is done, its budget used up, or the engine aborted its turn."""
        self.done = True
        self.finish_reason = reason

    def _room(self, budgets: Budgets, *, response: int, context: int) -> int:
        """Tokens the model could sample after ``response`` tokens in all, from a context of ``context``."""
        return min(budgets.max_total_tokens - response, len(self.prompt.token_ids) + budgets.max_total_tokens - context)

    def num_tokens_left(self, budgets: Budgets) -> int:
        return self._room(budgets, response=self.response_tokens, context=len(self.input_ids))

    def turn_budget(self, budgets: Budgets) -> int:
        """New tokens the model may sample in its next turn."""
        left = self.num_tokens_left(budgets)
        return left if budgets.max_turn_tokens is None else min(left, budgets.max_turn_tokens)

    def _segment(self) -> Segment:
        context = self.prompt.token_ids if self.context is None else self.context
        return Segment(list(context), list(self.token_ids), list(self.logprobs), list(self.loss_mask))

    def completion(self) -> Completion:
        """The trajectory as the learner and the reward functions take it: its text is the model's last
        turn (what answer-matching rewards should read: a tool's output must not pass for the answer)."""
        first, *forks = [*self.closed, self._segment()]
        return Completion(
            token_ids=first.token_ids,
            logprobs=first.logprobs,
            finish_reason=self.finish_reason,
            text=self.turns[-1].text if self.turns else "",  # the final answer; every turn is in ``turns``
            loss_mask=first.loss_mask,
            turns=[asdict(t) for t in self.turns],
            forks=forks,
        )


def _truncated(message: Message, renderer: Renderer, budgets: Budgets) -> Message:
    """``message`` with its content cut to ``max_tool_response_tokens`` on ``truncation_side`` (the cut is
    made on the content's tokens, so the limit is exact; the template's framing stays whole)."""
    limit = budgets.max_tool_response_tokens
    if limit is None:
        return message
    ids = renderer.encode(message["content"])
    if len(ids) <= limit:
        return message
    kept = ids[:limit] if budgets.truncation_side == "right" else ids[len(ids) - limit :]
    return {**message, "content": renderer.decode(kept)}


def initial_messages(prompt: Prompt) -> list[Message]:
    """The conversation a trajectory starts from: the row's chat messages, or its text as one user message."""
    if prompt.messages is not None:
        return [dict(m) for m in prompt.messages]  # type: ignore[misc]  (whole: as the prompt was rendered)
    return [{"role": "user", "content": prompt.text}]
