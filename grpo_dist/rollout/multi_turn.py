"""The multi-turn loop: model turns and environment steps, until every trajectory is done (pure logic).

``run_trajectories`` builds one ``Trajectory`` per sample from a ``TurnSampler`` (the engine: token ids in,
token ids out) and the samples' environments. Under the ``continuous`` schedule a sample's next turn is
submitted as soon as its environment has answered, while the other samples keep generating: environment
steps run in a thread pool (a sandboxed tool call blocks its thread, not the engine), and the engine only
waits for tools when no sample has a turn to generate. Under ``rounds`` every live sample's turn is
generated in one batch, then every environment answers, then the next round starts: a round waits for its
slowest tool, but what the engine batches together does not depend on how fast the tools were.

A trajectory ends when its environment is done, at ``max_turns`` turns, or when its share of
``max_total_tokens`` is used up. An environment that raises, or does not answer within its deadline, stops
the rollout with an error naming the environment, the row and the turn (a bug in an environment must not
pass for a low reward), and the engine's unfinished turns are aborted.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal

from grpo_dist.envs.base import Environment, EnvReply, ModelTurn, load_environment
from grpo_dist.rollout.seeds import derived_seed
from grpo_dist.rollout.trajectory import (
    Budgets,
    ChatRenderer,
    PlainRenderer,
    Renderer,
    Trajectory,
    initial_messages,
)
from grpo_dist.types import Completion, Prompt

Schedule = Literal["continuous", "rounds"]
TurnOutput = tuple[list[int], list[float], str, str]
"""A model turn as the engine returns it: token ids, their logprobs, text, finish reason."""


class EnvironmentStepError(RuntimeError):
    """An environment raised or missed its deadline; names it, the row and the turn."""


class TurnSampler(ABC):
    """Where model turns come from: ``submit`` queues a trajectory's next turn, ``step`` advances generation
    and returns the turns that finished (each keyed by its trajectory's ``index``)."""

    @abstractmethod
    def submit(self, trajectory: Trajectory, max_tokens: int, seed: int) -> None: ...

    @abstractmethod
    def step(self) -> list[tuple[int, TurnOutput]]: ...

    @abstractmethod
    def abort(self) -> None:
        """Drop every queued or unfinished turn (the rollout failed)."""


BatchGenerate = Callable[[list[Trajectory], list[int], list[int]], list[TurnOutput]]
"""``(trajectories, max new tokens, seeds) -> one TurnOutput each``."""


class BatchedSampler(TurnSampler):
    """Every turn queued since the last step, generated in one call (in trajectory order, so the batch does
    not depend on the order the environments answered in): a batched engine call, or a scripted policy."""

    def __init__(self, generate: BatchGenerate) -> None:
        self.generate = generate
        self.queue: list[tuple[Trajectory, int, int]] = []

    def submit(self, trajectory: Trajectory, max_tokens: int, seed: int) -> None:
        self.queue.append((trajectory, max_tokens, seed))

    def step(self) -> list[tuple[int, TurnOutput]]:
        batch, self.queue = sorted(self.queue, key=lambda q: q[0].index), []
        outputs = self.generate([t for t, _, _ in batch], [m for _, m, _ in batch], [s for _, _, s in batch])
        return [(t.index, out) for (t, _, _), out in zip(batch, outputs, strict=True)]

    def abort(self) -> None:
        self.queue.clear()


@dataclass
class RolloutStats:
    """Where a multi-turn rollout's time went (seconds)."""

    num_trajectories: int = 0
    num_turns: int = 0
    num_replies: int = 0
    """Environment steps that answered (a final turn's step that only says done counts too)."""
    num_tool_calls: int = 0
    wall_s: float = 0.0
    generate_s: float = 0.0
    """In the engine (``TurnSampler.step``)."""
    env_s: float = 0.0
    """In environment steps, summed over samples (they run concurrently: this can exceed ``wall_s``)."""
    env_wait_s: float = 0.0
    """The engine idle, waiting for environments: the tools' cost to the rollout."""
    render_s: float = 0.0
    """Turning environment messages into tokens (chat template, prefix check, tokenizer)."""

    def summary(self) -> dict[str, float]:
        return {
            "trajectories_per_s": self.num_trajectories / self.wall_s if self.wall_s else 0.0,
            "env_wait_frac": self.env_wait_s / self.wall_s if self.wall_s else 0.0,
            "env_s_per_tool_call": self.env_s / self.num_tool_calls if self.num_tool_calls else 0.0,
            "render_ms_per_step": 1e3 * self.render_s / self.num_replies if self.num_replies else 0.0,
            "turns_per_trajectory": self.num_turns / self.num_trajectories if self.num_trajectories else 0.0,
        }


@dataclass
class TrajectoryRollout:
    trajectories: list[Trajectory]
    stats: RolloutStats


def run_trajectories(
    prompts: Sequence[Prompt],
    *,
    sampler: TurnSampler,
    make_env: Callable[[], Environment],
    renderer: Renderer,
    budgets: Budgets,
    max_workers: int = 8,
    env_name: str = "environment",
    schedule: Schedule = "continuous",
    env_timeout_s: float | None = None,
    seed_of: Callable[[Trajectory], int] = lambda t: 0,
) -> TrajectoryRollout:
    """One trajectory per entry of ``prompts`` (a prompt repeated G times gives its G samples).

    ``seed_of(trajectory)`` seeds the trajectory's next turn (and, derived from the first turn's, its
    environment's ``reset``); ``env_timeout_s`` is each environment step's
    deadline (None: none)."""
    clock = time.perf_counter
    start = clock()
    trajectories = [Trajectory(p, initial_messages(p), index=k) for k, p in enumerate(prompts)]
    envs = [make_env() for _ in prompts]
    for env, t in zip(envs, trajectories):
        env.reset(t.prompt, derived_seed(seed_of(t), "env"))  # (seed_of before any turn: the first turn's)
    stats = RolloutStats(num_trajectories=len(prompts))
    pending: dict[Future, tuple[int, ModelTurn, float]] = {}  # environment steps: sample, turn, deadline
    generating = 0

    def where(i: int, turn: ModelTurn) -> str:
        return f"row {prompts[i].prompt_id}, turn {turn.index}"

    def answer(i: int, turn: ModelTurn) -> tuple[EnvReply, float]:
        began = clock()
        try:
            return envs[i].step(turn), clock() - began
        except Exception as exc:  # a user's environment: re-raised with where it happened
            raise EnvironmentStepError(f"{env_name} raised at {where(i, turn)}: {type(exc).__name__}: {exc}") from exc

    def submit(i: int) -> None:
        nonlocal generating
        t = trajectories[i]
        sampler.submit(t, t.turn_budget(budgets), seed_of(t))
        generating += 1

    def overdue(now: float) -> None:
        for f, (i, turn, deadline) in pending.items():
            if now > deadline and not f.done():
                raise EnvironmentStepError(
                    f"{env_name} did not answer within rollout.multi_turn.env_timeout_s = {env_timeout_s} s at "
                    f"{where(i, turn)}"
                )

    pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(prompts))), thread_name_prefix="env-step")
    try:
        for i in range(len(trajectories)):
            submit(i)
        while generating or pending:
            if generating and not (schedule == "rounds" and pending):
                began = clock()
                finished = sampler.step()
                stats.generate_s += clock() - began
                for i, output in finished:
                    generating -= 1
                    turn = trajectories[i].add_model_turn(*output)
                    stats.num_turns += 1
                    deadline = clock() + env_timeout_s if env_timeout_s is not None else float("inf")
                    pending[pool.submit(answer, i, turn)] = (i, turn, deadline)
                ready = [f for f in pending if f.done()]
            else:
                began = clock()
                first_deadline = min(d for _, _, d in pending.values())
                timeout = None if first_deadline == float("inf") else max(0.0, first_deadline - began)
                ready = list(wait(pending, timeout=timeout, return_when=FIRST_COMPLETED).done)
                stats.env_wait_s += clock() - began
            for f in ready:
                i, turn, _ = pending.pop(f)
                reply, seconds = f.result()
                trajectories[i].turns[turn.index].env_s = seconds
                stats.env_s += seconds
                stats.num_replies += 1
                stats.num_tool_calls += reply.tool_calls
                began = clock()
                trajectories[i].add_reply(turn, reply, renderer, budgets)
                stats.render_s += clock() - began
                if not trajectories[i].done:
                    submit(i)
            overdue(clock())
    except BaseException:
        sampler.abort()
        pool.shutdown(wait=False, cancel_futures=True)  # a hung environment step keeps its thread, not the run
        raise
    pool.shutdown(wait=True)
    stats.wall_s = clock() - start
    return TrajectoryRollout(trajectories, stats)


