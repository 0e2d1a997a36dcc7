"""The per-sample rollout log: schema, and enough to recompute rewards, advantages and the engine's
per-token logprobs from the file."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from grpo_dist.algo import compute_advantages
from grpo_dist.rollout_log import rollout_rows, write_rollouts
from grpo_dist.types import Completion, Prompt, RolloutGroup, ScoredGroup


def _group(pid: int, texts: list[str], rewards: list[float], batch_index: int) -> ScoredGroup:
    prompt = Prompt(
        prompt_id=pid, token_ids=[1, 2, 3], text=f"{pid}+1=", ground_truth=str(pid + 1), data_source="arithmetic/add"
    )
    completions = [
        Completion(
            token_ids=list(range(len(t))),
            logprobs=[-0.5 - 0.25 * j for j in range(len(t))],
            finish_reason="stop" if t else "length",
            text=t,
        )
        for t in texts
    ]
    group = RolloutGroup(prompt, completions, weights_version=3, engine_index=1, batch_index=batch_index)
    return ScoredGroup(group, rewards, {"exact_match": rewards}, [True] * len(texts))


def test_schema_and_recomputable_advantages(tmp_path: Path) -> None:
    groups = [
        _group(4, ["5", "6", "5", ""], [1.0, 0.0, 1.0, 0.0], 0),
        _group(9, ["10", "1", "1", "0"], [1.0, 0, 0, 0], 1),
    ]
    adv = compute_advantages(torch.tensor([g.rewards for g in groups]))
    path = write_rollouts(tmp_path, 4, rollout_rows(4, groups, adv.tolist()))
    assert path == tmp_path / "rollouts" / "step_000004.parquet"
    table = pq.read_table(path)
    expected = {
        "step": pa.int64(),
        "prompt_id": pa.int64(),
        "sample_index": pa.int64(),
        "prompt": pa.string(),
        "completion": pa.string(),
        "ground_truth": pa.string(),
        "reward": pa.float64(),
        "advantage": pa.float64(),
        "valid": pa.bool_(),
        "finish_reason": pa.string(),
        "response_length": pa.int64(),
        "weights_version": pa.int64(),
        "reward_exact_match": pa.float64(),
        "data_source": pa.string(),
        "engine_index": pa.int64(),
        "engine_logprobs": pa.list_(pa.float64()),
    }
    for name, typ in expected.items():
        assert table.schema.field(name).type == typ, name
    rows = table.to_pylist()
    assert len(rows) == 8
    assert [r["completion"] for r in rows[:4]] == ["5", "6", "5", ""]
    assert [r["finish_reason"] for r in rows[:4]] == ["stop", "stop", "stop", "length"]
    assert [r["prompt_id"] for r in rows] == [4] * 4 + [9] * 4
    # anyone can recompute: reward from the component, advantages from each group's rewards
    rewards = torch.tensor([[r["reward"] for r in rows[:4]], [r["reward"] for r in rows[4:]]])
    recomputed = compute_advantages(rewards).flatten()
    assert torch.allclose(recomputed, torch.tensor([r["advantage"] for r in rows], dtype=recomputed.dtype))
    assert [r["reward"] for r in rows] == [r["reward_exact_match"] for r in rows]
    # the engine's sampling logprob of every completion token, in order (an empty completion has none)
    assert [r["engine_logprobs"] for r in rows[4:6]] == [[-0.5, -0.75], [-0.5]]
    assert rows[3]["engine_logprobs"] == []
    assert all(len(r["engine_logprobs"]) == r["response_length"] for r in rows)
    assert not list((tmp_path / "rollouts").glob("*.tmp"))


def test_engine_logprobs_column_keeps_its_type_when_every_completion_is_empty(tmp_path: Path) -> None:
    groups = [_group(1, ["", ""], [0.0, 0.0], 0)]
    path = write_rollouts(tmp_path, 1, rollout_rows(1, groups, [[0.0, 0.0]]))
    table = pq.read_table(path)
    assert table.schema.field("engine_logprobs").type == pa.list_(pa.float64())
    assert table.column("engine_logprobs").to_pylist() == [[], []]
    # so that it concatenates with a step that has tokens
    other = pq.read_table(write_rollouts(tmp_path, 2, rollout_rows(2, [_group(1, ["7"], [1.0], 0)], [[0.0]])))
    assert pa.concat_tables([table, other]).column("engine_logprobs").to_pylist() == [[], [], [-0.5]]


def test_a_forked_trajectorys_later_sequences_are_logged_and_steps_still_concatenate(tmp_path: Path) -> None:
    from dataclasses import replace

    from grpo_dist.types import Segment

    fork = Segment(context_ids=[1, 7, 2], token_ids=[5, 6], logprobs=[-0.1, -0.2], loss_mask=[1, 1])
    group = _group(1, ["ab", "c"], [1.0, 0.0], 0)
    forked = replace(group.group.completions[0], forks=[fork])
    group = replace(group, group=replace(group.group, completions=[forked, group.group.completions[1]]))
    table = pq.read_table(write_rollouts(tmp_path, 1, rollout_rows(1, [group], [[1.0, -1.0]])))
    rows = table.to_pylist()
    assert rows[0]["forks"] == [
        {"context_ids": [1, 7, 2], "token_ids": [5, 6], "logprobs": [-0.1, -0.2], "loss_mask": [1, 1]}
    ]
    assert rows[1]["forks"] == [] and [r["response_length"] for r in rows] == [4, 1]
    plain = pq.read_table(write_rollouts(tmp_path, 2, rollout_rows(2, [_group(1, ["7"], [1.0], 0)], [[0.0]])))
    assert pa.concat_tables([plain, table]).column("forks").to_pylist() == [[], rows[0]["forks"], []]
