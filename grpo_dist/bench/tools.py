"""``bench tools``: multi-turn rollouts with tool calls, against the same engine's single-turn rollouts.

Each trajectory is ``TURNS`` model turns of ``TURN_TOKENS`` tokens with a real tool call between them
(``FixedCalls``: the calculator, or Python in the sandbox, on a fixed argument, since a random-weight
model writes no calls of its own). Measured in one run, interleaved:

* trajectories/s with the calculator, bound: one turn of the same number of model tokens (what turns
  cost: a re-prefill of the whole trajectory each turn, the tokenization of the answers, the loop);
* trajectories/s under the ``continuous`` schedule, bound: the ``rounds`` schedule (what overlapping tool
  calls with generation gains), with two slow tools: Python in the sandbox (a process per call, whose
  work competes with the engine for the same cores) and a remote tool (``latency_s`` of waiting per
  call, as a search API or a judge model on other machines would cost);
* from each rollout's ``RolloutStats``: the share of the rollout the engine sat waiting for tools, the
  time of one tool call, and the time of tokenizing one environment answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from grpo_dist.bench.common import (
    Settings,
    bench_config,
    bench_model,
    engine_settings,
    interleaved,
    model_facts,
    per_model,
    private_ray,
    synthetic_prompts,
)
from grpo_dist.bench.records import best, figure

TURNS, TURN_TOKENS = 3, 16
PYTHON_CALL = "print(sum(range(10**5)))"
ENV = "grpo_dist.bench.tool_envs:FixedCalls"
REMOTE_LATENCY_S, REMOTE_WORKERS = 0.1, 32
"""A remote tool's wait per call, and the threads that wait (waiting costs no core: more than the default 8)."""


def _calls(schedule: str, max_env_workers: int = 8, **env_kwargs: Any) -> dict[str, Any]:
    return {"env_kwargs": {"turns": TURNS, **env_kwargs}, "schedule": schedule, "max_env_workers": max_env_workers}


VARIANTS: dict[str, dict[str, Any] | None] = {
    "single_turn": None,
    "calculator": _calls("continuous", tool="calculator"),
    "python_continuous": _calls("continuous", tool="python", argument=PYTHON_CALL),
    "python_rounds": _calls("rounds", tool="python", argument=PYTHON_CALL),
    "remote_continuous": _calls("continuous", REMOTE_WORKERS, tool="calculator", latency_s=REMOTE_LATENCY_S),
    "remote_rounds": _calls("rounds", REMOTE_WORKERS, tool="calculator", latency_s=REMOTE_LATENCY_S),
}


def _tools_model(s: Settings, model: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import ray

    from grpo_dist.rollout.engine import SamplingSpec, create_engine_actor, engine_env

    n_prompts, g, plen = s.rollout_prompts, s.group_size, s.rollout_prompt_len
    path = bench_model(model)
    facts = model_facts(path)
    cfg = bench_config(path, ["rollout.num_engines=1"])
    response = TURNS * TURN_TOKENS + 64  # the model's tokens and the tools' answers
    engine_args = engine_settings(cfg, path, plen + response)
    prompts = synthetic_prompts(n_prompts, plen, facts["vocab_size"], seed=0)
    engines: dict[str, Any] = {}
    out: dict[str, Any] = {"seconds": {}, "stats": {}}
    with private_ray(verbose=s.verbose):
        try:
            for name, mt in VARIANTS.items():
                settings = None if mt is None else {"env": ENV, "max_turns": TURNS, "max_tokens_per_turn": TURN_TOKENS}
                engines[name] = create_engine_actor(
                    options={"num_cpus": 1},
                    env=engine_env(device="cpu", cpu_ids=None),
                    engine_index=0,
                    device="cpu",
                    **engine_args,
                    multi_turn=None if mt is None else {**settings, **mt},
                )
            ray.get([e.info.remote() for e in engines.values()], timeout=600)

            def rollout(name: str, rep: int) -> dict[str, float]:
                tokens = TURNS * TURN_TOKENS if name == "single_turn" else response
                spec = SamplingSpec(n=g, max_tokens=tokens, temperature=1.0, ignore_eos=True)
                engine = engines[name]
                t0 = time.perf_counter()
                groups = ray.get(
                    engine.generate.remote(prompts, spec, run_seed=0, stream="bench", step=rep), timeout=600
                )
                seconds = time.perf_counter() - t0
                sampled = [sum(c.mask()) for grp in groups for c in grp.completions]
                assert all(n == TURNS * TURN_TOKENS for n in sampled), sampled  # the same model tokens everywhere
                if name != "single_turn":
                    stats = ray.get(engine.__ray_call__.remote(lambda self: self.rollout_stats.summary()), timeout=60)
                    out["stats"].setdefault(name, []).append(stats)
                return {"seconds": seconds, "trajectories": float(len(sampled))}

            runs: dict[str, Callable[[int], dict[str, float]]] = {n: lambda r, n=n: rollout(n, r) for n in engines}
            samples = interleaved(runs, s.reps)
        finally:
            for engine in engines.values():
                ray.kill(engine, no_restart=True)
    out["seconds"] = {n: [x["seconds"] for x in v] for n, v in samples.items()}
    out["trajectories"] = n_prompts * g
    model_config = {
        **facts,
        "prompts": n_prompts,
        "group_size": g,
        "turns": TURNS,
        "tokens_per_turn": TURN_TOKENS,
        "python_call": PYTHON_CALL,
        "variants": VARIANTS,
    }
    return model_config, _figures(model, out)


def _figures(model: str, out: dict[str, Any]) -> list[dict[str, Any]]:
    bench = {"benchmark": "tools", "model": model, "details": out}
    n = out["trajectories"]
    rate = {k: n / best(v) for k, v in out["seconds"].items()}

    def mean(name: str, key: str) -> float:
        values = [x[key] for x in out["stats"][name]]
        return sum(values) / len(values)

    def shares(name: str) -> str:
        return (
            f"engine waiting for tools {mean(name, 'env_wait_frac'):.0%} of the rollout; one tool call "
            f"{1e3 * mean(name, 'env_s_per_tool_call'):.1f} ms; tokenizing one answer "
            f"{mean(name, 'render_ms_per_step'):.2f} ms"
        )

    return [
        figure(
            **bench,
            name=f"multi-turn rollout, calculator ({TURNS} turns x {TURN_TOKENS} tokens)",
            unit="trajectories/s",
            value=rate["calculator"],
            bound=rate["single_turn"],
            bound_name=f"one turn of {TURNS * TURN_TOKENS} tokens on the same engine",
            note=shares("calculator"),
        ),
        *(
            figure(
                **bench,
                name=f"multi-turn rollout, {tool}, continuous schedule",
                unit="trajectories/s",
                value=rate[f"{key}_continuous"],
                bound=rate[f"{key}_rounds"],
                bound_name="the rounds schedule (a round waits for its slowest tool)",
                note=f"continuous: {shares(key + '_continuous')}; rounds: {shares(key + '_rounds')}",
            )
            for key, tool in (
                ("python", "Python tool in the sandbox (a process per call, on the engine's cores)"),
                (
                    "remote",
                    f"a remote tool ({1e3 * REMOTE_LATENCY_S:.0f} ms waiting per call, {REMOTE_WORKERS} threads)",
                ),
            )
        ),
    ]


def bench_tools(s: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return per_model(s.rollout_models[:1], _tools_model, s)
