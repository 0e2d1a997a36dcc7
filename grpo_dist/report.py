"""A run report a person can read without TensorBoard: PNG plots and a markdown summary.

``write_report(run_dir)`` reads ``RUN_DIR/metrics.jsonl`` (and, when present, the last step's rollouts
parquet) and writes into ``RUN_DIR/report/``:

* ``reward.png`` - ``reward/mean`` with a ±``reward/std`` band, and each ``reward/<fn>`` component;
* ``pass_at_1.png`` - held-out ``eval/pass@1`` (greedy), ``eval/pass@1_sampled`` and each ``eval/pass@k``;
* ``response_length.png`` - mean response length and the fraction cut at the length limit;
* ``kl_clip.png`` - ``learner/kl``, ``learner/clip_fraction`` and ``learner/entropy`` in panels sharing the
  step axis;
* ``timing.png`` - seconds per phase per step, stacked, with the unaccounted rest as "other";
* ``tools.png`` - multi-turn runs: tool calls and model turns per sample, seconds per environment step;
* ``summary.md`` - the headline numbers, a timing table, a few sampled completions and links to the plots.

A plot whose metrics were never logged is skipped (and a stale copy from an earlier report removed),
because a run without evaluation or without a KL term is normal, not an error. A missing, empty or
malformed ``metrics.jsonl`` is an error: a report built from half a file would quietly mislead.

The metrics file is parsed here with plain :mod:`json` rather than through :mod:`grpo_dist.metrics` (names
from the pure :mod:`grpo_dist.metric_names`; records of older versions, with flat names, read the same), and
matplotlib and pyarrow are imported inside the functions, so that importing this module (for the CLI's
``report`` command, on a laptop looking at a copied run directory) needs neither torch nor a display.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grpo_dist import metric_names
from grpo_dist.report_examples import example_section
from grpo_dist.report_numbers import fmt, number

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PLOT_NAMES", "ReportFiles", "write_report"]

METRICS_FILE = "metrics.jsonl"
REPORT_DIR = "report"
SUMMARY_FILE = "summary.md"
PLOT_NAMES = ("reward", "pass_at_1", "response_length", "kl_clip", "timing", "tools")

# The rest of a step's time beyond its phases' sum (``metric_names.STEP_PHASES``).
OTHER = "other"

_PASS_AT_K = re.compile(r"^eval/pass@(\d+)$")

DPI = 110
# Enough characters to judge an answer's format and correctness; whole chain-of-thought dumps would
# bury the rest of the summary.
# Above this many steps stacked bars turn into slivers; a stacked area shows the same thing legibly.
MAX_TIMING_BARS = 60

Record = dict[str, Any]
Series = tuple[list[int], list[float]]


@dataclass(frozen=True)
class ReportFiles:
    """What ``write_report`` wrote. A plot field is ``None`` when its metrics were never logged."""

    report_dir: Path
    summary: Path
    reward: Path | None = None
    pass_at_1: Path | None = None
    response_length: Path | None = None
    kl_clip: Path | None = None
    timing: Path | None = None
    tools: Path | None = None

    def plots(self) -> list[Path]:
        """The PNGs written, in the order the summary links them."""
        found = (getattr(self, name) for name in PLOT_NAMES)
        return [p for p in found if p is not None]

    def paths(self) -> list[Path]:
        """Every file written: the summary first (what a person opens), then the plots."""
        return [self.summary, *self.plots()]


# ---------------------------------------------------------------------------------------------------------
# reading


def _read_metrics(path: Path) -> list[Record]:
    """Parse ``metrics.jsonl`` strictly: every error names the file and, where it applies, the line.
    Records come back under current names, whichever version wrote them."""
    if not path.is_file():
        raise ValueError(f"{path}: no metrics file (expected {METRICS_FILE} in the run directory)")
    records: list[Record] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            step = record.get("step")
            if isinstance(step, float) and step.is_integer():
                step = int(step)
            if not isinstance(step, int) or isinstance(step, bool) or step < 0:
                raise ValueError(f"{path}:{lineno}: 'step' must be a non-negative integer, got {step!r}")
            record["step"] = step
            records.append(metric_names.upgrade_record(record))
    if not records:
        raise ValueError(f"{path}: no metric lines (the file is empty)")
    return records


def _is_eval(record: Record) -> bool:
    return any(key.startswith(metric_names.EVAL_PREFIX) for key in record)


def _series(records: Iterable[Record], key: str) -> Series:
    """``key``'s finite values by step, sorted; a step logged twice (a resumed run) keeps its last value."""
    by_step: dict[int, float] = {}
    for record in records:
        value = number(record.get(key))
        if value is not None:
            by_step[record["step"]] = value
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _keys(records: Iterable[Record]) -> set[str]:
    return {key for record in records for key in record}


