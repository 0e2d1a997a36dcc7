"""The tool-calling recipe's task and warm-start demonstrations: products are right, and a demonstration is
laid out token for token as the engines' trajectories will be (the model's turns in the loss, the
calculator's answer out of it)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from grpo_dist.data.prompts import build_prompts
from grpo_dist.models.builder import tokenizer_corpus, train_tokenizer
from grpo_dist.models.tool_warmstart import TOOL_CORPUS, calculator_demonstrations
from grpo_dist.tasks.arithmetic import MUL_DATA_SOURCE, NAMED_TASKS, MultiplicationTask, write_splits


@pytest.fixture(scope="module")
def tok() -> Any:
    return train_tokenizer([*tokenizer_corpus(0), *TOOL_CORPUS], 512)


def test_multiplication_rows_are_products(tmp_path: Path) -> None:
    train, evals = write_splits(tmp_path, num_train=300, num_eval=50, seed=1, task=MultiplicationTask(2, 2))
    seen = []
    for path in (train, evals):
        for row in pq.read_table(path).to_pylist():
            a, b = map(int, re.fullmatch(r"(\d\d)\*(\d\d)=", row["prompt"]).groups())  # type: ignore[union-attr]
            assert row["ground_truth"] == str(a * b) and row["data_source"] == MUL_DATA_SOURCE
            assert row["extra_info"] == {"a": a, "b": b, "op": "*"}
            seen.append((path, a, b))
    train_pairs = {(a, b) for p, a, b in seen if p == train}
    assert not train_pairs & {(a, b) for p, a, b in seen if p == evals}  # held-out problems stay unseen
    assert NAMED_TASKS["multiplication"].task == MultiplicationTask(2, 2)


def test_demonstrations_are_the_trajectories_the_engine_will_build(tok: Any) -> None:
    rows = MultiplicationTask(2, 2).rows(200, seed=0)
    prompts, _ = build_prompts(rows, tok, max_prompt_length=16, apply_chat_template="never")
    examples = calculator_demonstrations(prompts, tok, direct_fraction=0.5, seed=0)
    assert len(tok("<calculator>", add_special_tokens=False).input_ids) <= 3  # the tags have tokens of their own
    direct = 0
    for prompt, (ids, mask) in zip(prompts, examples, strict=True):
        n = len(prompt.token_ids)
        assert ids[:n] == prompt.token_ids and mask[:n] == [0] * n and ids[-1] == tok.eos_token_id
        product = prompt.ground_truth
        learned = tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=True)
        unlearned = tok.decode([t for t, m in zip(ids[n:], mask[n:]) if not m])
        if unlearned == "":
            direct += 1
            assert learned == product
        else:
            info = prompt.extra_info
            assert learned == f"<calculator>{info['a']}*{info['b']}</calculator>{product}"
            assert unlearned == f"<result>{product}</result>"  # the calculator's answer, never in the loss
    assert 70 <= direct <= 130  # about direct_fraction of them answer at once
