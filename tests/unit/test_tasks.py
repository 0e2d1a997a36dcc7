"""The embedded task's rows are right (checked independently of the generator) and its splits disjoint."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from grpo_dist.tasks.arithmetic import (
    CHAT_DATA_SOURCE,
    DATA_SOURCE,
    NAMED_TASKS,
    AdditionTask,
    ChatAdditionTask,
    write_splits,
)


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


def test_chat_rows_ask_the_same_problems_as_one_user_message() -> None:
    bare = AdditionTask(1, 2).rows(50, seed=5)
    chat = ChatAdditionTask(1, 2).rows(50, seed=5)
    for plain, row in zip(bare, chat, strict=True):
        a, b = row["extra_info"]["a"], row["extra_info"]["b"]
        assert plain["prompt"] == f"{a}+{b}="  # the same draws, only asked differently
        assert row["prompt"] == [{"role": "user", "content": f"What is {a} plus {b}? Reply with the sum."}]
        assert row["ground_truth"] == str(a + b)
        assert row["data_source"] == CHAT_DATA_SOURCE


def test_chat_splits_are_disjoint_and_load_as_chat_prompts(tmp_path: Path) -> None:
    from grpo_dist.data.rows import load_rows

    named = NAMED_TASKS["chat-addition-1d"]
    train, evals = write_splits(tmp_path, num_train=named.num_train, num_eval=named.num_eval, seed=0, task=named.task)
    train_rows, _ = load_rows([train])
    eval_rows, _ = load_rows([evals])
    pairs = [{(r["extra_info"]["a"], r["extra_info"]["b"]) for r in rows} for rows in (train_rows, eval_rows)]
    assert len(pairs[0]) == 80
    assert len(pairs[1]) == 20
    assert not pairs[0] & pairs[1]
    assert pairs[0] | pairs[1] == {(a, b) for a in range(10) for b in range(10)}  # every single-digit sum
    assert all(isinstance(r["prompt"], list) and r["prompt"][0]["role"] == "user" for r in train_rows)


def test_chat_question_needs_both_operands() -> None:
    with pytest.raises(ValueError, match="placeholders"):
        ChatAdditionTask(question="What is {a}?")


def test_write_data_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from grpo_dist.cli import main

    assert main(["write-data", "chat-addition-1d", str(tmp_path / "d"), "--num-eval", "10"]) == 0
    assert capsys.readouterr().out.split() == [
        str(tmp_path / "d" / "train.parquet"),
        str(tmp_path / "d" / "eval.parquet"),
    ]
    assert pq.read_table(tmp_path / "d" / "train.parquet").num_rows == 80
    assert pq.read_table(tmp_path / "d" / "eval.parquet").num_rows == 10
    assert main(["write-data", "chat-addition-1d", str(tmp_path / "e"), "--num-train", "95"]) == 2
    assert "distinct problems" in capsys.readouterr().err


def test_the_named_addition_task_is_the_embedded_default() -> None:
    from grpo_dist.models.assets import NUM_EVAL_ROWS, NUM_TRAIN_ROWS, embedded_task

    named = NAMED_TASKS["addition"]
    assert (named.task, named.num_train, named.num_eval) == (embedded_task(), NUM_TRAIN_ROWS, NUM_EVAL_ROWS)
