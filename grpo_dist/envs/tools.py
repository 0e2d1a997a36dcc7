"""``ToolEnv``: the model calls tools (a calculator, a sandboxed Python interpreter) between its turns.

Two call formats, chosen by ``call_format``:

* ``tags`` (models without a chat template, such as the embedded one): ``<calculator>37*48</calculator>``
  or ``<python>print(2**10)</python>`` anywhere in the turn; each answer comes back as
  ``<result>...</result>`` (the reply's content is exactly that text).
* ``hermes`` (the chat templates of Qwen2.5, SmolLM2 and most tool-calling models):
  ``<tool_call>{"name": "calculator", "arguments": {"expression": "37*48"}}</tool_call>``; each answer is
  a ``tool`` message whose content is the result (the template adds its own framing).

A turn with no tool call ends the trajectory (it is the final answer); so does a turn cut by length. A call
that fails (bad syntax, a Python error, a timeout) is answered with the error text: the model learns from
it, and ``info`` counts it. ``python`` runs each call in the project's sandbox (``reward.sandbox``: own
process group, rlimits, no network where the kernel allows), with ``timeout_s`` per call.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from collections.abc import Callable
from typing import Any, Literal

from grpo_dist.envs.base import Environment, EnvReply, Message, ModelTurn
from grpo_dist.types import Prompt

CallFormat = Literal["tags", "hermes"]
TOOLS = ("calculator", "python")
_TAG = re.compile(r"<(calculator|python)>(.*?)</\1>", re.DOTALL)
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_ARGUMENT = {"calculator": "expression", "python": "code"}

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
MAX_EXPONENT = 64
MAX_MAGNITUDE = 10**30


MAX_EXPRESSION_CHARS = 256


def calculate(expression: str) -> str:
    """The value of an arithmetic expression (numbers, + - * / // % **, parentheses), as text. Anything else
    (names, calls, huge numbers or powers, deep nesting) raises ValueError: the calculator never evaluates
    code, and no expression a model writes can make it raise anything else."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError) as exc:
        raise ValueError(f"not an arithmetic expression: {getattr(exc, 'msg', type(exc).__name__)}") from None

    def checked(x: Any) -> int | float:
        if isinstance(x, complex) or (isinstance(x, float) and not math.isfinite(x)) or abs(x) > MAX_MAGNITUDE:
            raise ValueError("number out of range")
        return x

    def value(node: ast.AST) -> int | float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return checked(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
                raise ValueError(f"exponent {right} is above {MAX_EXPONENT}")
            return checked(_BINARY[type(node.op)](left, right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return checked(_UNARY[type(node.op)](value(node.operand)))
        raise ValueError(f"unsupported syntax: {ast.dump(node)[:60]}")

    try:
        result = value(tree.body)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except (ArithmeticError, RecursionError, MemoryError) as exc:  # OverflowError of a float operation, ...
        raise ValueError(f"number out of range ({type(exc).__name__})") from None
    if isinstance(result, float):
        if result.is_integer():
            return str(int(result))
        return f"{result:.10g}"
    return str(result)


def run_python(code: str, *, timeout_s: float) -> str:
    """``code``'s stdout in the sandbox (its stderr's end when it fails)."""
    from grpo_dist.reward.sandbox import run_sandboxed

    result = run_sandboxed(code, timeout_s=timeout_s, cpu_time_s=max(1, math.ceil(timeout_s)), memory_mb=512)
    if result.timed_out:
        raise ValueError(f"timed out after {timeout_s:g} s")
    if not result.ok:
        raise ValueError(result.stderr.strip()[-500:] or f"exit status {result.returncode}")
    return result.stdout.rstrip("\n")


def parse_calls(text: str, call_format: CallFormat) -> list[tuple[str, str]]:
    """``(tool, argument)`` of each tool call in a model turn, in order; a malformed call is returned as
    ``("invalid", why)`` so that the model is told."""
    if call_format == "tags":
        return [(name, body) for name, body in _TAG.findall(text)]
    calls = []
    for raw in _HERMES.findall(text):
        try:
            call = json.loads(raw)
            name = call["name"]
            argument = call.get("arguments", {})
            argument = json.loads(argument) if isinstance(argument, str) else argument
            calls.append((str(name), str(argument[_ARGUMENT[name]])))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            calls.append(("invalid", f"malformed tool call ({type(exc).__name__}: {exc})"))
    return calls


class ToolEnv(Environment):
    def __init__(
        self,
        *,
        tools: list[str] | None = None,
        call_format: CallFormat = "tags",
        timeout_s: float = 5.0,
        max_calls_per_turn: int = 4,
    ) -> None:
        """``tools``: which of ``calculator`` and ``python`` the model may call (default both)."""
        self.tools = tuple(tools or TOOLS)
        unknown = [t for t in self.tools if t not in TOOLS]
        if unknown:
            raise ValueError(f"ToolEnv tools {unknown}: expected some of {list(TOOLS)}")
        if call_format not in ("tags", "hermes"):
            raise ValueError(f"ToolEnv call_format {call_format!r}: expected 'tags' or 'hermes'")
        self.call_format: CallFormat = call_format
        self.timeout_s = float(timeout_s)
        self.max_calls_per_turn = int(max_calls_per_turn)
        self.num_errors = 0
        # tags: the turn ends at a call's closing tag. hermes (chat templates): the model ends its turn itself,
        # after its calls, as the template's format has it (a stop at </tool_call> would never train that)
        self.stop = tuple(f"</{t}>" for t in self.tools) if call_format == "tags" else ()

    def reset(self, prompt: Prompt, seed: int) -> None:
        self.num_errors = 0

    def call(self, tool: str, argument: str) -> str:
        """One tool call's answer (an error is answered as text, and counted)."""
        try:
            if tool not in self.tools:
                raise ValueError(f"unknown tool {tool!r}; the tools are {', '.join(self.tools)}")
            if tool == "calculator":
                return calculate(argument)
            return run_python(argument, timeout_s=self.timeout_s)
        except ValueError as exc:
            self.num_errors += 1
            return f"error: {exc}"

    def step(self, turn: ModelTurn) -> EnvReply:
        calls = parse_calls(turn.text, self.call_format)[: self.max_calls_per_turn]
        if not calls or turn.finish_reason == "length":
            return EnvReply(done=True, info={"tool_errors": self.num_errors})
        results = [self.call(tool, argument) if tool != "invalid" else f"error: {argument}" for tool, argument in calls]
        if self.call_format == "tags":
            messages: list[Message] = [{"role": "tool", "content": "".join(f"<result>{r}</result>" for r in results)}]
        else:
            messages = [{"role": "tool", "content": r} for r in results]
        return EnvReply(messages=messages, tool_calls=len(calls), info={"results": results})
