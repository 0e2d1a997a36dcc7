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

from grpo_dist.envs.base import Environment, EnvReply, ModelTurn
from grpo_dist.rollout.trajectory import Budgets, GenerateTurn, Renderer, Trajectory, initial_messages
from grpo_dist.types import Prompt


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
    trajectories = [Trajectory(p, initial_messages(p)) for p in prompts]
    envs = [make_env() for _ in prompts]
    for env, prompt in zip(envs, prompts):
        env.reset(prompt)
    live = list(range(len(prompts)))
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(prompts)))) as pool:
        while live:
            budget = [trajectories[i].num_tokens_left(budgets) for i in live]
            outputs = generate([trajectories[i] for i in live], budget)
            turns = [trajectories[i].add_model_turn(*out) for i, out in zip(live, outputs, strict=True)]

            def answer(i: int, turn: ModelTurn) -> EnvReply:
                try:
                    return envs[i].step(turn)
                except Exception as exc:  # a user's environment: re-raised with where it happened
                    where = f"row {prompts[i].prompt_id}, turn {turn.index}"
                    raise EnvironmentStepError(f"{env_name} raised at {where}: {type(exc).__name__}: {exc}") from exc

            replies = list(pool.map(answer, live, turns))
            for i, turn, reply in zip(live, turns, replies):
                trajectories[i].add_reply(turn, reply, renderer, budgets)
            live = [i for i in live if not trajectories[i].done]
    return trajectories