@dataclass(frozen=True)
class MultiTurnSettings:
    """What an engine needs to run trajectories (``rollout.multi_turn`` and the response budget)."""

    env: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    max_turns: int = 4
    max_tool_response_length: int | None = None
    tool_response_truncation: str = "right"
    max_env_workers: int = 8
    max_tokens_per_turn: int | None = None
    schedule: Schedule = "continuous"
    env_timeout_s: float | None = None

    def budgets(self, max_total_tokens: int) -> Budgets:
        return Budgets(
            max_turns=self.max_turns,
            max_total_tokens=max_total_tokens,
            max_tool_response_tokens=self.max_tool_response_length,
            truncation_side=self.tool_response_truncation,  # type: ignore[arg-type]
            max_turn_tokens=self.max_tokens_per_turn,
        )

    def make_env(self) -> Environment:
        return load_environment(self.env, self.env_kwargs)


def sample_completions(
    prompts: Sequence[Prompt],
    n: int,
    *,
    settings: MultiTurnSettings,
    tokenizer: Any,
    max_total_tokens: int,
    seed_of: Callable[[int, int, int], int],
    sampler: TurnSampler,
) -> tuple[list[list[Completion]], RolloutStats]:
    """``n`` trajectories per prompt, as completions (the engine's side of a multi-turn rollout), and where
    the time went.

    ``seed_of(prompt position, sample, turn)`` seeds each turn's request; chat-message prompts go through
    the chat template, plain ones are continued as text."""
    templated = {p.messages is not None for p in prompts}
    if len(templated) > 1:
        raise ValueError("a multi-turn batch mixes chat-message and plain-text prompts; use one kind per dataset")
    renderer: Renderer = ChatRenderer(tokenizer) if templated == {True} else PlainRenderer(tokenizer)
    rollout = run_trajectories(
        [p for p in prompts for _ in range(n)],
        sampler=sampler,
        make_env=settings.make_env,
        renderer=renderer,
        budgets=settings.budgets(max_total_tokens),
        max_workers=settings.max_env_workers,
        env_name=settings.env,
        schedule=settings.schedule,
        env_timeout_s=settings.env_timeout_s,
        seed_of=lambda t: seed_of(t.index // n, t.index % n, len(t.turns)),
    )
    completions = [t.completion() for t in rollout.trajectories]
    return [completions[k * n : (k + 1) * n] for k in range(len(prompts))], rollout.stats


def without_stop(text: str, stop: Sequence[str]) -> str:
    """A turn's ``text`` without a trailing user stop string: the engine keeps stop strings in a turn's output
    for the environments' own (a tool call's closing tag), and the user's must not end up in the answer."""
    return next((text.removesuffix(s) for s in stop if s and text.endswith(s)), text)
