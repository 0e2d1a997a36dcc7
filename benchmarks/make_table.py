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

from grpo_dist.bench.records import latest_per_benchmark, load_records, render_table, update_readme

HERE = Path(__file__).resolve().parent


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", type=Path, help="JSON records (default: benchmarks/results/*.json)")
    p.add_argument("--write", action="store_true", help="replace the table in the README between its markers")
    p.add_argument("--readme", type=Path, default=HERE / "README.md", help="the README to update")
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
    table = render_table(records if args.all else latest_per_benchmark(records))
    print(table, end="")
    if args.write:
        args.readme.write_text(update_readme(args.readme.read_text() if args.readme.exists() else "", table))
        print(f"updated {args.readme.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
