"""The environment interface of a multi-turn rollout (pure: no vLLM, no Ray).

One ``Environment`` object serves one trajectory: ``reset`` starts it from the dataset row, then each model
turn goes to ``step``, which answers with the next messages (a tool's output, a user's reply), a step reward
and whether the trajectory is done. The environment sees text *and* token ids of the model's turn, but it
only ever answers in messages: turning them into tokens is the rollout's job (``rollout.trajectory``), so
that the model's own tokens are kept verbatim and nothing is decoded and re-encoded.

An environment's ``step`` may block (a tool call); the rollout runs the environments of different samples
in threads, so one slow tool does not hold up the others' turns.
"""

from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, TypedDict

from grpo_dist.types import Prompt


class Message(TypedDict):
    """A chat message as chat templates take it: ``role`` (``user``, ``tool``, ...) and ``content``."""

    role: str
    content: str


@dataclass(frozen=True)
class ModelTurn:
    """What the model said in one turn: its text, its exact token ids, and why it stopped."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str


@dataclass(frozen=True)
class EnvReply:
    """The environment's answer to a turn. ``messages`` go back to the model (empty when ``done``);
    ``reward`` is this step's reward; ``tool_calls`` counts the tool calls the turn made (for metrics);
    ``info`` is kept in the rollout log."""

    messages: list[Message] = field(default_factory=list)
    reward: float = 0.0
    done: bool = False
    tool_calls: int = 0
    info: dict[str, Any] = field(default_factory=dict)


class Environment(ABC):
    """Subclass and name ``package.module:Class`` in ``rollout.multi_turn.env``; ``env_kwargs`` are passed to
    the constructor. One instance per trajectory: state may live on ``self``."""

    stop: tuple[str, ...] = ()
    """Strings that end a model turn where the environment should answer (a tool call's closing tag); the
    engine stops there and keeps the string in the turn's text and tokens."""

    @abstractmethod
    def reset(self, prompt: Prompt, seed: int) -> None:
        """Start a trajectory from its dataset row (``prompt.ground_truth``, ``prompt.extra_info``...).

        ``seed`` is the sample's own (from the run seed, the step, the row and the sample index, like the
        engine's sampling seeds): a stochastic environment that draws from ``random.Random(seed)`` answers
        the same on a retried or resumed rollout, and differently for each sample of a group."""

    @abstractmethod
    def step(self, turn: ModelTurn) -> EnvReply:
        """Answer the model's turn. Raising stops the rollout with an error naming the environment, the row and
        the turn (a bug in an environment must not pass for a low reward): answer a bad call with a message."""


def environment_class(path: str, kwargs: dict[str, Any] | None = None) -> type[Environment]:
    """The environment class at ``package.module:Class``, checked without building one: it imports, is an
    ``Environment``, ``kwargs`` fit its constructor and its ``reset`` takes ``(prompt, seed)``. A clear
    ``ValueError`` otherwise (``validate`` and the preflight report it before any engine starts)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"rollout.multi_turn.env = {path!r}: expected 'package.module:Class'")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"rollout.multi_turn.env = {path!r}: cannot import it ({exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, Environment)):
        raise ValueError(f"rollout.multi_turn.env = {path!r} is not a subclass of grpo_dist.envs.Environment")
    try:
        inspect.signature(cls).bind(**(kwargs or {}))
    except TypeError as exc:
        raise ValueError(f"rollout.multi_turn.env_kwargs do not fit {path}: {exc}") from exc
    try:
        inspect.signature(cls.reset).bind(None, None, 0)
    except TypeError:
        raise ValueError(
            f"rollout.multi_turn.env = {path!r}: its reset must take (self, prompt, seed), it takes "
            f"{inspect.signature(cls.reset)} (seed: the sample's own, for a stochastic environment)"
        ) from None
    return cls


def load_environment(path: str, kwargs: dict[str, Any] | None = None) -> Environment:
    """An instance of the environment class at ``package.module:Class``; a clear error if it is not one, or
    if its constructor raises (the kwargs fit: ``environment_class`` bound them)."""
    cls = environment_class(path, kwargs)
    try:
        return cls(**(kwargs or {}))
    except Exception as exc:  # a user's constructor: re-raised naming it
        raise ValueError(
            f"rollout.multi_turn.env = {path!r}: its constructor raised {type(exc).__name__}: {exc}"
        ) from exc
