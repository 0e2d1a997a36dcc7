"""Every sampled answer, per step, as parquet under ``RUN_DIR/rollouts/``.

One row per completion: the prompt, the completion (text and token ids), the row's ground truth, each
reward component, the total reward, the advantage, whether the sample counted, the finish reason, the
weights version (per token too), the step and the engine's per-token sampling logprobs: enough for anyone
to recompute the rewards, the advantages and (against the learner's logprobs of the same tokens) the
rollout/learner mismatch figures from the file alone (pyarrow, pandas, duckdb all read it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grpo_dist.types import ScoredGroup

COMPONENT_PREFIX = "reward_"
LOGPROBS_COLUMN = "engine_logprobs"
VERSIONS_COLUMN = "token_versions"
PROMPT_IDS_COLUMN = "prompt_token_ids"
TOKEN_IDS_COLUMN = "token_ids"
LOSS_MASK_COLUMN = "loss_mask"
FORKS_COLUMN = "forks"


def rollout_rows(step: int, groups: list[ScoredGroup], advantages: list[list[float]]) -> list[dict[str, Any]]:
    """One dict per completion, groups in order (``advantages[p][i]`` belongs to completion i of group p).

    Columns: ``step``, ``prompt_id``, ``sample_index``, ``data_source``, ``prompt``, ``completion``,
    ``ground_truth``, ``reward``, ``advantage``, ``valid``, ``finish_reason``, ``response_length``,
    ``weights_version``, ``engine_index``, ``prompt_token_ids`` and ``token_ids`` (the exact tokens the
    learner trains on: text does not round-trip through a tokenizer), ``engine_logprobs`` (the engine's
    sampling logprob of each completion token, ``response_length`` of them), ``token_versions`` (the weights
    version each token was sampled with: ``weights_version`` throughout, unless a partial rollout continued
    the completion under newer weights), ``loss_mask`` (1 for the model's tokens, 0 for an environment's),
    ``num_turns``, ``tool_calls`` and ``turns`` (a multi-turn trajectory's turns as JSON: the model's text,
    the environment's messages, step reward, tool calls; ``[]`` for one answer; ``completion`` is then the
    last turn's text), ``forks`` (a trajectory whose chat template rewrote history, ``template_check: fork``:
    its later sequences, each ``context_ids``, ``token_ids``, ``logprobs`` and ``loss_mask``; the columns
    above hold its first; ``response_length`` counts the tokens of all) and ``reward_<name>`` per component.
    """
    import json
    from dataclasses import asdict

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
                "response_length": completion.response_length,
                PROMPT_IDS_COLUMN: list(g.prompt.token_ids),
                TOKEN_IDS_COLUMN: list(completion.token_ids),
                "weights_version": g.weights_version,
                "engine_index": g.engine_index,
                LOGPROBS_COLUMN: [float(x) for x in completion.logprobs],
                VERSIONS_COLUMN: completion.versions(g.weights_version),
                LOSS_MASK_COLUMN: completion.mask(),
                "num_turns": max(1, len(completion.turns)),
                "tool_calls": sum(int(t.get("tool_calls", 0)) for t in completion.turns),
                "turns": json.dumps(completion.turns, default=str),  # (an environment's info may hold anything)
                FORKS_COLUMN: [asdict(f) for f in completion.forks],
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
    table = pa.Table.from_pylist(rows)
    list_columns = {
        LOGPROBS_COLUMN: pa.float64(),
        VERSIONS_COLUMN: pa.int64(),
        TOKEN_IDS_COLUMN: pa.int64(),
        LOSS_MASK_COLUMN: pa.int64(),
        FORKS_COLUMN: pa.struct(
            [
                ("context_ids", pa.list_(pa.int64())),
                ("token_ids", pa.list_(pa.int64())),
                ("logprobs", pa.list_(pa.float64())),
                ("loss_mask", pa.list_(pa.int64())),
            ]
        ),
    }
    for column, value_type in list_columns.items():
        if column in table.column_names:
            i = table.column_names.index(column)
            if table.schema.field(i).type != pa.list_(value_type):
                # every completion of the step was empty (or had no fork): keep the list type so that step
                # files concatenate
                table = table.set_column(i, column, table.column(i).cast(pa.list_(value_type)))
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path
