"""The embedded task's rows are right (checked independently of the generator) and its splits disjoint."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from grpo_dist.tasks.arithmetic import DATA_SOURCE, AdditionTask, write_splits


def test_answers_are_the_sums(tmp_path: Path) -> None:
    train, evals = write_splits(tmp_path, num_train=500, num_eval=100, seed=3, task=AdditionTask(1, 3))
    for path in (train, evals):
        for row in pq.read_table(path).to_pylist():
            match = re.fullmatch(r"(\d+)\+(\d+)=", row["prompt"])
            assert match, row["prompt"]
            a, b = int(match[1]), int(match[2])
            assert int(row["ground_truth"]) == a + b
            assert row["ground_truth"] == str(a + b)  # canonical spelling, no padding
            assert (row["extra_info"]["a"], row["extra_info"]["b"]) == (a, b)
            assert row["data_source"] == DATA_SOURCE
            assert 1 <= len(match[1]) <= 3
            assert 1 <= len(match[2]) <= 3


def test_splits_are_disjoint_and_deterministic(tmp_path: Path) -> None:
    first = write_splits(tmp_path / "a", num_train=300, num_eval=50, seed=7)
    second = write_splits(tmp_path / "b", num_train=300, num_eval=50, seed=7)
    train = pq.read_table(first[0]).to_pylist()
    held_out = {r["prompt"] for r in pq.read_table(first[1]).to_pylist()}
    assert len({r["prompt"] for r in train}) == 300
    assert not held_out & {r["prompt"] for r in train}
    assert pq.read_table(first[0]).equals(pq.read_table(second[0]))
    assert pq.read_table(first[1]).equals(pq.read_table(second[1]))


def test_impossible_requests_are_refused() -> None:
    with pytest.raises(ValueError, match="min_digits"):
        AdditionTask(3, 2)
    with pytest.raises(ValueError, match="distinct problems"):
        AdditionTask(1, 1).rows(101, seed=0)
