"""RewardScorer with a real child process: weighted totals, context parameters, failure policies, deadlines.

The misbehaving functions are in ``reward_fixtures.py`` and are imported by the child by path, as a user's
would be; ``behave`` picks its misbehaviour from the completion text.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from grpo_dist.config import RewardConfig, RewardFunctionConfig
from grpo_dist.reward import RewardFunctionError, RewardScorer, exact_match, overlong
from grpo_dist.types import Completion, Prompt, RewardFailure, RolloutGroup, ScoredGroup

HERE = str(Path(__file__).parent)
MAX_LEN = 32


def make_group(
    texts: list[str],
    *,
    prompt_id: int = 0,
    ground_truth: str | None = "4",
    lengths: list[int] | None = None,
    finish: list[str] | None = None,
    prompt_text: str = "2+2=",
    extra_info: dict[str, Any] | None = None,
) -> RolloutGroup:
    lengths = lengths if lengths is not None else [len(t) for t in texts]
    finish = finish if finish is not None else ["stop"] * len(texts)
    completions = [
        Completion(token_ids=list(range(n)), logprobs=[-0.5] * n, finish_reason=f, text=t)  # type: ignore[arg-type]
        for t, n, f in zip(texts, lengths, finish)
    ]
    prompt = Prompt(
        prompt_id=prompt_id,
        token_ids=[1, 2, 3],
        text=prompt_text,
        ground_truth=ground_truth,
        data_source="unit/test",
        extra_info=extra_info if extra_info is not None else {"bonus": 0.5},
    )
    return RolloutGroup(prompt=prompt, completions=completions, weights_version=0, engine_index=0)


def fn(
    name: str,
    path: str | None = None,
    *,
    weight: float = 1.0,
    timeout_s: float = 5.0,
    batched: bool = False,
    **kwargs: Any,
) -> RewardFunctionConfig:
    return RewardFunctionConfig(
        name=name, path=path, weight=weight, timeout_s=timeout_s, batched=batched, kwargs=kwargs
    )


def make_scorer(functions: list[RewardFunctionConfig], policy: str = "mask_sample") -> RewardScorer:
    config = RewardConfig(functions=functions, failure_policy=policy)
    return RewardScorer(config, max_response_length=MAX_LEN, extra_sys_path=[HERE])


def process_gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def nan_eq(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all((math.isnan(x) and math.isnan(y)) or x == pytest.approx(y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def behave_scorer() -> Iterator[RewardScorer]:
    """One mask_sample scorer shared by the tests whose functions do not kill the child."""
    with make_scorer([fn("len", "reward_fixtures:length", weight=0.5), fn("behave", "reward_fixtures:behave")]) as s:
        yield s


# ----------------------------------------------------------------------------------------------------------
# Correct rewards
# ----------------------------------------------------------------------------------------------------------


def test_rewards_equal_the_functions_applied_by_hand() -> None:
    functions = [
        fn("exact_match", weight=1.0),
        fn("len", "reward_fixtures:length", weight=0.25, scale=2.0),
        fn("overlong", weight=2.0, buffer_len=8),
    ]
    groups = [
        make_group(["\\boxed{4}", "5", "#### 4", "four"], prompt_id=7, lengths=[3, 24, 28, 40]),
        make_group(["9", "\\boxed{9}"], prompt_id=8, ground_truth="#### 9", lengths=[1, 32]),
    ]
    with make_scorer(functions) as scorer:
        scored = scorer.score(groups)
        assert scorer.drain_failures() == []
    assert [s.group for s in scored] == groups
    for s, g in zip(scored, groups):
        p = g.prompt
        em = [exact_match(p.data_source, c.text, p.ground_truth, p.extra_info) for c in g.completions]
        ln = [2.0 * len(c.text) for c in g.completions]
        ol = [
            overlong(
                p.data_source,
                c.text,
                p.ground_truth,
                p.extra_info,
                response_length=len(c.token_ids),
                max_response_length=MAX_LEN,
                buffer_len=8,
            )
            for c in g.completions
        ]
        assert s.components == {"exact_match": em, "len": ln, "overlong": ol}
        assert s.rewards == pytest.approx([1.0 * a + 0.25 * b + 2.0 * c for a, b, c in zip(em, ln, ol)])
        assert s.valid == [True] * len(g.completions)
        assert s.failures == {}
    # spot-check the hand-computed values themselves
    assert scored[0].components["exact_match"] == [1.0, 0.0, 1.0, 0.0]
    assert scored[0].components["overlong"] == pytest.approx([0.0, 0.0, -0.5, -1.0])


def test_context_parameters_and_row_fields_are_passed() -> None:
    functions = [
        fn("ctx", "reward_fixtures:with_context"),
        fn("row", "reward_fixtures:from_row"),
        fn("bctx", "reward_fixtures:batched_context", batched=True),
    ]
    group = make_group(
        ["4", "x"], lengths=[5, 32], finish=["stop", "length"], prompt_text="abc", extra_info={"bonus": 2}
    )
    with make_scorer(functions) as scorer:
        (s,) = scorer.score([group])
    assert s.components["ctx"] == [5 + 100 * MAX_LEN + 300_000, 32 + 100 * MAX_LEN + 10_000 + 300_000]
    assert s.components["row"] == [3.0, 2.0]
    assert s.components["bctx"] == [5 / MAX_LEN, 1.0]
    assert s.valid == [True, True]


def test_accepted_outputs(behave_scorer: RewardScorer) -> None:
    (s,) = behave_scorer.score([make_group(["int", "numpy", "numpy_int", "fraction"])])
    assert s.components["behave"] == [7.0, 0.25, 3.0, 0.25]
    assert all(type(v) is float for v in s.components["behave"])
    assert s.valid == [True] * 4


def test_empty_inputs(behave_scorer: RewardScorer) -> None:
    assert behave_scorer.score([]) == []
    (s,) = behave_scorer.score([make_group([])])
    assert s == ScoredGroup(
        group=make_group([]), rewards=[], components={"len": [], "behave": []}, valid=[], failures={}
    )


# ----------------------------------------------------------------------------------------------------------
# Failures under mask_sample
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "kind", "message"),
    [
        ("raise", "exception", "RuntimeError: boom"),
        ("nan", "invalid", "non-finite value (nan)"),
        ("inf", "invalid", "non-finite value (inf)"),
        ("str", "invalid", "returned str '1.0', expected a real number"),
        ("bool", "invalid", "returned a bool"),
        ("numpy_bool", "invalid", "returned a bool"),
        ("none", "invalid", "returned NoneType None"),
        ("list", "invalid", "returned list"),
    ],
)
def test_mask_sample_masks_only_the_failed_sample(
    behave_scorer: RewardScorer, command: str, kind: str, message: str
) -> None:
    group = make_group(["ab", command, "abcd"], prompt_id=11)
    (s,) = behave_scorer.score([group])
    assert s.valid == [True, False, True]
    assert nan_eq(s.components["behave"], [2.0, math.nan, 4.0])
    assert s.components["len"] == [2.0, float(len(command)), 4.0]  # the other function still ran
    assert nan_eq(s.rewards, [0.5 * 2 + 2.0, math.nan, 0.5 * 4 + 4.0])
    assert s.failures == {"behave": 1}
    (failure,) = behave_scorer.drain_failures()
    assert (failure.function, failure.prompt_id, failure.sample_index, failure.kind) == ("behave", 11, 1, kind)
    assert message in failure.message
    assert behave_scorer.drain_failures() == []


def test_failures_are_counted_per_function_across_groups(behave_scorer: RewardScorer) -> None:
    groups = [make_group(["raise", "nan", "a"], prompt_id=1), make_group(["str", "b"], prompt_id=2)]
    scored = behave_scorer.score(groups)
    assert [s.failures for s in scored] == [{"behave": 2}, {"behave": 1}]
    assert [s.num_valid for s in scored] == [1, 1]
    records = behave_scorer.drain_failures()
    assert [(r.prompt_id, r.sample_index) for r in records] == [(1, 0), (1, 1), (2, 0)]


def test_invariant_valid_iff_reward_finite(behave_scorer: RewardScorer) -> None:
    (s,) = behave_scorer.score([make_group(["raise", "a", "none", "bb"])])
    assert s.valid == [math.isfinite(r) for r in s.rewards]
    behave_scorer.drain_failures()


# ----------------------------------------------------------------------------------------------------------
# mask_group and fail
# ----------------------------------------------------------------------------------------------------------


def test_mask_group_masks_the_whole_group_only() -> None:
    with make_scorer([fn("behave", "reward_fixtures:behave")], policy="mask_group") as scorer:
        bad, good = scorer.score([make_group(["a", "raise", "abc"], prompt_id=1), make_group(["a", "bb"], prompt_id=2)])
        assert bad.valid == [False, False, False]
        assert all(math.isnan(r) for r in bad.rewards)
        assert nan_eq(bad.components["behave"], [1.0, math.nan, 3.0])  # raw values kept for metrics
        assert bad.failures == {"behave": 1}
        assert good.valid == [True, True]
        assert good.rewards == [1.0, 2.0]
        assert [f.sample_index for f in scorer.drain_failures()] == [1]


def test_fail_raises_naming_function_prompt_sample_and_kind() -> None:
    with make_scorer([fn("behave", "reward_fixtures:behave")], policy="fail") as scorer:
        with pytest.raises(RewardFunctionError) as info:
            scorer.score([make_group(["a"], prompt_id=4), make_group(["a", "raise", "b", "c"], prompt_id=5)])
        assert info.value.failure == RewardFailure("behave", 5, 1, "exception", info.value.failure.message)
        text = str(info.value)
        assert "'behave'" in text and "prompt_id=5" in text and "sample 1" in text and "(exception)" in text
        assert "RuntimeError: boom" in text
        # the scorer is usable afterwards (the child left mid-request was replaced)
        (s,) = scorer.score([make_group(["abc", "de"])])
        assert s.rewards == [3.0, 2.0]


def test_fail_on_invalid_output() -> None:
    with (
        make_scorer([fn("behave", "reward_fixtures:behave")], policy="fail") as scorer,
        pytest.raises(RewardFunctionError, match=r"sample 0 \(invalid\).*non-finite"),
    ):
        scorer.score([make_group(["nan"], prompt_id=3)])


def test_reward_function_error_pickles() -> None:
    import pickle

    err = RewardFunctionError(RewardFailure("f", 1, 2, "timeout", "slow"))
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, RewardFunctionError)
    assert back.failure == err.failure
    assert str(back) == str(err)


# ----------------------------------------------------------------------------------------------------------
# Deadlines and crashes: the child is killed / replaced
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["hang", "spin"])
def test_hung_call_is_killed_within_its_deadline(command: str) -> None:
    timeout_s = 0.5
    with make_scorer([fn("behave", "reward_fixtures:behave", timeout_s=timeout_s)]) as scorer:
        old_pid = scorer.child_pid
        assert old_pid is not None
        start = time.monotonic()
        (s,) = scorer.score([make_group(["ab", command, "abcd"], prompt_id=9)])
        elapsed = time.monotonic() - start
        assert elapsed < timeout_s + 4.0
        assert s.valid == [True, False, True]
        assert nan_eq(s.rewards, [2.0, math.nan, 4.0])  # the rest of the group went to a fresh child
        assert scorer.child_pid not in (None, old_pid)
        assert process_gone(old_pid)
        (failure,) = scorer.drain_failures()
        assert (failure.sample_index, failure.kind) == (1, "timeout")
        assert "0.5 s" in failure.message


def test_deadline_is_per_sample_not_per_group() -> None:
    # Four samples of ~0.2 s each meet their own 0.5 s deadlines although the group takes ~0.8 s.
    with make_scorer([fn("sleepy", "reward_fixtures:sleepy", timeout_s=0.5)]) as scorer:
        start = time.monotonic()
        (s,) = scorer.score([make_group(["0.2"] * 4)])
        assert time.monotonic() - start >= 0.8
        assert s.valid == [True] * 4
        assert scorer.drain_failures() == []


@pytest.mark.parametrize(("command", "detail"), [("exit", "exit code 3"), ("segv", "signal SIGSEGV")])
def test_child_crash_is_a_failure_and_the_child_is_replaced(command: str, detail: str) -> None:
    with make_scorer([fn("behave", "reward_fixtures:behave")]) as scorer:
        old_pid = scorer.child_pid
        (s,) = scorer.score([make_group(["a", command, "abc"], prompt_id=2)])
        assert s.valid == [True, False, True]
        assert nan_eq(s.rewards, [1.0, math.nan, 3.0])
        assert scorer.child_pid not in (None, old_pid)
        (failure,) = scorer.drain_failures()
        assert failure.kind == "exception"
        assert detail in failure.message


def test_child_that_exited_between_calls_is_restarted_without_a_failure() -> None:
    with make_scorer([fn("behave", "reward_fixtures:behave")]) as scorer:
        old_pid = scorer.child_pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        time.sleep(0.2)
        (s,) = scorer.score([make_group(["ab"])])
        assert s.rewards == [2.0]
        assert scorer.drain_failures() == []
        assert scorer.child_pid != old_pid
        assert process_gone(old_pid)  # and reaped, not left a zombie


# ----------------------------------------------------------------------------------------------------------
# Batched functions
# ----------------------------------------------------------------------------------------------------------


def batched_scorer(policy: str = "mask_sample", timeout_s: float = 5.0) -> RewardScorer:
    return make_scorer([fn("b", "reward_fixtures:batched_behave", batched=True, timeout_s=timeout_s)], policy)


def test_batched_values_and_per_element_checks() -> None:
    with batched_scorer() as scorer:
        ok, with_nan, array = scorer.score(
            [make_group(["a", "bb", "ccc"]), make_group(["a", "nan", "ccc"], prompt_id=1), make_group(["array", "x"])]
        )
        assert ok.rewards == [1.0, 2.0, 3.0]
        assert with_nan.valid == [True, False, True]
        assert nan_eq(with_nan.rewards, [1.0, math.nan, 3.0])
        assert array.rewards == [0.0, 1.0]
        (failure,) = scorer.drain_failures()
        assert (failure.prompt_id, failure.sample_index, failure.kind) == (1, 1, "invalid")


@pytest.mark.parametrize(
    ("command", "kind", "message"),
    [
        ("short", "invalid", "returned 2 values for a batch of 3 samples"),
        ("scalar", "invalid", "returned float 1.0, expected a list of floats"),
        ("raise", "exception", "RuntimeError: batch boom"),
        ("exit", "exception", "exit code 4"),
    ],
)
def test_batched_call_failure_fails_every_sample(command: str, kind: str, message: str) -> None:
    with batched_scorer() as scorer:
        (s,) = scorer.score([make_group(["a", command, "b"], prompt_id=6)])
        assert s.valid == [False, False, False]
        assert all(math.isnan(v) for v in s.components["b"])
        assert s.failures == {"b": 3}
        records = scorer.drain_failures()
        assert [(r.sample_index, r.kind) for r in records] == [(0, kind), (1, kind), (2, kind)]
        assert message in records[0].message


def test_batched_hang_is_killed_after_timeout_times_group_size() -> None:
    timeout_s = 0.25
    with batched_scorer(timeout_s=timeout_s) as scorer:
        old_pid = scorer.child_pid
        start = time.monotonic()
        (s,) = scorer.score([make_group(["a", "hang", "b", "c"])])
        elapsed = time.monotonic() - start
        assert 4 * timeout_s <= elapsed < 4 * timeout_s + 4.0
        assert s.valid == [False] * 4
        assert {f.kind for f in scorer.drain_failures()} == {"timeout"}
        assert process_gone(old_pid)  # type: ignore[arg-type]
        (s,) = scorer.score([make_group(["ab"])])
        assert s.rewards == [2.0]


def test_batched_fail_policy() -> None:
    with (
        batched_scorer(policy="fail") as scorer,
        pytest.raises(RewardFunctionError, match=r"'b'.*sample 0 \(invalid\)"),
    ):
        scorer.score([make_group(["short", "x"])])


# ----------------------------------------------------------------------------------------------------------
# Construction and lifecycle
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("functions", "policy", "match"),
    [
        ([fn("exact_match"), fn("x", "reward_fixtures:nope")], "mask_sample", r"reward\.functions\[1\]\.path"),
        ([fn("x", "not_a_module_qq:f")], "mask_sample", r"reward\.functions\[0\]\.path .* not found"),
        ([fn("overlong", buffer_len=33)], "mask_sample", r"buffer_len = 33"),
    ],
)
def test_construction_errors(functions: list[RewardFunctionConfig], policy: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_scorer(functions, policy)


def test_extra_sys_path_makes_user_modules_importable(tmp_path: Path) -> None:
    pkg = tmp_path / "my_reward_pkg_zz"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "rewards.py").write_text(
        "def score(data_source, solution_str, ground_truth, extra_info, *, bonus=0.0):\n"
        "    return float(solution_str == ground_truth) + bonus\n"
    )
    config = RewardConfig(functions=[fn("mine", "my_reward_pkg_zz.rewards:score", bonus=0.5)], failure_policy="fail")
    with pytest.raises(ValueError, match="not found"):
        RewardScorer(config, max_response_length=8)
    with RewardScorer(config, max_response_length=8, extra_sys_path=[str(tmp_path)]) as s:
        (scored,) = s.score([make_group(["4", "5"])])
    assert scored.rewards == [1.5, 0.5]


def test_close_stops_the_child() -> None:
    scorer = make_scorer([fn("exact_match")])
    pid = scorer.child_pid
    assert pid is not None
    scorer.close()
    scorer.close()  # idempotent
    assert process_gone(pid)
    with pytest.raises(RuntimeError, match="after close"):
        scorer.score([make_group(["4"])])
