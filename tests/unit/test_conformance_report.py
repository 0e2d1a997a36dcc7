"""The conformance matrix's pure parts: differences, the verdict of a row, the table and the README block."""

from __future__ import annotations

import math

import pytest

from grpo_dist.models.conformance import probe_sequences
from grpo_dist.models.conformance_results import (
    TABLE_END,
    TABLE_START,
    FamilyResult,
    markdown_table,
    max_abs_diff,
    update_readme,
)


def _row(**kw: object) -> FamilyResult:
    base: dict[str, object] = {
        "family": "llama",
        "architecture": "LlamaForCausalLM",
        "tied": False,
        "features": "baseline",
        "expected_reason": None,
        "parity_before": 5e-6,
        "parity_after": 4e-6,
        "weight_delta": 2e-3,
        "logprob_shift": 0.3,
        "hf_reload": 0.0,
        "vllm_reload": 5e-6,
    }
    return FamilyResult(**{**base, **kw})  # type: ignore[arg-type]


def test_max_abs_diff_over_ragged_rows_and_nan() -> None:
    assert max_abs_diff([[0.0, 1.0], [2.0]], [[0.0, 1.5], [1.0]]) == 1.0
    assert math.isnan(max_abs_diff([[0.0, float("nan")]], [[0.0, 0.0]]))
    with pytest.raises(ValueError, match="different shapes"):
        max_abs_diff([[0.0]], [[0.0, 1.0]])


def test_probe_is_fixed_by_the_seed_and_avoids_special_tokens() -> None:
    a, b = probe_sequences(300, seed=0), probe_sequences(300, seed=0)
    assert a == b
    assert a != probe_sequences(300, seed=1)
    assert all(3 <= t < 300 for s in a for t in s)


def test_a_row_conforms_only_when_every_figure_is_below_tolerance_and_the_model_moved() -> None:
    assert _row().ok
    assert not _row(parity_after=5.6).ok
    assert not _row(parity_after=5.6).sync_ok
    assert not _row(vllm_reload=None).export_ok
    assert not _row(parity_before=float("nan")).ok
    assert not _row(logprob_shift=1e-5).ok  # updates too small to expose a stale engine: the check proves nothing
    assert not _row(errors={"sync": "WeightSyncError: ..."}).ok


def test_table_marks_each_row_and_lists_the_refusals() -> None:
    table = markdown_table(
        [_row(), _row(family="mixtral", parity_after=None, expected_reason="Mixtral: layout", errors={"sync": "E: x"})]
    )
    lines = table.splitlines()
    assert lines[0].startswith("| family | architecture | tied | sync ok |")
    assert lines[2].startswith("| llama | LlamaForCausalLM | no | ✓ | 5.0e-06 | 4.0e-06 | 2.0e-03 | ✓ ")
    assert "| mixtral |" in lines[3]
    assert "| ✗ |" in lines[3]
    assert "refused: Mixtral; sync: E" in lines[3]
    assert "- **mixtral**: Mixtral: layout." in table


def test_readme_block_is_replaced_between_the_markers_only() -> None:
    text = f"intro\n{TABLE_START}\nold\n{TABLE_END}\nrest\n"
    out = update_readme(text, "| new |\n")
    assert out == f"intro\n{TABLE_START}\n| new |\n{TABLE_END}\nrest\n"
    with pytest.raises(ValueError, match="no <!-- conformance:start -->"):
        update_readme("no markers", "x")


def test_an_error_from_an_actor_is_described_by_its_innermost_cause() -> None:
    from grpo_dist.models.conformance import describe_error

    class TaskError(RuntimeError):  # the shape of Ray's task error: the actor's exception as .cause
        def __init__(self, cause: BaseException) -> None:
            super().__init__("\x1b[36mray::VllmEngine.receive_weights()\x1b[39m (pid=1) Traceback ...")
            self.cause = cause

    try:
        try:
            raise TaskError(ValueError("There is no module or parameter named 'layers.0.mlp'"))
        except TaskError as task:
            raise RuntimeError("weight sync to version 1: ...") from task
    except RuntimeError as exc:
        text = describe_error(exc)
    assert text == "RuntimeError <- ValueError: There is no module or parameter named 'layers.0.mlp'"
    assert describe_error(TimeoutError("no answer\n within 5 s")) == "TimeoutError: no answer within 5 s"
