"""Multi-digit addition: a verifiable task with an exact answer.

Rows follow the dataset schema users give grpo-dist (``prompt``, ``ground_truth``, ``data_source``,
``extra_info``), so the embedded default exercises the same path as a user's parquet file.
The prompt is the bare problem (``"37+485="``); the expected completion is the sum's digits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_SOURCE = "arithmetic/add"


@dataclass(frozen=True)
class AdditionTask:
    """Problems ``a+b=`` with operands of ``min_digits``..``max_digits`` digits."""

    min_digits: int = 1
    max_digits: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(
                f"min_digits={self.min_digits}, max_digits={self.max_digits}: need 1 <= min_digits <= max_digits"
            )

    def _operand(self, rng: random.Random) -> int:
        digits = rng.randint(self.min_digits, self.max_digits)
        low = 0 if digits == 1 else 10 ** (digits - 1)
        return rng.randint(low, 10**digits - 1)

    def row(self, rng: random.Random) -> dict[str, Any]:
        a, b = self._operand(rng), self._operand(rng)
        return {
            "prompt": f"{a}+{b}=",
            "ground_truth": str(a + b),
            "data_source": DATA_SOURCE,
            "extra_info": {"a": a, "b": b, "op": "+"},
        }

    def rows(self, num_rows: int, seed: int, *, exclude: set[str] | None = None) -> list[dict[str, Any]]:
        """``num_rows`` distinct problems, none of whose prompts is in ``exclude``."""
        rng = random.Random(seed)
        seen = set(exclude or ())
        out: list[dict[str, Any]] = []
        capacity = self.num_distinct_problems() - len(seen)
        if num_rows > capacity:
            raise ValueError(f"num_rows={num_rows}: only {capacity} distinct problems are left for this task")
        while len(out) < num_rows:
            row = self.row(rng)
            if row["prompt"] not in seen:
                seen.add(row["prompt"])
                out.append(row)
        return out

    def num_distinct_problems(self) -> int:
        count = 10**self.max_digits - (10 ** (self.min_digits - 1) if self.min_digits > 1 else 0)
        return count * count


def write_splits(
    out_dir: Path, *, num_train: int, num_eval: int, seed: int, task: AdditionTask | None = None
) -> tuple[Path, Path]:
    """Write ``train.parquet`` and a disjoint held-out ``eval.parquet``; returns their paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    task = task or AdditionTask()
    eval_rows = task.rows(num_eval, seed=seed + 1)
    train_rows = task.rows(num_train, seed=seed, exclude={r["prompt"] for r in eval_rows})
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / "train.parquet", out_dir / "eval.parquet")
    for path, rows in zip(paths, (train_rows, eval_rows)):
        pq.write_table(pa.Table.from_pylist(rows), path)
    return paths
