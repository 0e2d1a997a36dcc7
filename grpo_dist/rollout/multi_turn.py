"""The multi-turn loop: model turns and environment steps, until every trajectory is done (pure logic).

``run_trajectories`` is handed a ``generate`` callable (the engine: token ids in, token ids out) and builds
one ``Trajectory`` per sample. Each round, the engine continues every live trajectory from its own ids in
one batched call; then the environments of the samples that finished a turn answer in a thread pool (a
sandboxed tool call blocks its thread, not the others); their messages are appended through the renderer,
and the next round starts. A trajectory ends when its environment is done, at ``max_turns`` turns, or when
its share of ``max_total_tokens`` is used up.

An environment that raises stops the rollout with an error naming the environment, the row and the turn:
a bug in an environment must not pass for a low reward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from grpo_dist.envs.base import Environment, EnvReply, ModelTurn, load_environment
from grpo_dist.rollout.trajectory import (
    Budgets,
    ChatRenderer,
    GenerateTurn,
    PlainRenderer,
    Renderer,
    Trajectory,
    initial_messages,
)
from grpo_dist.types import Completion, Prompt


class EnvironmentStepError(RuntimeError):
    """An environment raised; names it, the row and the turn."""


def run_trajectories(
    prompts: Sequence[Prompt],
    *,
    generate: GenerateTurn,
    make_env: Callable[[], Environment],
    renderer: Renderer,
    budgets: Budgets,
    max_workers: int = 8,
    env_name: str = "environment",
) -> list[Trajectory]:
    """One trajectory per entry of ``prompts`` (a prompt repeated G times gives its G samples)."""
    trajectories = [Trajectory(p, initial_messages(p), index=k) for k, p in enumerate(prompts)]
    envs = [make_env() for _ in prompts]
    for env, prompt in zip(envs, prompts):
        env.reset(prompt)
    live = list(range(len(prompts)))

    def answer(i: int, turn: ModelTurn) -> EnvReply:
        try:
            return envs[i].step(turn)
        except Exception as exc:  # a user's environment: re-raised with where it happened
            where = f"row {prompts[i].prompt_id}, turn {turn.index}"
            raise EnvironmentStepError(f"{env_name} raised at {where}: {type(exc).__name__}: {exc}") from exc

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(prompts)))) as pool:
        while live:
            budget = [trajectories[i].turn_budget(budgets) for i in live]
            outputs = generate([trajectories[i] for i in live], budget)
            turns = [trajectories[i].add_model_turn(*out) for i, out in zip(live, outputs, strict=True)]
            replies = list(pool.map(answer, live, turns))
            for i, turn, reply in zip(live, turns, replies):
                trajectories[i].add_reply(turn, reply, renderer, budgets)
            live = [i for i in live if not trajectories[i].done]
    return trajectories


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


RoundGenerate = Callable[[list[list[int]], list[int], list[int]], list[tuple[list[int], list[float], str, str]]]
"""``(input ids, max new tokens, seeds) -> (token ids, logprobs, text, finish reason)``, one per request."""


def sample_completions(
    prompts: Sequence[Prompt],
    n: int,
    *,
    settings: MultiTurnSettings,
    tokenizer: Any,
    max_total_tokens: int,
    seed_of: Callable[[int, int, int], int],
    generate: RoundGenerate,
) -> list[list[Completion]]:
    """``n`` trajectories per prompt, as completions (the engine's side of a multi-turn rollout).

    ``seed_of(prompt position, sample, turn)`` seeds each turn's request; chat-message prompts go through
    the chat template, plain ones are continued as text."""
    templated = {p.messages is not None for p in prompts}
    if len(templated) > 1:
        raise ValueError("a multi-turn batch mixes chat-message and plain-text prompts; use one kind per dataset")
    renderer: Renderer = ChatRenderer(tokenizer) if templated == {True} else PlainRenderer(tokenizer)
    samples = [p for p in prompts for _ in range(n)]

    def one_round(trajectories: list[Trajectory], budget: list[int]):
        seeds = [seed_of(t.index // n, t.index % n, len(t.turns)) for t in trajectories]
        return generate([t.input_ids for t in trajectories], budget, seeds)

    trajectories = run_trajectories(
        samples,
        generate=one_round,
        make_env=settings.make_env,
        renderer=renderer,
        budgets=settings.budgets(max_total_tokens),
        max_workers=settings.max_env_workers,
        env_name=settings.env,
    )
    completions = [t.completion() for t in trajectories]
    return [completions[k * n : (k + 1) * n] for k in range(len(prompts))]


def without_stop(text: str, stop: Sequence[str]) -> str:
    """A turn's ``text`` without a trailing user stop string: the engine keeps stop strings in a turn's output
    for the environments' own (a tool call's closing tag), and the user's must not end up in the answer."""
    return next((text.removesuffix(s) for s in stop if s and text.endswith(s)), text)
