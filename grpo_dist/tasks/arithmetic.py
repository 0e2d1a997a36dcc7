"""Multi-digit arithmetic: verifiable tasks with an exact answer.

Rows follow the dataset schema users give grpo-dist (``prompt``, ``ground_truth``, ``data_source``,
``extra_info``), so the embedded default exercises the same path as a user's parquet file.

- ``AdditionTask``: the bare problem as a completion prompt (``"37+485="``); the expected completion is
  the sum's digits. The embedded default's task.
- ``ChatAdditionTask``: the same problems asked as one user chat message (``"What is 3 plus 5? Reply with
  the sum."``), for instruct models: the prompt is rendered with the model's chat template at load time.
- ``MultiplicationTask``: ``"37*48="``, products too long for a small model to work out in one step: the
  tool-calling recipe's task (the model learns to ask the calculator).

``NAMED_TASKS`` are the splits ``grpo-dist write-data NAME OUT_DIR`` writes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_SOURCE = "arithmetic/add"
MUL_DATA_SOURCE = "arithmetic/mul"
CHAT_DATA_SOURCE = "arithmetic/add_chat"
CHAT_QUESTION = "What is {a} plus {b}? Reply with the sum."


@dataclass(frozen=True)
class AdditionTask:
    """Problems ``a+b=`` with operands of ``min_digits``..``max_digits`` digits."""

    min_digits: int = 1
    max_digits: int = 3
    op = "+"
    """The operator, in the prompt and in ``extra_info``."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(
                f"min_digits={self.min_digits}, max_digits={self.max_digits}: need 1 <= min_digits <= max_digits"
            )

    def _operand(self, rng: random.Random) -> int:
        digits = rng.randint(self.min_digits, self.max_digits)
        low = 0 if digits == 1 else 10 ** (digits - 1)
        return rng.randint(low, 10**digits - 1)

    def prompt(self, a: int, b: int) -> str | list[dict[str, str]]:
        return f"{a}{self.op}{b}="

    def answer(self, a: int, b: int) -> int:
        return a + b

    def data_source(self) -> str:
        return DATA_SOURCE

    def row(self, rng: random.Random) -> dict[str, Any]:
        a, b = self._operand(rng), self._operand(rng)
        return {
            "prompt": self.prompt(a, b),
            "ground_truth": str(self.answer(a, b)),
            "data_source": self.data_source(),
            "extra_info": {"a": a, "b": b, "op": self.op},
        }

    def rows(self, num_rows: int, seed: int, *, exclude: set[tuple[int, int]] | None = None) -> list[dict[str, Any]]:
        """``num_rows`` distinct problems, none of whose operand pairs ``(a, b)`` is in ``exclude``."""
        rng = random.Random(seed)
        seen = set(exclude or ())
        out: list[dict[str, Any]] = []
        capacity = self.num_distinct_problems() - len(seen)
        if num_rows > capacity:
            raise ValueError(f"num_rows={num_rows}: only {capacity} distinct problems are left for this task")
        while len(out) < num_rows:
            row = self.row(rng)
            key = _operands(row)
            if key not in seen:
                seen.add(key)
                out.append(row)
        return out

    def num_distinct_problems(self) -> int:
        count = 10**self.max_digits - (10 ** (self.min_digits - 1) if self.min_digits > 1 else 0)
        return count * count


@dataclass(frozen=True)
class ChatAdditionTask(AdditionTask):
    """The problems of ``AdditionTask`` asked as one user chat message, ``question`` with ``{a}`` and ``{b}``.

    No system message: the model's chat template adds its default one, as it would for any user. The
    answer is free text, so score it with a lenient extraction (``exact_match`` with
    ``extract: last_number``).
    """

    question: str = CHAT_QUESTION

    def __post_init__(self) -> None:
        super().__post_init__()
        if "{a}" not in self.question or "{b}" not in self.question:
            raise ValueError(f"question={self.question!r}: needs the placeholders {{a}} and {{b}}")

    def prompt(self, a: int, b: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.question.format(a=a, b=b)}]

    def data_source(self) -> str:
        return CHAT_DATA_SOURCE


@dataclass(frozen=True)
class MultiplicationTask(AdditionTask):
    """Problems ``a*b=`` (the rows of ``AdditionTask`` with a product). Two 2-digit operands give 3- and
    4-digit products that the embedded model cannot learn to compute in one step; with the calculator of
    ``grpo_dist.envs.tools:ToolEnv`` it only has to copy."""

    op = "*"

    def answer(self, a: int, b: int) -> int:
        return a * b

    def data_source(self) -> str:
        return MUL_DATA_SOURCE


def _operands(row: dict[str, Any]) -> tuple[int, int]:
    return row["extra_info"]["a"], row["extra_info"]["b"]


@dataclass(frozen=True)
class NamedTask:
    """A task with the split sizes that ``grpo-dist write-data`` writes for it."""

    task: AdditionTask
    num_train: int
    num_eval: int
    description: str


NAMED_TASKS: dict[str, NamedTask] = {
    "addition": NamedTask(AdditionTask(1, 2), 4000, 256, "the embedded default's task: 'a+b=' with 1-2 digits"),
    # 100 distinct problems in all: 80 to train on, 20 held out
    "chat-addition-1d": NamedTask(
        ChatAdditionTask(1, 1), 80, 20, "single-digit sums as a chat question, for instruct models"
    ),
    "multiplication": NamedTask(
        MultiplicationTask(2, 2), 4000, 256, "'a*b=' with 2 digits each, the tool-calling recipe's task"
    ),
}


def named_task(name: str) -> NamedTask:
    if name not in NAMED_TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(NAMED_TASKS)}")
    return NAMED_TASKS[name]


def write_splits(
    out_dir: Path, *, num_train: int, num_eval: int, seed: int, task: AdditionTask | None = None
) -> tuple[Path, Path]:
    """Write ``train.parquet`` and a disjoint held-out ``eval.parquet``; returns their paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    task = task or AdditionTask()
    eval_rows = task.rows(num_eval, seed=seed + 1)
    train_rows = task.rows(num_train, seed=seed, exclude={_operands(r) for r in eval_rows})
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / "train.parquet", out_dir / "eval.parquet")
    for path, rows in zip(paths, (train_rows, eval_rows)):
        pq.write_table(pa.Table.from_pylist(rows), path)
    return paths
