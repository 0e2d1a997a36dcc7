"""The behavioural sync check's pure parts: the probe, the comparison, the tolerances; and which
held-out set a run evaluates."""

from __future__ import annotations

import math

import pytest

from grpo_dist.config import load_config
from grpo_dist.models.assets import resolve_data_files
from grpo_dist.sync.probe import compare, default_tolerance, make_probe


def test_probe_concatenates_prompts_cyclically_to_the_requested_shape() -> None:
    probe = make_probe([[1, 2, 3], [4], [5, 6]], num_sequences=4, length=5)
    assert probe == [[1, 2, 3, 4, 5], [4, 5, 6, 1, 2], [5, 6, 1, 2, 3], [1, 2, 3, 4, 5]]
    assert make_probe([[7, 8]], num_sequences=1, length=2) == [[7, 8]]


def test_probe_refuses_nothing_to_build_from() -> None:
    with pytest.raises(ValueError, match="non-empty prompt"):
        make_probe([[], []], num_sequences=2, length=4)
    with pytest.raises(ValueError, match=">= 2"):
        make_probe([[1]], num_sequences=1, length=1)


def test_compare_names_the_worst_token() -> None:
    probe = [[10, 11, 12], [20, 21, 22]]
    learner = [[-1.0, -2.0], [-3.0, -4.0]]
    engine = [[-1.0, -2.0 + 1e-6], [-3.0 - 0.5, -4.0]]
    diff = compare(probe, engine, learner)
    assert diff.sequence == 1 and diff.position == 1 and diff.token_id == 21
    assert diff.max_abs == pytest.approx(0.5)
    assert diff.mean_abs == pytest.approx((1e-6 + 0.5) / 4)
    assert "probe sequence 1, token 1 (id 21)" in diff.describe()


def test_identical_logprobs_differ_by_zero_and_nan_is_infinitely_wrong() -> None:
    probe = [[1, 2, 3]]
    assert compare(probe, [[-1.0, -2.0]], [[-1.0, -2.0]]).max_abs == 0.0
    assert math.isinf(compare(probe, [[-1.0, math.nan]], [[-1.0, -2.0]]).max_abs)


def test_compare_refuses_rows_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="expected 2 logprobs"):
        compare([[1, 2, 3]], [[-1.0]], [[-1.0, -2.0]])


def test_tolerance_by_dtype() -> None:
    assert default_tolerance("float32") == 1e-3
    assert default_tolerance("bfloat16") > default_tolerance("float32")
    with pytest.raises(ValueError, match=r"sync\.probe_tolerance"):
        default_tolerance("int8")


def test_probe_settings_are_validated() -> None:
    cfg = load_config(None, ["sync.probe_every=0", "sync.probe_tolerance=0.5"])
    assert cfg.sync.probe_every == 0 and cfg.sync.probe_tolerance == 0.5
    with pytest.raises(ValueError, match=r"sync\.probe_tolerance"):
        load_config(None, ["sync.probe_tolerance=0"])


def test_a_run_on_the_users_data_evaluates_the_users_data_or_nothing(tmp_path) -> None:
    train = tmp_path / "train.jsonl"
    held_out = tmp_path / "held_out.jsonl"
    cfg = load_config(None, [f"data.train_files=[{train}]"])
    assert resolve_data_files(cfg) == ([str(train)], [])
    cfg = load_config(None, [f"data.train_files=[{train}]", f"data.eval_files=[{held_out}]"])
    assert resolve_data_files(cfg) == ([str(train)], [str(held_out)])
