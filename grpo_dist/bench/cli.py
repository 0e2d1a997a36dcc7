"""``grpo-dist bench TARGET``: run benchmarks, write their JSON, print the table."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from grpo_dist.bench.async_modes import bench_async
from grpo_dist.bench.common import Settings, bench_config, settings_for
from grpo_dist.bench.e2e import bench_e2e
from grpo_dist.bench.learner import bench_learner
from grpo_dist.bench.lora import bench_lora
from grpo_dist.bench.packing import bench_packing
from grpo_dist.bench.records import (
    BENCHMARKS,
    SCHEMA,
    TARGETS,
    default_replacements,
    load_average,
    make_record,
    render_table,
    scrub_paths,
)
from grpo_dist.bench.rollout import bench_rollout
from grpo_dist.bench.sync import bench_sync
from grpo_dist.bench.tools import bench_tools
from grpo_dist.bench.vs_trl import bench_trl
from grpo_dist.bench.vs_trl_real import bench_trl_real

logger = logging.getLogger("grpo_dist.bench")


RUNNERS: dict[str, Callable[[Settings], tuple[dict[str, Any], list[dict[str, Any]]]]] = {
    "rollout": bench_rollout,
    "learner": bench_learner,
    "sync": bench_sync,
    "e2e": bench_e2e,
    "async": bench_async,
    "trl": bench_trl,
    "packing": bench_packing,
    "trl-real": bench_trl_real,
    "lora": bench_lora,
    "tools": bench_tools,
}


# ======================================================================================================== CLI


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", choices=TARGETS, help="which benchmark (all: each in turn)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions, only the small model (under 10 min)")
    p.add_argument("--out", default=None, help="JSON file to write (default: benchmarks/results/TARGET[-quick].json)")
    p.add_argument("--models", default=None, help="comma-separated model sizes to run (small,large)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for grpo-dist's trainer in e2e and trl (repeatable), e.g. learner.num_ranks=1",
    )
    p.add_argument(
        "--dtypes",
        default=None,
        help="comma-separated model dtypes for trl and trl-real (default: float32,bfloat16)",
    )
    p.add_argument("--verbose", action="store_true", help="show the actors' logs")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grpo-dist bench", description=__doc__.split("\n\n")[0])
    add_bench_args(p)
    return p


def default_out(target: str, quick: bool) -> Path:
    return Path("benchmarks") / "results" / f"{target}{'-quick' if quick else ''}.json"


def run_benchmark(name: str, s: Settings) -> dict[str, Any]:
    t0 = time.perf_counter()
    logger.info("bench %s: starting", name)
    before = load_average()
    config, figures = RUNNERS[name](s)
    wall = time.perf_counter() - t0
    config = {"settings": s.to_dict(), **config}
    load = {"before": before, "after": load_average()}
    record = make_record(name, config=config, figures=figures, quick=s.quick, wall_s=wall, load=load)
    record = scrub_paths(record, default_replacements())
    logger.info("bench %s: done in %.0f s", name, wall)
    return record


def main_bench(args: argparse.Namespace) -> int:
    """``grpo-dist bench TARGET``: run, write the JSON, print the table; returns the exit status."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    if not args.verbose:
        for name in ("ray", "grpo_dist.learner", "grpo_dist.sync", "grpo_dist.rollout", "vllm", "deepspeed"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        s = settings_for(args.quick, models=args.models.split(",") if args.models else None, reps=args.reps)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    s = replace(s, verbose=args.verbose, overrides=tuple(args.overrides))
    if args.dtypes:
        dtypes = tuple(args.dtypes.split(","))
        if not set(dtypes) <= {"float32", "bfloat16"}:
            print(f"--dtypes {args.dtypes}: expected some of float32, bfloat16", file=sys.stderr)
            return 2
        s = replace(s, trl_dtypes=dtypes)
    if s.overrides:  # a typo must fail now, not after the benchmarks before e2e have run
        from grpo_dist.config import ConfigError

        try:
            bench_config(Path("model"), s.overrides)
        except ConfigError as exc:
            print(f"--set: {exc}", file=sys.stderr)
            return 2
    names = list(BENCHMARKS) if args.target == "all" else [args.target]
    out = Path(args.out) if args.out else default_out(args.target, s.quick)
    t0 = time.perf_counter()
    records = []
    failed = []
    for name in names:
        try:
            records.append(run_benchmark(name, s))
        except Exception:
            if len(names) == 1:
                raise
            logger.exception("bench %s failed; going on with the others", name)
            failed.append(name)
        if records:  # write what exists after each benchmark: a later failure keeps the earlier figures
            data: Any = (
                records[0]
                if args.target != "all"
                else {
                    "schema": SCHEMA,
                    "target": "all",
                    "quick": s.quick,
                    "wall_s": round(time.perf_counter() - t0, 2),
                    "failed": failed,
                    "records": records,
                }
            )
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    wall = time.perf_counter() - t0
    print(render_table(records), end="")
    print(f"\nwrote {out} ({wall:.0f} s{'; failed: ' + ', '.join(failed) if failed else ''})")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_bench(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
