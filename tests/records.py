"""Reliability figures: each fault/robustness test writes a JSON record under ``tests/.records/``.

``python -m tests.records`` prints them as a markdown table (the README's reliability section).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RECORDS = Path(__file__).parent / ".records"


def write_record(name: str, figures: dict[str, Any]) -> Path:
    RECORDS.mkdir(exist_ok=True)
    path = RECORDS / f"{name}.json"
    path.write_text(json.dumps({"test": name, **figures}, indent=2, sort_keys=True) + "\n")
    return path


def table(records_dir: Path = RECORDS) -> str:
    rows = ["| test | figures |", "|---|---|"]
    for path in sorted(records_dir.glob("*.json")):
        record = json.loads(path.read_text())
        name = record.pop("test", path.stem)
        figures = ", ".join(f"{k}: {len(v) if isinstance(v, list) else v}" for k, v in sorted(record.items()))
        rows.append(f"| {name} | {figures} |")
    return "\n".join(rows)


if __name__ == "__main__":
    if not RECORDS.is_dir() or not any(RECORDS.glob("*.json")):
        sys.exit(f"no records under {RECORDS}: run the test suite first")
    print(table())
