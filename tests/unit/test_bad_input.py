"""Bad input is refused before anything starts (naming file, row and field) or skipped and counted;
no valid row is lost either way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grpo_dist.data import DatasetError, load_rows
from tests.records import write_record

VALID = [{"prompt": f"{i}+1=", "ground_truth": str(i + 1)} for i in range(5)]
MALFORMED_LINES = [
    ("not json", "{not json"),
    ("missing prompt", json.dumps({"ground_truth": "1"})),
    ("empty prompt", json.dumps({"prompt": "   ", "ground_truth": "1"})),
    ("wrong type", json.dumps({"prompt": 42, "ground_truth": "1"})),
    ("bad chat message", json.dumps({"prompt": [{"role": "user"}]})),
    ("bad extra_info", json.dumps({"prompt": "x", "extra_info": [1, 2]})),
]


def _dataset(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    lines = (
        [json.dumps(r) for r in VALID[:3]] + [line for _, line in MALFORMED_LINES] + [json.dumps(r) for r in VALID[3:]]
    )
    data = "\n".join(lines).encode() + b"\n" + b'{"prompt": "\xff\xfe"}\n'  # non-UTF-8 bytes
    path.write_bytes(data)
    return path


def test_malformed_rows_are_refused_or_counted(tmp_path: Path) -> None:
    path = _dataset(tmp_path)
    with pytest.raises(DatasetError) as info:
        load_rows([path])
    assert str(path) in str(info.value)
    assert "line 4" in str(info.value)  # the first bad line, 1-based
    rows, report = load_rows([path], skip_invalid=True)
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in VALID]  # every valid row kept, in order
    num_malformed = len(MALFORMED_LINES) + 1
    assert report.num_skipped == num_malformed
    write_record(
        "bad_dataset_rows",
        {
            "rows": len(VALID) + num_malformed,
            "malformed": num_malformed,
            "refused_without_skip": True,
            "skipped_and_counted": report.num_skipped,
            "valid_rows_lost": len(VALID) - len(rows),
        },
    )
