"""Model turns of a multi-turn rollout from a vLLM engine, under either schedule of ``multi_turn``.

* ``EngineTurnSampler`` (``continuous``): each turn is its own request of the running engine
  (``LLMEngine.add_request``), and ``step`` runs one engine step (``LLMEngine.step``), so a sample whose
  environment has answered joins the running batch at once while the others are still generating or
  waiting for their tools: vLLM's continuous batching, with the tool calls in the gaps.
* ``rounds_sampler`` (``rounds``): the queued turns in one ``LLM.generate`` call.

The engine hands in how to make a request and read an output (``engine.py`` is the module that imports
vLLM; this one only drives the objects it is given).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from grpo_dist.rollout.multi_turn import BatchedSampler, TurnOutput, TurnSampler
from grpo_dist.rollout.trajectory import Trajectory

MakeRequest = Callable[[list[int], int, int], tuple[Any, Any]]
"""``(input ids, max new tokens, seed) -> (prompt, SamplingParams)`` of one turn's request."""
ReadOutput = Callable[[Any], TurnOutput]
"""A finished request's ``CompletionOutput`` as a turn."""

_rollouts = itertools.count()


class EngineTurnSampler(TurnSampler):
    def __init__(self, llm: Any, make_request: MakeRequest, read_output: ReadOutput, lora_request: Any = None) -> None:
        self.engine = llm.llm_engine
        self.make_request, self.read_output, self.lora_request = make_request, read_output, lora_request
        self.prefix = f"turn-{next(_rollouts)}"
        self.live: dict[str, int] = {}
        """Unfinished request ids and their trajectories' indices."""

    def submit(self, trajectory: Trajectory, max_tokens: int, seed: int) -> None:
        request_id = f"{self.prefix}-{trajectory.index}-{len(trajectory.turns)}"
        prompt, params = self.make_request(trajectory.input_ids, max_tokens, seed)
        (rendered,) = self.engine.renderer.render_cmpl([prompt])  # (the engine's input, as add_request wants it)
        self.engine.add_request(request_id, rendered, params, lora_request=self.lora_request)
        self.live[request_id] = trajectory.index

    def step(self) -> list[tuple[int, TurnOutput]]:
        finished = []
        for output in self.engine.step():
            if output.finished and output.request_id in self.live:
                finished.append((self.live.pop(output.request_id), self.read_output(output.outputs[0])))
        return finished

    def abort(self) -> None:
        if self.live:
            self.engine.abort_request(list(self.live))
            self.live.clear()


def rounds_sampler(llm: Any, make_request: MakeRequest, read_output: ReadOutput, lora_request: Any = None):
    def generate(trajectories: list[Trajectory], budgets: list[int], seeds: list[int]) -> list[TurnOutput]:
        requests = [make_request(t.input_ids, m, s) for t, m, s in zip(trajectories, budgets, seeds, strict=True)]
        outputs = llm.generate(
            [r for r, _ in requests], [p for _, p in requests], use_tqdm=False, lora_request=lora_request
        )
        return [read_output(o.outputs[0]) for o in outputs]

    return BatchedSampler(generate)


def turn_sampler(schedule: str, llm: Any, make_request: MakeRequest, read_output: ReadOutput, lora_request: Any = None):
    """The sampler of ``rollout.multi_turn.schedule``."""
    if schedule == "continuous":
        return EngineTurnSampler(llm, make_request, read_output, lora_request)
    if schedule == "rounds":
        return rounds_sampler(llm, make_request, read_output, lora_request)
    raise ValueError(f"rollout.multi_turn.schedule = {schedule!r}: expected 'continuous' or 'rounds'")
