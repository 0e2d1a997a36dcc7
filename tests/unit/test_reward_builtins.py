"""Built-in reward functions and ``resolve``: pure functions, no child process, no Ray."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grpo_dist.config import RewardFunctionConfig
from grpo_dist.reward.builtins import (
    BUILTINS,
    context_parameters,
    exact_match,
    extract_answer,
    format_reward,
    overlong,
    parse_number,
    resolve,
)

HERE = Path(__file__).parent


def em(solution: str, truth: Any, **kwargs: Any) -> float:
    return exact_match("unit", solution, truth, {}, **kwargs)


GSM8K_TRUTH = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether she sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
)


@pytest.mark.parametrize(
    ("solution", "truth", "kwargs", "expected"),
    [
        # \boxed: the last complete one, braces matched
        ("The answer is \\boxed{42}.", "42", {}, 1.0),
        ("First \\boxed{41}, no wait: \\boxed{42}", "42", {}, 1.0),
        ("\\boxed{42} or maybe \\boxed{41}", "42", {}, 0.0),
        ("\\boxed{\\frac{1}{2}}", "0.5", {}, 1.0),
        ("\\boxed{\\boxed{7}}", "7", {}, 1.0),
        ("\\boxed{x^{2}+1}", "x^{2} + 1", {}, 0.0),
        ("\\boxed{x^{2}+1}", "x^{2}+1", {}, 1.0),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}", {}, 1.0),
        ("\\boxed{3} and then \\boxed{4", "3", {}, 1.0),  # truncated last box: the earlier complete one
        ("\\fbox{9}", "9", {}, 1.0),
        # ####: the first line after the last marker; the ground truth is extracted too (GSM8K)
        ("so #### 1,234", "1234", {}, 1.0),
        ("#### 42\nbecause 40 + 2", "42", {}, 1.0),
        ("Reasoning... #### 72", GSM8K_TRUTH, {}, 1.0),
        ("Reasoning... #### 71", GSM8K_TRUTH, {}, 0.0),
        ("#### 1 #### 2", "2", {}, 1.0),
        # numbers: sign, commas, decimals, fractions, currency; integers compare exactly
        ("+5", "5", {}, 1.0),
        ("-5", "5", {}, 0.0),
        ("5.0", "5", {}, 1.0),
        ("5.", "5", {}, 1.0),
        ("1/2", "0.5", {}, 1.0),
        ("2/4", "1/2", {}, 1.0),
        ("-\\frac{3}{4}", "-0.75", {}, 1.0),
        ("0.333", "1/3", {}, 0.0),
        ("1000001", "1000000", {}, 0.0),
        ("1,000,000", "1000000", {}, 1.0),
        ("$18", "18", {}, 1.0),
        ("$1,000.50", "1000.5", {}, 1.0),
        ("$5$", "5", {}, 1.0),
        ("3.1415926", "3.1415927", {}, 1.0),
        ("3.14", "3.1415927", {}, 0.0),
        ("12", 12, {}, 1.0),  # a numeric ground-truth column
        # strings: whitespace collapsed, case folded unless case_sensitive, a final period ignored
        ("Paris", "paris", {}, 1.0),
        ("Paris", "paris", {"case_sensitive": True}, 0.0),
        ("  New   York ", "new york", {}, 1.0),
        ("Paris.", "Paris", {}, 1.0),
        ("Lyon", "Paris", {}, 0.0),
        ("", "5", {}, 0.0),
        # auto falls back to the whole text; last_number digs the answer out of prose
        ("The answer is 42", "42", {}, 0.0),
        ("The answer is 42", "42", {"extract": "last_number"}, 1.0),
        ("I have 3 apples and 1,500 pears.", "1500", {"extract": "last_number"}, 1.0),
        ("pages 3-5", "5", {"extract": "last_number"}, 1.0),
        ("half is 1/2", "0.5", {"extract": "last_number"}, 1.0),
        ("no numbers here", "4", {"extract": "last_number"}, 0.0),
        # a fixed mode uses only its own rule
        ("\\boxed{5}", "5", {"extract": "hash"}, 0.0),
        ("#### 5", "5", {"extract": "boxed"}, 0.0),
        ("\\boxed{5} #### 6", "6", {"extract": "hash"}, 1.0),
        ("#### 5", "5", {"extract": "full"}, 0.0),
        ("5", "#### 5", {"extract": "full"}, 1.0),
    ],
)
def test_exact_match_table(solution: str, truth: Any, kwargs: dict[str, Any], expected: float) -> None:
    assert em(solution, truth, **kwargs) == expected


@pytest.mark.parametrize(
    ("text", "mode", "expected"),
    [
        ("a \\boxed{1} b #### 2", "auto", "1"),
        ("a #### 2", "auto", "2"),
        ("  plain  ", "auto", "plain"),
        ("no box", "boxed", None),
        ("no marker", "hash", None),
        ("####", "hash", ""),
        ("x = -3.5 then 7", "last_number", "7"),
        ("x = -3.5", "last_number", "-3.5"),
        ("v2 of x3", "last_number", None),  # digits glued to words are not numbers
        ("  keep \\boxed{1}  ", "full", "keep \\boxed{1}"),
    ],
)
def test_extract_answer(text: str, mode: str, expected: str | None) -> None:
    assert extract_answer(text, mode) == expected


def test_extract_answer_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode = 'last'"):
        extract_answer("1", "last")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", Fraction(42)),
        ("-1,234.5", Fraction(-24690, 20)),
        (".5", Fraction(1, 2)),
        ("3 / 4", Fraction(3, 4)),
        ("\\dfrac{1}{3}", Fraction(1, 3)),
        ("-$2", Fraction(-2)),
        ("1/0", None),
        ("12,34", None),
        ("1e5", None),
        ("forty", None),
    ],
)
def test_parse_number(text: str, expected: Fraction | None) -> None:
    assert parse_number(text) == expected


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_exact_match_integers_with_thousands_separators(n: int) -> None:
    assert em(f"\\boxed{{{n:,}}}", str(n)) == 1.0
    assert em(f"\\boxed{{{n + 1:,}}}", str(n)) == 0.0


@given(st.integers(min_value=-1000, max_value=1000), st.integers(min_value=1, max_value=1000))
def test_exact_match_fraction_equals_its_decimal_when_exact(num: int, den: int) -> None:
    value = Fraction(num, den)
    assert em(f"{num}/{den}", f"{value.numerator}/{value.denominator}") == 1.0


def test_exact_match_rejects_missing_ground_truth() -> None:
    with pytest.raises(ValueError, match="ground_truth is None"):
        em("42", None)
    with pytest.raises(ValueError, match="holds no answer"):
        em("42", "  ")
    with pytest.raises(ValueError, match="must be a string"):
        em("42", ["42"])


def test_format_reward() -> None:
    assert format_reward(None, "<think>x</think> 4", None, {}, pattern=r"<think>.*</think>") == 1.0
    assert format_reward(None, "<think>\nx\n</think>", None, {}, pattern=r"<think>.*</think>") == 0.0
    assert format_reward(None, "<think>\nx\n</think>", None, {}, pattern=r"(?s)<think>.*</think>") == 1.0
    assert format_reward(None, "<a>1</a> trailing", None, {}, pattern=r"<a>\d</a>", fullmatch=True) == 0.0
    assert format_reward(None, "<a>1</a>", None, {}, pattern=r"<a>\d</a>", fullmatch=True) == 1.0


def ol(length: int, max_len: int = 20, buffer_len: int = 4, **kw: Any) -> float:
    return overlong(
        None, "", None, {}, response_length=length, max_response_length=max_len, buffer_len=buffer_len, **kw
    )


@pytest.mark.parametrize(
    ("length", "expected"),
    [(0, 0.0), (15, 0.0), (16, 0.0), (17, -0.25), (18, -0.5), (19, -0.75), (20, -1.0), (21, -1.0), (100, -1.0)],
)
def test_overlong_boundaries(length: int, expected: float) -> None:
    # L = 20, B = 4: free up to 16 tokens, then -1/4 per token, -1 from 20 on.
    assert ol(length) == pytest.approx(expected)


def test_overlong_penalty_and_whole_length_buffer() -> None:
    assert ol(18, penalty=2.0) == pytest.approx(-1.0)
    assert ol(25, penalty=2.0) == -2.0
    assert ol(0, max_len=8, buffer_len=8) == 0.0
    assert ol(1, max_len=8, buffer_len=8) == pytest.approx(-1 / 8)
    with pytest.raises(ValueError, match="buffer_len = 21"):
        ol(5, buffer_len=21)
    with pytest.raises(ValueError, match="response_length = -1"):
        ol(-1)


# ----------------------------------------------------------------------------------------------------------
# resolve
# ----------------------------------------------------------------------------------------------------------


def fc(name: str, path: str | None = None, **kwargs: Any) -> RewardFunctionConfig:
    return RewardFunctionConfig(name=name, path=path, kwargs=kwargs)


def test_resolve_builtins_by_name_and_by_path() -> None:
    assert set(BUILTINS) == {"code_exec", "env_reward", "exact_match", "format", "overlong"}
    assert resolve(fc("exact_match")) is exact_match
    assert resolve(fc("fmt", "grpo_dist.reward.builtins:format_reward", pattern="x")) is format_reward


@pytest.fixture
def fixtures_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


@pytest.mark.usefixtures("fixtures_on_path")
def test_resolve_user_function() -> None:
    fn = resolve(fc("len", "reward_fixtures:length", scale=2.0))
    assert fn(None, "abc", None, {}, scale=2.0) == 6.0


@pytest.mark.usefixtures("fixtures_on_path")
@pytest.mark.parametrize(
    ("config", "match"),
    [
        (
            fc("x", "no_such_module_zz:fn"),
            r"reward\.functions\[3\]\.path = 'no_such_module_zz:fn': module .* not found",
        ),
        (fc("x", "reward_fixtures:missing"), r"reward\.functions\[3\]\.path .* has no attribute 'missing'"),
        (fc("x", "reward_fixtures:not_callable"), r"reward\.functions\[3\]\.path .* 'not_callable' is a int, not a"),
        (
            fc("nope"),
            r"reward\.functions\[3\]\.name = 'nope' is not a built-in "
            r".*\['code_exec', 'env_reward', 'exact_match', 'format', 'overlong'\]",
        ),
        (fc("exact_match", extrct="boxed"), r"reward\.functions\[3\]: cannot call .*extrct"),
        (fc("exact_match", extract="first"), r"reward\.functions\[3\]\.kwargs\.extract = 'first'"),
        (fc("exact_match", case_sensitive="yes"), r"kwargs\.case_sensitive = 'yes'"),
        (fc("exact_match", tolerance=-1), r"kwargs\.tolerance = -1"),
        (fc("format"), r"reward\.functions\[3\]\.kwargs\.pattern is required"),
        (fc("format", pattern="("), r"kwargs\.pattern = '\(' is not a valid regular expression"),
        (fc("overlong"), r"kwargs\.buffer_len is required"),
        (
            fc("overlong", buffer_len=64),
            r"kwargs\.buffer_len = 64: expected an integer in 1\.\.data\.max_response_length = 32",
        ),
        (fc("overlong", buffer_len=4, max_response_length=8), r"kwargs sets \['max_response_length'\]"),
        (fc("x", "reward_fixtures:needs_kwarg"), r"cannot call .*needs_kwarg.*required"),
        (fc("x", "reward_fixtures:length", solution_str="a"), r"kwargs sets \['solution_str'\]"),
    ],
)
def test_resolve_errors_name_the_field(config: RewardFunctionConfig, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resolve(config, index=3, max_response_length=32)


@pytest.mark.usefixtures("fixtures_on_path")
def test_resolve_accepts_any_kwargs_for_a_catch_all() -> None:
    fn = resolve(fc("x", "reward_fixtures:takes_any", a=1, b=2))
    assert fn(None, "", None, {}, a=1, b=2) == 2.0


def test_resolve_import_error_in_user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_reward_mod.py").write_text("raise RuntimeError('bad module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"importing 'broken_reward_mod' raised RuntimeError: bad module"):
        resolve(fc("x", "broken_reward_mod:fn"), index=0)


@pytest.mark.usefixtures("fixtures_on_path")
def test_context_parameters() -> None:
    import reward_fixtures

    assert context_parameters(exact_match) == frozenset()
    assert context_parameters(overlong) == {"response_length", "max_response_length"}
    assert context_parameters(reward_fixtures.with_context) == {
        "response_length",
        "max_response_length",
        "finish_reason",
        "prompt",
    }
    assert context_parameters(reward_fixtures.takes_any) == frozenset()  # **kwargs does not ask for context


def test_env_reward_sums_or_takes_the_last_step_reward_of_a_trajectory() -> None:
    from grpo_dist.reward.trajectory_rewards import env_reward

    turns = [{"reward": 0.5}, {"reward": 0.0}, {"reward": 2.0}]
    assert env_reward(None, "", None, {}, trajectory=turns) == 2.5
    assert env_reward(None, "", None, {}, trajectory=turns, mode="last") == 2.0
    assert env_reward(None, "", None, {}, trajectory=[]) == 0.0  # a single answer: no step rewards
    with pytest.raises(ValueError, match="mode = 'max'"):
        env_reward(None, "", None, {}, trajectory=turns, mode="max")
    assert resolve(fc("env_reward")) is env_reward
