"""The run report's example completions: the first sample of a few prompts from the last logged step's
rollouts, as fenced blocks (a multi-turn sample as a transcript of its turns)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from grpo_dist.report_numbers import fmt, number

Record = dict[str, Any]
MAX_EXAMPLE_CHARS = 800
NUM_EXAMPLES = 3
_STEP_FILE = re.compile(r"^step_(\d+)\.parquet$")


def example_section(run_dir: Path) -> list[str]:
    """The summary's "Example completions" lines (none when no rollouts were logged)."""
    last = _last_rollouts_file(run_dir)
    if last is None:
        return []
    step, path = last
    examples = _read_examples(path, NUM_EXAMPLES)
    rel = path.relative_to(run_dir).as_posix()
    out = [f"## Example completions (step {step})", "", f"From `{rel}`, one sample per prompt.", ""]
    for i, row in enumerate(examples, start=1):
        reward = number(row.get("reward"))
        out += [f"### Example {i} (reward {fmt(reward)})", ""]
        if row.get("turns"):  # a multi-turn sample: every turn, the environment's answers between them
            row["trajectory"] = _trajectory_text(row["turns"])
        for field in ("prompt", "trajectory", "completion", "ground_truth"):
            if field in row:
                out += [f"**{field}:**", "", _block(row[field]), ""]
    return out


def _last_rollouts_file(run_dir: Path) -> tuple[int, Path] | None:
    """The highest-numbered ``rollouts/step_*.parquet``: rollouts may be kept only every few steps."""
    found = []
    for p in (run_dir / "rollouts").glob("step_*.parquet"):
        m = _STEP_FILE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return max(found) if found else None


def _read_examples(path: Path, n: int) -> list[Record]:
    """The first sample of each of the first ``n`` prompts: different questions say more than one's siblings."""
    import pyarrow.parquet as pq

    wanted = ["prompt_id", "sample_index", "prompt", "completion", "ground_truth", "reward", "turns"]
    try:
        names = set(pq.read_schema(path).names)
        if "completion" not in names:
            raise ValueError(f"{path}: no 'completion' column (columns: {', '.join(sorted(names))})")
        rows = pq.read_table(path, columns=[c for c in wanted if c in names]).to_pylist()
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path}: cannot read rollouts parquet ({exc})") from exc
    rows.sort(key=lambda r: (str(r.get("prompt_id", "")), r.get("sample_index") or 0))
    picked: list[Record] = []
    seen: set[str] = set()
    for row in rows:
        pid = str(row.get("prompt_id", len(picked)))
        if pid in seen:
            continue
        seen.add(pid)
        picked.append(row)
        if len(picked) == n:
            break
    return picked


def _trajectory_text(turns_json: str) -> str:
    """A multi-turn sample's turns (the rollout log's ``turns`` column) as a transcript."""
    lines = []
    for turn in json.loads(turns_json):
        lines.append(f"[model] {turn['text']}")
        lines += [f"[{m.get('role', 'env')}] {m.get('content', '')}" for m in turn.get("messages", [])]
        if turn.get("forked"):
            lines.append("[the chat template rewrote the history here: the model went on from its rendering]")
    return "\n".join(lines)


def _block(text: Any) -> str:
    """A fenced block that survives backticks inside model output (the fence outgrows any run in it)."""
    text = "" if text is None else str(text)
    if len(text) > MAX_EXAMPLE_CHARS:
        text = text[:MAX_EXAMPLE_CHARS] + f"\n[... {len(text) - MAX_EXAMPLE_CHARS} more characters]"
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"
