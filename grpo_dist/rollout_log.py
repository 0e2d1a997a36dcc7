"""Every sampled answer, per step, as parquet under ``RUN_DIR/rollouts/``.

One row per completion: the prompt, the completion, the row's ground truth, each reward component, the
total reward, the advantage, whether the sample counted, the finish reason, the weights version and the
step: enough for anyone to recompute the rewards and advantages from the file alone (pyarrow, pandas,
duckdb all read it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grpo_dist.types import ScoredGroup

COMPONENT_PREFIX = "reward_"


def rollout_rows(step: int, groups: list[ScoredGroup], advantages: list[list[float]]) -> list[dict[str, Any]]:
    rows = []
    for scored, adv in zip(groups, advantages, strict=True):
        g = scored.group
        for i, completion in enumerate(g.completions):
            row: dict[str, Any] = {
                "step": step,
                "prompt_id": g.prompt.prompt_id,
                "sample_index": i,
                "data_source": g.prompt.data_source,
                "prompt": g.prompt.text,
                "completion": completion.text,
                "ground_truth": g.prompt.ground_truth,
                "reward": scored.rewards[i],
                "advantage": adv[i],
                "valid": scored.valid[i],
                "finish_reason": completion.finish_reason,
                "response_length": len(completion.token_ids),
                "weights_version": g.weights_version,
                "engine_index": g.engine_index,
            }
            for name, values in scored.components.items():
                row[COMPONENT_PREFIX + name] = values[i]
            rows.append(row)
    return rows


def write_rollouts(run_dir: Path, step: int, rows: list[dict[str, Any]], *, name: str = "step") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = run_dir / "rollouts"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}_{step:06d}.parquet"
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    tmp.replace(path)
    return path
