"""The environment ``bench tools`` names by import path (kept apart so the engines import nothing else of
the benchmarks)."""

from __future__ import annotations

import time

from grpo_dist.envs.base import Environment, EnvReply, ModelTurn
from grpo_dist.envs.tools import ToolEnv
from grpo_dist.types import Prompt


class FixedCalls(Environment):
    """Answers each of the model's first ``turns - 1`` turns with one real call of ``ToolEnv``'s ``tool`` on
    a fixed ``argument`` (the calculator, or Python in the sandbox), whatever the model wrote, then ends.

    A benchmark stand-in for a model that has learnt to call: the benchmark models have random weights and
    write no calls, and a fixed schedule of calls makes the runs comparable. The tool calls are real;
    ``latency_s`` adds a wait to each, a stand-in for a remote tool (a search API, a judge model) whose time
    goes to waiting rather than to this machine's cores."""

    def __init__(
        self, tool: str = "calculator", argument: str = "37*48", turns: int = 3, latency_s: float = 0.0
    ) -> None:
        self.tools = ToolEnv(tools=[tool])
        self.tool, self.argument, self.turns, self.latency_s = tool, argument, turns, latency_s

    def reset(self, prompt: Prompt, seed: int) -> None:
        pass

    def step(self, turn: ModelTurn) -> EnvReply:
        if turn.index >= self.turns - 1:
            return EnvReply(done=True)
        time.sleep(self.latency_s)
        result = self.tools.call(self.tool, self.argument)
        return EnvReply(messages=[{"role": "tool", "content": f"<result>{result}</result>"}], tool_calls=1)
