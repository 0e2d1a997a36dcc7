"""Regenerate the benchmark table from the JSON records.

    python benchmarks/make_table.py                 # print the table of benchmarks/results/*.json
    python benchmarks/make_table.py --write         # and put it into benchmarks/README.md
    python benchmarks/make_table.py FILE.json ...   # only these records

For each benchmark the newest full run is shown (a --quick run only when there is no full one), unless
``--all`` asks for every record.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from grpo_dist.bench.records import latest_per_benchmark, load_records, render_summary, render_table, update_readme

HERE = Path(__file__).resolve().parent


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", type=Path, help="JSON records (default: benchmarks/results/*.json)")
    p.add_argument(
        "--write",
        action="store_true",
        help="replace the tables between their markers: the full one in benchmarks/README.md, the short one in "
        "the top-level README.md",
    )
    p.add_argument("--readme", type=Path, default=HERE / "README.md", help="the README for the full table")
    p.add_argument(
        "--summary-readme", type=Path, default=HERE.parent / "README.md", help="the README for the short one"
    )
    p.add_argument("--all", action="store_true", help="every record, not only the newest of each benchmark")
    args = p.parse_args(argv)
    files = args.files or sorted((HERE / "results").glob("*.json"))
    if not files:
        print("no benchmark records found", file=sys.stderr)
        return 2
    try:
        records = load_records(files)
    except (OSError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    chosen = records if args.all else latest_per_benchmark(records)
    table = render_table(chosen)
    print(table, end="")
    if args.write:
        for path, text in ((args.readme, table), (args.summary_readme, render_summary(chosen))):
            path.write_text(update_readme(path.read_text() if path.exists() else "", text))
            print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
