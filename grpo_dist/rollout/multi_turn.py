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

import logging
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

logger = logging.getLogger(__name__)

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
    environment's ``reset``); ``env_timeout_s`` is the deadline of each environment step from when it starts
    running (None: none). ``rounds`` is meant for a ``BatchedSampler``: a sampler that generates request by
    request would sit idle while a round's tools run."""
    loop = _Loop(prompts, sampler, make_env, renderer, budgets, env_name, env_timeout_s, seed_of)
    pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(prompts))), thread_name_prefix="env-step")
    try:
        loop.run(pool, schedule)
    except BaseException:
        try:
            sampler.abort()  # no unfinished request may stay in the engine for its next rollout
        except Exception:
            logger.exception("aborting the engine's unfinished turns failed")
        # A hung environment step keeps its thread (threads cannot be killed); the error reaches the run,
        # which stops the engine's process.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    loop.stats.wall_s = time.perf_counter() - loop.began
    return TrajectoryRollout(loop.trajectories, loop.stats)


class _Loop:
    """``run_trajectories``' state: the trajectories, their environments, the turns being generated and the
    environment steps under way."""

    def __init__(
        self,
        prompts: Sequence[Prompt],
        sampler: TurnSampler,
        make_env: Callable[[], Environment],
        renderer: Renderer,
        budgets: Budgets,
        env_name: str,
        env_timeout_s: float | None,
        seed_of: Callable[[Trajectory], int],
    ) -> None:
        self.began = time.perf_counter()
        self.sampler, self.renderer, self.budgets, self.seed_of = sampler, renderer, budgets, seed_of
        self.env_name, self.env_timeout_s = env_name, env_timeout_s
        self.trajectories = [Trajectory(p, initial_messages(p), index=k) for k, p in enumerate(prompts)]
        self.stats = RolloutStats(num_trajectories=len(prompts))
        self.envs: list[Environment] = []
        for t in self.trajectories:
            env = make_env()
            try:
                env.reset(t.prompt, derived_seed(seed_of(t), "env"))  # (seed_of before any turn: the first turn's)
            except Exception as exc:
                raise EnvironmentStepError(f"{env_name}.reset raised at row {t.prompt.prompt_id}: {exc!r}") from exc
            self.envs.append(env)
        self.generating = 0
        self.pending: dict[Future, tuple[int, ModelTurn]] = {}  # environment steps: sample, turn
        self.started: dict[tuple[int, int], float] = {}  # (sample, turn) -> when its step began running

    def where(self, i: int, turn: ModelTurn) -> str:
        return f"row {self.trajectories[i].prompt.prompt_id}, turn {turn.index}"

    def answer(self, i: int, turn: ModelTurn) -> tuple[EnvReply, float]:
        """One environment step, in a worker thread."""
        began = self.started[i, turn.index] = time.perf_counter()
        try:
            return self.envs[i].step(turn), time.perf_counter() - began
        except Exception as exc:  # a user's environment: re-raised with where it happened
            where = self.where(i, turn)
            raise EnvironmentStepError(f"{self.env_name} raised at {where}: {type(exc).__name__}: {exc}") from exc

    def submit(self, i: int) -> None:
        t = self.trajectories[i]
        self.sampler.submit(t, t.turn_budget(self.budgets), self.seed_of(t))
        self.generating += 1

    def time_left(self) -> float | None:
        """Seconds until the first running environment step's deadline (None: no deadline)."""
        if self.env_timeout_s is None:
            return None
        now = time.perf_counter()
        running = [self.started.get((i, turn.index)) for i, turn in self.pending.values()]
        ends = [began + self.env_timeout_s - now for began in running if began is not None]
        return max(0.0, min([*ends, 1.0]))  # (at least every second: a step may start while this waits)

    def check_deadlines(self) -> None:
        if self.env_timeout_s is None:
            return
        now = time.perf_counter()
        for f, (i, turn) in self.pending.items():
            began = self.started.get((i, turn.index))
            if began is not None and now - began > self.env_timeout_s and not f.done():
                raise EnvironmentStepError(
                    f"{self.env_name} did not answer within rollout.multi_turn.env_timeout_s = {self.env_timeout_s} "
                    f"s at {self.where(i, turn)}"
                )

    def run(self, pool: ThreadPoolExecutor, schedule: Schedule) -> None:
        clock, stats = time.perf_counter, self.stats
        for i in range(len(self.trajectories)):
            self.submit(i)
        while self.generating or self.pending:
            if self.generating and not (schedule == "rounds" and self.pending):
                began = clock()
                finished = self.sampler.step()
                stats.generate_s += clock() - began
                for i, output in finished:
                    self.generating -= 1
                    turn = self.trajectories[i].add_model_turn(*output)
                    stats.num_turns += 1
                    if turn.finish_reason in ("stop", "length"):
                        self.pending[pool.submit(self.answer, i, turn)] = (i, turn)
                    else:  # the engine aborted the request: no environment step, the sample ends here
                        self.trajectories[i].end("abort")
                ready = [f for f in self.pending if f.done()]
            else:
                began = clock()
                ready = list(wait(self.pending, timeout=self.time_left(), return_when=FIRST_COMPLETED).done)
                stats.env_wait_s += clock() - began
            for f in ready:
                self.collect(f)
            self.check_deadlines()

    def collect(self, f: Future) -> None:
        """A finished environment step: record it, append its answer, and submit the sample's next turn."""
        i, turn = self.pending.pop(f)
        reply, seconds = f.result()
        t, stats = self.trajectories[i], self.stats
        t.turns[turn.index].env_s = seconds
        stats.env_s += seconds
        stats.num_replies += 1
        stats.num_tool_calls += reply.tool_calls
        began = time.perf_counter()
        t.add_reply(turn, reply, self.renderer, self.budgets)
        stats.render_s += time.perf_counter() - began
        if not t.done:
            self.submit(i)


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
    template_check: Literal["strict", "fork"] = "strict"

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
    the chat template (forking where it rewrites history, under ``template_check: fork``), plain ones are
    continued as text."""
    templated = {p.messages is not None for p in prompts}
    if len(templated) > 1:
        raise ValueError("a multi-turn batch mixes chat-message and plain-text prompts; use one kind per dataset")
    renderer: Renderer = (
        ChatRenderer(tokenizer, fork=settings.template_check == "fork")
        if templated == {True}
        else PlainRenderer(tokenizer)
    )
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
