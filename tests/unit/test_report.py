"""The run report: every plot is a real PNG, the summary states the right numbers, bad input names its file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grpo_dist.metric_names import DEPRECATED_METRIC_NAMES, is_reward_component, with_deprecated_names
from grpo_dist.report import PLOT_NAMES, ReportFiles, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# step_s chosen so the mean is exactly 11.00; the phases leave 1 s of "other" per step on average.
STEP_S = [10.0, 12.0, 11.0, 9.0, 13.0]
PHASES = {"rollout": 5.0, "reward": 1.0, "train": 3.0, "sync": 1.0}
REWARD_MEAN = [0.10, 0.20, 0.25, 0.40, 0.55]


def _train_line(step: int) -> dict[str, Any]:
    i = step - 1
    return {
        "step": step,
        "reward/mean": REWARD_MEAN[i],
        "reward/std": 0.3,
        "reward/exact_match": REWARD_MEAN[i] - 0.05,
        "reward/format": 0.9,
        "reward/frac_zero_std": 0.25,
        "reward/num_masked_samples": 0.0,
        "reward/exact_match/failures": 0.0,
        "response_length/mean": 120.0 + 10 * step,
        "response_length/clip_frac": 0.02 * step,
        "learner/loss": 0.01,
        "learner/kl": None if step == 2 else 0.001 * step,  # NaN is logged as null
        "learner/clip_fraction": 0.05,
        "learner/entropy": 1.2 - 0.1 * step,
        "learner/grad_norm": 0.5,
        "learner/lr": 1e-6,
        **{f"timing/{name}_s": seconds for name, seconds in PHASES.items()},
        "timing/step_s": STEP_S[i],
        "throughput/tokens_per_s": 1000.0 + 100 * step,
        "weights/version": step,
        "rollout/num_turns_mean": 1.5 + 0.1 * step,
        "rollout/tool_calls_mean": 0.5 + 0.1 * step,
        "rollout/env_step_s_mean": 0.01,
    }


def _eval_line(step: int, pass1: float) -> dict[str, Any]:
    return {
        "step": step,
        "eval/pass@1": pass1,
        "eval/pass@1_sampled": pass1 - 0.05,
        "eval/pass@4": min(1.0, pass1 + 0.2),
        "eval/pass@8": min(1.0, pass1 + 0.3),
        "eval/num_prompts": 64.0,
        "timing/eval_s": 30.0,
    }


def _write_metrics(run_dir: Path, lines: list[dict[str, Any]]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (run_dir / "metrics.jsonl").write_text(text, encoding="utf-8")


def _write_rollouts(run_dir: Path, step: int, tag: str) -> Path:
    rows = []
    for prompt_id in range(4):
        for sample_index in range(2):
            rows.append(
                {
                    "step": step,
                    "prompt_id": f"p{prompt_id}",
                    "sample_index": sample_index,
                    "prompt": f"{tag} question {prompt_id}: what is {prompt_id} + {prompt_id}?",
                    "completion": f"{tag} answer {prompt_id}.{sample_index} ```code``` = {2 * prompt_id}",
                    "ground_truth": str(2 * prompt_id),
                    "reward": float(sample_index == 0),
                    "advantage": 0.5 if sample_index == 0 else -0.5,
                    "valid": True,
                    "finish_reason": "stop",
                    "response_length": 12,
                    "weights_version": step,
                    "reward_exact_match": float(sample_index == 0),
                }
            )
    out = run_dir / "rollouts"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"step_{step:06d}.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _full_run(run_dir: Path) -> Path:
    lines = [_eval_line(0, 0.25)]
    lines += [_train_line(step) for step in range(1, 6)]
    lines.append(_eval_line(5, 0.5))
    _write_metrics(run_dir, lines)
    _write_rollouts(run_dir, 3, "old")
    _write_rollouts(run_dir, 5, "last")
    pq.write_table(
        pa.Table.from_pylist([{"completion": "greedy"}]), run_dir / "rollouts" / "eval_greedy_000000.parquet"
    )
    (run_dir / "config.yaml").write_text("model:\n  name: tiny\n", encoding="utf-8")
    return run_dir


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ReportFiles, str]:
    run_dir = _full_run(tmp_path_factory.mktemp("runs") / "run-full")
    files = write_report(run_dir)
    return run_dir, files, files.summary.read_text(encoding="utf-8")


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC), path
    assert len(data) > 10_000, f"{path} is only {len(data)} bytes"


# ---------------------------------------------------------------------------------------------------------
# a complete run


def test_writes_every_plot_and_the_summary(full: tuple[Path, ReportFiles, str]) -> None:
    run_dir, files, _ = full
    assert files.report_dir == run_dir / "report"
    assert files.summary == run_dir / "report" / "summary.md"
    for name in PLOT_NAMES:
        path = getattr(files, name)
        assert path == run_dir / "report" / f"{name}.png"
        _assert_png(path)
    assert files.plots() == [run_dir / "report" / f"{n}.png" for n in PLOT_NAMES]
    assert files.paths() == [files.summary, *files.plots()]
    assert all(p.is_file() for p in files.paths())
    assert sorted(p.name for p in files.report_dir.iterdir()) == sorted(p.name for p in files.paths())


def test_summary_headline_numbers(full: tuple[Path, ReportFiles, str]) -> None:
    _, _, text = full
    assert text.startswith("# Run report: run-full\n")
    assert "**Training steps:** 5 (steps 1 to 5)" in text
    assert "0.250 at step 0 → 0.500 at step 5 (change +0.250)" in text
    assert "0.100 at step 1 → 0.550 at step 5" in text
    assert "**Step time:** 11.00 s" in text
    assert "1,300 tokens/s" in text  # mean of 1100..1500


def test_summary_timing_table(full: tuple[Path, ReportFiles, str]) -> None:
    _, _, text = full
    assert "| phase | mean s/step | share of step |" in text
    assert "| rollout | 5.00 | 45% |" in text
    assert "| reward | 1.00 | 9% |" in text
    assert "| train | 3.00 | 27% |" in text
    assert "| sync | 1.00 | 9% |" in text
    # other per step: max(step - 10, 0) = 0, 2, 1, 0, 3 -> mean 1.2 (step 4 is under the phases' sum)
    assert "| other | 1.20 | 11% |" in text
    assert "| **step** | **11.00** | |" in text


def test_summary_examples_come_from_the_last_step_file(full: tuple[Path, ReportFiles, str]) -> None:
    _, _, text = full
    assert "## Example completions (step 5)" in text
    assert "rollouts/step_000005.parquet" in text
    assert "old question" not in text
    # one sample per prompt: the first three prompts, sample 0 each, with ground truth and reward
    for pid in range(3):
        assert f"last question {pid}: what is {pid} + {pid}?" in text
        assert f"last answer {pid}.0" in text
    assert "last answer 0.1" not in text
    assert "last question 3" not in text
    assert "**ground_truth:**" in text
    assert text.count("(reward 1.000)") == 3
    # the completion holds ``` so its fence must be longer
    assert "````text\nlast answer 0.0 ```code``` = 0\n````" in text


def test_summary_links_plots_relatively(full: tuple[Path, ReportFiles, str]) -> None:
    _, files, text = full
    for path in files.plots():
        assert f"]({path.name})" in text
        assert f"![{path.stem}]({path.name})" in text
    assert str(files.report_dir) not in text


DRIFT_METRICS = ("learner/kl", "learner/clip_fraction", "learner/entropy")


def test_report_is_rewritten_in_place(tmp_path: Path) -> None:
    run_dir = _full_run(tmp_path / "run")
    first = write_report(run_dir)
    # the same run without evaluation and KL: the old plots must not linger next to the new summary
    _write_metrics(
        run_dir,
        [{k: v for k, v in _train_line(s).items() if k not in DRIFT_METRICS} for s in range(1, 6)],
    )
    second = write_report(run_dir)
    assert first.pass_at_1 is not None and first.kl_clip is not None
    assert second.pass_at_1 is None and second.kl_clip is None
    assert not (run_dir / "report" / "pass_at_1.png").exists()
    assert not (run_dir / "report" / "kl_clip.png").exists()
    assert "no evaluation logged" in second.summary.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------
# partial runs


def test_plots_without_data_are_skipped(tmp_path: Path) -> None:
    run_dir = tmp_path / "run-min"
    _write_metrics(run_dir, [{"step": s, "reward/mean": 0.1 * s, "loss": None} for s in range(1, 4)])
    files = write_report(run_dir)
    assert files.reward is not None
    _assert_png(files.reward)
    for name in ("pass_at_1", "response_length", "kl_clip", "timing", "tools"):
        assert getattr(files, name) is None, name
        assert not (run_dir / "report" / f"{name}.png").exists()
    assert files.paths() == [files.summary, files.reward]
    text = files.summary.read_text(encoding="utf-8")
    assert "no evaluation logged" in text
    assert "**Step time:** n/a" in text
    assert "## Time per step" not in text
    assert "## Example completions" not in text
    assert "](reward.png)" in text
    assert "](timing.png)" not in text


def test_metrics_that_are_all_null_count_as_absent(tmp_path: Path) -> None:
    run_dir = tmp_path / "run-null"
    run_dir.mkdir()
    lines = [
        f'{{"step": {s}, "learner/kl": null, "learner/entropy": NaN, "learner/clip_fraction": Infinity, '
        f'"reward/mean": "x"}}'
        for s in (1, 2)
    ]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    files = write_report(run_dir)
    assert files.plots() == []
    assert "No plottable metrics were logged." in files.summary.read_text(encoding="utf-8")


def _old_names(line: dict[str, Any]) -> dict[str, Any]:
    """``line`` as grpo-dist 0.1.0 wrote it: flat names for the metrics renamed since."""
    old_of = {new: old for old, new in DEPRECATED_METRIC_NAMES.items()}
    return {old_of.get(k, k): v for k, v in line.items()}


def test_a_run_written_with_the_old_flat_names_reads_the_same(tmp_path: Path) -> None:
    lines = [_train_line(s) for s in range(1, 6)]
    old = [_old_names(line) for line in lines]
    assert {"kl", "clip_fraction", "entropy", "loss", "frac_reward_zero_std"} <= set(old[0])
    assert not any(k.startswith("learner/") for k in old[0])
    _write_metrics(tmp_path / "new" / "run", lines)
    _write_metrics(tmp_path / "old" / "run", old)
    # and a file of this release: new names with the old ones repeated after them
    _write_metrics(tmp_path / "both" / "run", [with_deprecated_names(line) for line in lines])
    reports = {name: write_report(tmp_path / name / "run") for name in ("new", "old", "both")}
    for files in reports.values():
        assert files.kl_clip is not None
        _assert_png(files.kl_clip)
        assert [p.name for p in files.plots()] == [p.name for p in reports["new"].plots()]
    texts = {name: files.summary.read_text(encoding="utf-8") for name, files in reports.items()}
    assert texts["old"] == texts["new"] == texts["both"]


def test_reward_components_are_the_reward_functions_only() -> None:
    components = sorted(k for k in _train_line(1) if is_reward_component(k))
    assert components == ["reward/exact_match", "reward/format"]  # not frac_zero_std, masked counts, failures


def test_eval_only_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run-eval"
    _write_metrics(run_dir, [_eval_line(0, 0.3)])
    files = write_report(run_dir)
    assert files.plots() == [run_dir / "report" / "pass_at_1.png"]
    _assert_png(files.plots()[0])
    text = files.summary.read_text(encoding="utf-8")
    assert "**Training steps:** 0" in text
    assert "0.300 at step 0 (one evaluation only)" in text


def test_resumed_run_keeps_the_last_value_of_a_repeated_step(tmp_path: Path) -> None:
    run_dir = tmp_path / "run-resumed"
    lines = [_train_line(s) for s in (1, 2, 3)] + [{**_train_line(3), "reward/mean": 0.9}, _train_line(4)]
    _write_metrics(run_dir, lines)
    text = write_report(run_dir).summary.read_text(encoding="utf-8")
    assert "**Training steps:** 4 (steps 1 to 4)" in text
    assert "0.100 at step 1 → 0.400 at step 4" in text


def test_many_steps_use_a_stacked_area(tmp_path: Path) -> None:
    run_dir = tmp_path / "run-long"
    lines = [{"step": s, "timing/rollout_s": 2.0, "timing/train_s": 1.0, "timing/step_s": 3.5} for s in range(1, 101)]
    _write_metrics(run_dir, lines)
    files = write_report(run_dir)
    assert files.timing is not None
    _assert_png(files.timing)
    assert "| other | 0.50 | 14% |" in files.summary.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------
# bad input


def test_missing_metrics_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"metrics\.jsonl: no metrics file"):
        write_report(tmp_path)
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("text", ["", "\n  \n"], ids=["empty", "blank-lines"])
def test_empty_metrics_file(tmp_path: Path, text: str) -> None:
    (tmp_path / "metrics.jsonl").write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=r"metrics\.jsonl: no metric lines"):
        write_report(tmp_path)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"step": 3, "loss": 0.1', "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"loss": 0.1}', "'step' must be a non-negative integer, got None"),
        ('{"step": "3"}', "'step' must be a non-negative integer, got '3'"),
        ('{"step": 2.5}', "'step' must be a non-negative integer, got 2.5"),
    ],
    ids=["truncated", "not-object", "no-step", "string-step", "fractional-step"],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, bad: str, message: str) -> None:
    good = [json.dumps(_train_line(1)), "", json.dumps(_train_line(2))]
    (tmp_path / "metrics.jsonl").write_text("\n".join([*good, bad]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"metrics\.jsonl:4: ") as info:
        write_report(tmp_path)
    assert str(tmp_path / "metrics.jsonl") in str(info.value)
    assert message in str(info.value)


def test_unreadable_rollouts_parquet_names_the_file(tmp_path: Path) -> None:
    _write_metrics(tmp_path, [_train_line(1)])
    (tmp_path / "rollouts").mkdir()
    (tmp_path / "rollouts" / "step_000001.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(ValueError, match=r"step_000001\.parquet: cannot read rollouts parquet"):
        write_report(tmp_path)


def test_rollouts_without_completions_names_the_file(tmp_path: Path) -> None:
    _write_metrics(tmp_path, [_train_line(1)])
    (tmp_path / "rollouts").mkdir()
    pq.write_table(pa.Table.from_pylist([{"prompt": "q"}]), tmp_path / "rollouts" / "step_000001.parquet")
    with pytest.raises(ValueError, match=r"step_000001\.parquet: no 'completion' column \(columns: prompt\)"):
        write_report(tmp_path)


def test_import_needs_no_torch() -> None:
    # the CLI's report command runs on machines with only the light dependencies
    code = "import sys, grpo_dist.report; assert 'torch' not in sys.modules; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_multi_turn_sample_is_shown_turn_by_turn(tmp_path: Path) -> None:
    import json

    from grpo_dist.report import write_report

    (tmp_path / "rollouts").mkdir()
    turns = [
        {"text": "<calculator>56*86</calculator>", "messages": [{"role": "tool", "content": "<result>4816</result>"}]},
        {"text": "4816", "messages": [{"role": "user", "content": "and 2*3?"}], "forked": True},
        {"text": "6", "messages": []},
    ]
    row = {"prompt_id": 0, "sample_index": 0, "prompt": "56*86=", "completion": "4816", "reward": 1.0}
    pq.write_table(
        pa.Table.from_pylist([{**row, "turns": json.dumps(turns)}]), tmp_path / "rollouts" / "step_000001.parquet"
    )
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/mean": 1.0}) + "\n")
    text = write_report(tmp_path).summary.read_text()
    assert "**trajectory:**" in text
    assert "[model] <calculator>56*86</calculator>\n[tool] <result>4816</result>\n[model] 4816" in text
    assert "[user] and 2*3?\n[the chat template rewrote the history here" in text  # a fork (template_check: fork)