def _reward_components(keys: set[str]) -> list[str]:
    return sorted(k for k in keys if metric_names.is_reward_component(k))


def _pass_at_k_keys(keys: set[str]) -> list[str]:
    """``eval/pass@k`` for k > 1, by k; pass@1 has its own (greedy) line and would be drawn twice."""
    ks = sorted((int(m.group(1)), k) for k in keys if (m := _PASS_AT_K.match(k)) and m.group(1) != "1")
    return [key for _, key in ks]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _timing_rows(train: list[Record]) -> tuple[list[int], dict[str, list[float]]]:
    """Seconds per phase for every step with any timing; a missing phase counts as 0 so stacks line up.

    "other" is ``step_s`` minus the phases' sum, floored at 0: phases that overlap (asynchronous rollout)
    can add up to more than the step's wall time, and a negative slice cannot be stacked.
    """
    by_step: dict[int, Record] = {}
    for record in train:
        timed = (*metric_names.STEP_PHASES, (OTHER, metric_names.TIMING_STEP))
        if any(number(record.get(key)) is not None for _, key in timed):
            by_step[record["step"]] = record
    steps = sorted(by_step)
    rows: dict[str, list[float]] = {name: [] for name, _ in metric_names.STEP_PHASES}
    rows[OTHER] = []
    for s in steps:
        record = by_step[s]
        total = 0.0
        for name, key in metric_names.STEP_PHASES:
            value = number(record.get(key)) or 0.0
            rows[name].append(value)
            total += value
        step_time = number(record.get(metric_names.TIMING_STEP))
        rows[OTHER].append(max(step_time - total, 0.0) if step_time is not None else 0.0)
    return steps, rows


# ---------------------------------------------------------------------------------------------------------
# plots


