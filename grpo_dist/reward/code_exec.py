"""The ``code_exec`` reward: the fraction of a row's test cases that the completion's code passes.

The code is the last fenced Python block of the completion; each test case is a separate
``run_sandboxed`` call (``grpo_dist.reward.sandbox``), so model-written code never runs in the scorer's
process. What the sandbox isolates and what it does not: ``docs/sandbox.md``.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CodeCase", "code_exec", "extract_code", "parse_test_cases"]

_FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py)\b[^\n]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(text: str) -> str:
    """The body of the last fenced ```` ```python ```` block in ``text`` (also ``py``/``python3``), else all of it.

    The last block, because a model that revises its answer puts the final version last.
    """
    blocks = _FENCE_RE.findall(text)
    return blocks[-1] if blocks else text


@dataclass(frozen=True)
class CodeCase:
    """One test: stdin -> expected stdout (``tests is None``), or assert-style code appended to the solution."""

    stdin: str = ""
    expected: str = ""
    tests: str | None = None


def parse_test_cases(ground_truth: Any) -> list[CodeCase]:
    """The test cases ``code_exec`` runs, from a row's ``ground_truth`` (see ``code_exec`` for the forms).

    A malformed ground truth raises ValueError: it is a dataset bug, and the scorer reports it as a
    failure of the reward function instead of a silent 0 for the model.
    """
    value = ground_truth
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"code_exec: ground_truth is not valid JSON ({exc})") from None
    if isinstance(value, Mapping):
        tests = value.get("tests")
        items = [tests] if isinstance(tests, str) else tests
        if not isinstance(items, list) or not items or not all(isinstance(t, str) and t.strip() for t in items):
            raise ValueError(
                "code_exec: ground_truth {'tests': ...} must hold a non-empty string or a non-empty list of "
                f"non-empty strings, got {tests!r:.200}"
            )
        return [CodeCase(tests=t) for t in items]
    if isinstance(value, list) and value:
        cases = []
        for i, item in enumerate(value):
            if not (
                isinstance(item, Mapping) and isinstance(item.get("input"), str) and isinstance(item.get("output"), str)
            ):
                raise ValueError(
                    f"code_exec: ground_truth[{i}] = {item!r:.200}: expected {{'input': str, 'output': str}}"
                )
            cases.append(CodeCase(stdin=item["input"], expected=item["output"]))
        return cases
    raise ValueError(
        "code_exec: ground_truth must be a JSON list of {'input', 'output'} cases or an object "
        f"{{'tests': ...}}, got {ground_truth!r:.200}"
    )


def _normalise_output(text: str) -> list[str]:
    """Lines with trailing whitespace and trailing blank lines dropped, as most judges compare."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _passes(code: str, case: CodeCase, timeout_s: float, memory_mb: int) -> bool:
    # imported here: resolving this reward to check a config (``grpo-dist validate``) needs no sandbox
    from grpo_dist.reward.sandbox import run_sandboxed

    cpu_time_s = max(1, math.ceil(timeout_s))
    if case.tests is None:
        result = run_sandboxed(code, stdin=case.stdin, timeout_s=timeout_s, cpu_time_s=cpu_time_s, memory_mb=memory_mb)
        return (
            result.ok
            and not result.output_truncated
            and (_normalise_output(result.stdout) == _normalise_output(case.expected))
        )
    # Exit status 0 alone would also reward a solution that calls sys.exit(0) before the asserts run; the
    # marker printed after them proves they all did.
    marker = f"grpo-dist-tests-passed-{secrets.token_hex(16)}"
    program = f"{code}\n\n{case.tests}\n\nprint({marker!r})\n"
    result = run_sandboxed(program, timeout_s=timeout_s, cpu_time_s=cpu_time_s, memory_mb=memory_mb)
    lines = _normalise_output(result.stdout)
    return result.ok and not result.output_truncated and bool(lines) and lines[-1] == marker


def code_exec(
    data_source: str | None,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    language: str = "python",
) -> float:
    """The fraction (0.0..1.0) of test cases that the code in ``solution_str`` passes, each run sandboxed.

    The code is the last ```` ```python ```` block of the completion, else the whole completion
    (``extract_code``). ``ground_truth`` is a JSON string (or the already-parsed value) in one of two forms:

    * ``[{"input": "1 2\\n", "output": "3\\n"}, ...]``: the program reads ``input`` on stdin; a case passes
      when it exits 0 within ``timeout_s`` and its stdout equals ``output`` up to trailing whitespace on
      each line and trailing blank lines.
    * ``{"tests": "assert f(1) == 2\\nassert f(2) == 3"}``: the test code is appended after the solution and
      the case passes when the whole program runs to the end (exit 0, all asserts hold) within ``timeout_s``.
      ``"tests"`` may also be a list of such strings, each a separate case (partial credit). Test code runs
      in the same interpreter as the solution, so a deliberately adversarial solution could defeat it (an
      object whose ``__eq__`` is always true); stdin/stdout cases do not have that weakness.

    Every case is a separate ``run_sandboxed`` call with ``timeout_s`` of wall-clock time, as much CPU time
    (rounded up) and ``memory_mb`` of address space. Time: a sample can take up to about
    ``len(cases) * (timeout_s + 0.5)`` seconds, so this function's entry in ``reward.functions`` needs a
    (per-sample) ``timeout_s`` larger than that, or the scorer kills the call and counts a timeout failure
    instead of the score. A sandbox that cannot be set up raises ``SandboxError`` (a failure, not a 0).
    """
    del data_source, extra_info
    if language != "python":
        raise ValueError(f"code_exec: language = {language!r}; only 'python' is supported")
    if not isinstance(solution_str, str):
        raise ValueError(f"code_exec: solution_str must be a string, got {type(solution_str).__name__}")
    cases = parse_test_cases(ground_truth)
    code = extract_code(solution_str)
    passed = sum(_passes(code, case, float(timeout_s), int(memory_mb)) for case in cases)
    return passed / len(cases)