def _figure(nrows: int = 1, *, height_per_row: float = 2.6, title: str) -> tuple[Figure, list[Axes]]:
    """A figure with ``nrows`` stacked axes sharing the step axis (figures, not pyplot: no global state)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    height = 5.0 if nrows == 1 else 1.2 + height_per_row * nrows
    fig = Figure(figsize=(9.0, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, 1, sharex=True, squeeze=False)[:, 0].tolist()
    for ax in axes:
        ax.grid(True, alpha=0.35)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("training step")
    fig.suptitle(title, fontsize=13)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def _label(key: str) -> str:
    return key.split("/", 1)[1] if "/" in key else key


def _plot_reward(train: list[Record], keys: set[str], path: Path) -> Path | None:
    mean_steps, means = _series(train, metric_names.REWARD_MEAN)
    components = [(k, *_series(train, k)) for k in _reward_components(keys)]
    components = [c for c in components if c[1]]
    if not mean_steps and not components:
        return None
    fig, (ax,) = _figure(title="Training reward")
    if mean_steps:
        marker = "o" if len(means) < 30 else None
        ax.plot(mean_steps, means, color="C0", linewidth=2.2, label=metric_names.REWARD_MEAN, marker=marker)
        std_steps, stds = _series(train, metric_names.REWARD_STD)
        std_by_step = dict(zip(std_steps, stds))
        band = [(s, m, std_by_step[s]) for s, m in zip(mean_steps, means) if s in std_by_step]
        if band:
            xs = [b[0] for b in band]
            ax.fill_between(
                xs, [m - sd for _, m, sd in band], [m + sd for _, m, sd in band], color="C0", alpha=0.18, label="± std"
            )
    for i, (key, steps, values) in enumerate(components, start=1):
        ax.plot(steps, values, color=f"C{i % 10}", linewidth=1.4, linestyle="--", label=key)
    ax.set_ylabel("reward")
    ax.legend(loc="best", fontsize=9)
    return _save(fig, path)


def _plot_pass_at_1(evals: list[Record], keys: set[str], path: Path) -> Path | None:
    lines = [(metric_names.EVAL_PASS1, "pass@1 (greedy)"), (metric_names.EVAL_PASS1_SAMPLED, "pass@1 (sampled)")]
    lines += [(k, _label(k)) for k in _pass_at_k_keys(keys)]
    drawn = [(label, *_series(evals, key)) for key, label in lines]
    drawn = [d for d in drawn if d[1]]
    if not drawn:
        return None
    fig, (ax,) = _figure(title="Held-out evaluation")
    markers = "os^Dvp*hX"
    for i, (label, steps, values) in enumerate(drawn):
        # clip_on=False: points at exactly 0 or 1 sit on the frame and would otherwise be cut in half.
        ax.plot(steps, values, marker=markers[i % len(markers)], linewidth=1.8, label=label, clip_on=False, zorder=3)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("fraction of prompts solved")
    ax.legend(loc="best", fontsize=9)
    return _save(fig, path)


def _fraction_axis(ax: Axes, values: Sequence[float]) -> None:
    """Percent ticks from 0: a fraction that barely moves should look flat, not like magnified noise."""
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_ylim(0.0, min(1.0, max(0.05, max(values) * 1.15)))


def _plot_response_length(train: list[Record], path: Path) -> Path | None:
    length = _series(train, metric_names.RESPONSE_LEN)
    clip = _series(train, metric_names.RESPONSE_CLIP)
    panels = [p for p in ((length, "mean length (tokens)", "C0"), (clip, "clipped at max length", "C3")) if p[0][0]]
    if not panels:
        return None
    fig, axes = _figure(len(panels), title="Response length")
    for ax, ((steps, values), ylabel, color) in zip(axes, panels):
        ax.plot(steps, values, color=color, linewidth=1.8, marker="o" if len(values) < 30 else None)
        ax.set_ylabel(ylabel)
        if ylabel.startswith("clipped"):
            _fraction_axis(ax, values)
    return _save(fig, path)


def _plot_kl_clip(train: list[Record], path: Path) -> Path | None:
    specs = (
        (metric_names.LEARNER_KL, "KL to reference", "C4"),
        (metric_names.LEARNER_CLIP_FRACTION, "clip fraction", "C1"),
        (metric_names.LEARNER_ENTROPY, "entropy (nats)", "C2"),
    )
    return _plot_panels(train, specs, "Policy drift: KL, clipping and entropy", path, fractions=("clip fraction",))


def _plot_tools(train: list[Record], path: Path) -> Path | None:
    specs = (
        (metric_names.ROLLOUT_TOOL_CALLS_MEAN, "tool calls per sample", "C1"),
        (metric_names.ROLLOUT_NUM_TURNS_MEAN, "model turns per sample", "C0"),
        (metric_names.ROLLOUT_ENV_S_MEAN, "s per environment step", "C7"),
        (metric_names.ROLLOUT_FORKS_MEAN, "forks per sample (template rewrote history)", "C3"),
    )
    return _plot_panels(train, specs, "Multi-turn rollouts: tools and turns", path)


def _plot_panels(
    train: list[Record], specs: Sequence[tuple[str, str, str]], title: str, path: Path, fractions: Sequence[str] = ()
) -> Path | None:
    """One panel per ``(metric, label, colour)`` that was logged, sharing the step axis (None: none was)."""
    panels = [(_series(train, key), label, color) for key, label, color in specs]
    panels = [p for p in panels if p[0][0]]
    if not panels:
        return None
    fig, axes = _figure(len(panels), height_per_row=2.2, title=title)
    for ax, ((steps, values), label, color) in zip(axes, panels):
        ax.plot(steps, values, color=color, linewidth=1.8, marker="o" if len(values) < 30 else None)
        ax.set_ylabel(label)
        if label in fractions:
            _fraction_axis(ax, values)
    return _save(fig, path)


def _plot_timing(train: list[Record], path: Path) -> Path | None:
    steps, rows = _timing_rows(train)
    if not steps:
        return None
    names = [name for name, values in rows.items() if any(values)]
    if not names:
        return None
    fig, (ax,) = _figure(title="Time per step by phase")
    colors = {"rollout": "C0", "reward": "C2", "train": "C3", "sync": "C4", OTHER: "C7"}
    if len(steps) <= MAX_TIMING_BARS:
        bottom = [0.0] * len(steps)
        for name in names:
            ax.bar(steps, rows[name], bottom=bottom, width=0.8, color=colors[name], label=name)
            bottom = [b + v for b, v in zip(bottom, rows[name])]
    else:
        ax.stackplot(steps, *(rows[n] for n in names), colors=[colors[n] for n in names], labels=names, alpha=0.85)
    ax.set_ylabel("seconds")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, title="phase")
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------------
# summary


def _summary(run_dir: Path, train: list[Record], evals: list[Record], files: ReportFiles) -> str:
    out = [f"# Run report: {run_dir.name}", ""]
    train_steps = sorted({r["step"] for r in train})
    if train_steps:
        out.append(f"- **Training steps:** {len(train_steps)} (steps {train_steps[0]} to {train_steps[-1]})")
    else:
        out.append("- **Training steps:** 0 (no training metrics logged)")

    eval_steps, pass1 = _series(evals, metric_names.EVAL_PASS1)
    if len(pass1) >= 2:
        diff = pass1[-1] - pass1[0]
        out.append(
            f"- **Eval pass@1 (greedy):** {fmt(pass1[0])} at step {eval_steps[0]} → {fmt(pass1[-1])} at step "
            f"{eval_steps[-1]} (change {diff:+.3f})"
        )
    elif pass1:
        out.append(f"- **Eval pass@1 (greedy):** {fmt(pass1[0])} at step {eval_steps[0]} (one evaluation only)")
    else:
        out.append("- **Eval pass@1 (greedy):** no evaluation logged")

    reward_steps, rewards = _series(train, metric_names.REWARD_MEAN)
    if rewards:
        out.append(
            f"- **Reward (mean):** {fmt(rewards[0])} at step {reward_steps[0]} → {fmt(rewards[-1])} at step "
            f"{reward_steps[-1]}"
        )
    else:
        out.append("- **Reward (mean):** not logged")

    tokens = _mean(_series(train, metric_names.TOKENS_PER_S)[1])
    out.append(f"- **Throughput:** {fmt(tokens, ',.0f')} tokens/s (mean over steps)")

    step_mean = _mean(_series(train, metric_names.TIMING_STEP)[1])
    out.append(f"- **Step time:** {fmt(step_mean, '.2f')} s (mean over steps)")
    out.append("")

    timing_steps, rows = _timing_rows(train)
    if timing_steps:
        out += ["## Time per step", "", "| phase | mean s/step | share of step |", "|---|---:|---:|"]
        for name, key in (*metric_names.STEP_PHASES, (OTHER, None)):
            values = _series(train, key)[1] if key else rows[OTHER]
            mean = _mean(values)
            share = f"{mean / step_mean:.0%}" if mean is not None and step_mean else "n/a"
            out.append(f"| {name} | {fmt(mean, '.2f')} | {share} |")
        out.append(f"| **step** | **{fmt(step_mean, '.2f')}** | |")
        out.append("")

    out += example_section(run_dir)

    out += ["## Plots", ""]
    plots = files.plots()
    if plots:
        out += [f"- [{p.stem}]({p.name})" for p in plots]
        out.append("")
        out += [f"![{p.stem}]({p.name})\n" for p in plots]
    else:
        out += ["No plottable metrics were logged.", ""]
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------------------
# entry point


def write_report(run_dir: Path) -> ReportFiles:
    """Write the plots and ``summary.md`` into ``run_dir/report/`` and return their paths.

    Raises ``ValueError`` naming the file (and line) when ``metrics.jsonl`` is missing, empty or malformed,
    or when the last rollouts parquet cannot be read.
    """
    import matplotlib

    # No display on training nodes (and no wish to open windows elsewhere): render straight to files.
    matplotlib.use("Agg")

    run_dir = Path(run_dir)
    records = _read_metrics(run_dir / METRICS_FILE)
    train = [r for r in records if not _is_eval(r)]
    evals = [r for r in records if _is_eval(r)]
    out_dir = run_dir / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)

    paths = {name: out_dir / f"{name}.png" for name in PLOT_NAMES}
    written = {
        "reward": _plot_reward(train, _keys(train), paths["reward"]),
        "pass_at_1": _plot_pass_at_1(evals, _keys(evals), paths["pass_at_1"]),
        "response_length": _plot_response_length(train, paths["response_length"]),
        "kl_clip": _plot_kl_clip(train, paths["kl_clip"]),
        "timing": _plot_timing(train, paths["timing"]),
        "tools": _plot_tools(train, paths["tools"]),
    }
    for name, result in written.items():
        if result is None:
            # a plot left over from an earlier report of this run would contradict the new summary
            paths[name].unlink(missing_ok=True)

    files = ReportFiles(report_dir=out_dir, summary=out_dir / SUMMARY_FILE, **written)
    text = _summary(run_dir, train, evals, files)
    tmp = files.summary.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(files.summary)
    return files
