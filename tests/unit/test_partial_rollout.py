"""Partial rollouts' pure logic (``grpo_dist.rollout.partial``): samples stitched from segments, each token
with its own version, a stop string cut across a boundary, groups handed out whole and once.

The controller's side (an update published at a boundary, the samples continuing under it) is in
``test_async_schedule``, over the real ``Controller`` and a fake pool built on ``PartialGroups``."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_dist.rollout.partial import PartialGroups, Segments, extend_completion, is_finished
from grpo_dist.types import Completion, Prompt


def _segment(tokens: list[int], finish: str = "length", text: str | None = None) -> Completion:
    return Completion(
        tokens, [-0.1 * t for t in tokens], finish, text if text is not None else "".join(map(chr, tokens))
    )  # type: ignore[arg-type]


def test_a_sample_continued_under_newer_weights_keeps_each_tokens_logprob_and_version() -> None:
    first = extend_completion(None, _segment([97, 98]), version=3)
    assert first.token_versions == [3, 3] and not first.is_partial
    second = extend_completion(first, _segment([99], finish="stop"), version=4)
    assert second.token_ids == [97, 98, 99]
    assert second.logprobs == [-0.1 * t for t in (97, 98, 99)]
    assert second.token_versions == [3, 3, 4] and second.is_partial
    assert second.text == "abc" and second.finish_reason == "stop"
    # an unrecorded completion (a whole rollout) reads as its group's version throughout
    assert Completion([1, 2], [0.0, 0.0], "stop", "").versions(7) == [7, 7]


def test_a_stop_string_across_a_boundary_cuts_the_sample_as_the_engine_would() -> None:
    def decode(ids: list[int]) -> str:
        return "".join(map(chr, ids))

    # "ab|" then "|cd": the stop string "||" begins in the prefix and ends in the segment, which the engine,
    # seeing the prefix as prompt, could not notice
    prefix = extend_completion(None, _segment([ord("a"), ord("b"), ord("|")]), version=0)
    out = extend_completion(prefix, _segment([ord("|"), ord("c"), ord("d")]), version=1, stop=("||",), decode=decode)
    assert out.finish_reason == "stop"
    assert out.text == "ab"  # the text before the stop string, as vLLM leaves it
    assert out.token_ids == [ord(c) for c in "ab||"]  # up to the token that completed it
    assert out.token_versions == [0, 0, 0, 1] and len(out.logprobs) == 4
    # no stop string across the boundary: nothing is cut
    kept = extend_completion(prefix, _segment([ord("c")]), version=1, stop=("||",), decode=decode)
    assert kept.text == "ab|c" and kept.finish_reason == "length"


def test_finished_means_stopped_or_out_of_budget() -> None:
    assert is_finished(_segment([1], finish="stop"), max_tokens=8)
    assert not is_finished(_segment([1, 2], finish="length"), max_tokens=8)
    assert is_finished(_segment([1] * 8, finish="length"), max_tokens=8)


@settings(max_examples=60, deadline=None)
@given(
    num_prompts=st.integers(1, 4),
    n=st.integers(1, 3),
    max_tokens=st.integers(1, 9),
    segment=st.integers(1, 4),
    seed=st.integers(0, 10_000),
)
def test_every_group_comes_out_once_whole_with_its_samples_tokens_in_order(
    num_prompts: int, n: int, max_tokens: int, segment: int, seed: int
) -> None:
    """A fake engine answers the requests in random order and batches, sometimes stopping a sample early;
    its version rises between calls. Each token it emits encodes (prompt, sample, position, version): the
    stitched samples must hold exactly those tokens, in order, each tagged with the version encoded in it."""
    rng = random.Random(seed)
    prompts = [Prompt(prompt_id=10 + b, token_ids=[1, 2], text="p") for b in range(num_prompts)]
    samples = PartialGroups(prompts, n=n, max_tokens=max_tokens, occurrences=[0] * num_prompts)
    queue = samples.first_requests()
    assert len(queue) == num_prompts * n
    version, out = 0, []
    while queue:
        rng.shuffle(queue)
        k = rng.randint(1, len(queue))
        take, queue = queue[:k], queue[k:]
        answers = []
        for r in take:
            budget = min(segment, max_tokens - r.done_tokens)
            count = rng.randint(1, budget)
            stops = rng.random() < 0.2
            start = r.done_tokens
            tokens = [_token(r.batch_index, r.sample_index, start + k, version) for k in range(count)]
            answers.append(
                extend_completion(r.prefix, _segment(tokens, "stop" if stops else "length", ""), version=version)
            )
        whole, more = samples.add(take, Segments(answers, version, engine_index=0))
        out += whole
        queue += more
        version += rng.randint(0, 1)
    assert sorted(g.batch_index for g in out) == list(range(num_prompts))  # each group once
    for g in out:
        assert g.prompt is prompts[g.batch_index] and len(g.completions) == n
        for i, c in enumerate(g.completions):
            assert 1 <= len(c.token_ids) <= max_tokens
            decoded = [_untoken(t) for t in c.token_ids]
            assert [(b, s, pos) for b, s, pos, _ in decoded] == [(g.batch_index, i, k) for k in range(len(decoded))]
            assert c.token_versions == [v for *_, v in decoded]  # the tag is the version that produced the token
            assert c.token_versions == sorted(c.token_versions)
        assert g.weights_version == min(v for c in g.completions for v in c.token_versions)


def _token(batch_index: int, sample: int, position: int, version: int) -> int:
    return ((batch_index * 10 + sample) * 100 + position) * 1000 + version


def _untoken(token: int) -> tuple[int, int, int, int]:
    version, rest = token % 1000, token // 1000
    position, rest = rest % 100, rest // 100
    return rest // 10, rest % 10, position, version


# ------------------------------------------------------- the pool, with an engine lost part-way (real Ray)


class SegmentFake:
    """TEST DOUBLE: an engine actor that answers ``generate_segments`` at once with tokens that encode
    (group, sample, position, its version). The engine in slot 1 dies on its second call while its first
    incarnation lives (``die_file`` exists)."""

    def __init__(self, slot: int, die_file: str) -> None:
        self.slot, self.die_file, self.version, self.calls = slot, die_file, 0, 0

    def info(self) -> dict[str, int]:
        import os

        return {"pid": os.getpid(), "version": self.version}

    def set_version(self, version: int) -> None:
        self.version = version

    def generate_segments(self, requests: list[Any], spec: Any, *, segment_tokens: int, **_: Any) -> Segments:
        import os
        from pathlib import Path

        self.calls += 1
        if self.slot == 1 and self.calls == 2 and Path(self.die_file).exists():
            Path(self.die_file).unlink()
            os._exit(1)
        out = []
        for r in requests:
            count = min(segment_tokens, spec.max_tokens - r.done_tokens)
            tokens = [_token(r.batch_index, r.sample_index, r.done_tokens + k, self.version) for k in range(count)]
            out.append(extend_completion(r.prefix, _segment(tokens, "length", ""), version=self.version))
        return Segments(out, self.version, self.slot)


def test_an_engine_lost_part_way_through_a_partial_rollout_loses_no_token(tmp_path: Path) -> None:
    """The dead engine's samples go out again from their tokens so far: every sample ends with exactly the
    positions 0..max-1, the tokens before the death keep version 0, and what the replacement generated
    after the caller's recovery (here: every engine set to version 1) is tagged 1."""
    import tempfile

    import ray

    from grpo_dist.config import apply_overrides, parse_config
    from grpo_dist.rollout.engine import SamplingSpec
    from grpo_dist.rollout.pool import EnginePool, EnginesReplaced

    die_file = tmp_path / "die"
    die_file.write_text("")

    class FakePool(EnginePool):
        def _start(self, slot: int) -> Any:
            return ray.remote(SegmentFake).options(num_cpus=0, max_restarts=0).remote(slot, str(die_file))

        def shutdown(self) -> None:
            self.supervisor.kill_all()

    cfg = parse_config(apply_overrides({}, ["rollout.num_engines=2", "rollout.request_timeout_s=60"]))
    prompts = [Prompt(prompt_id=b, token_ids=[1, 2], text="p") for b in range(4)]
    here = str(Path(__file__).parent)  # the workers import this module to build the fake
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=tempfile.mkdtemp(prefix="gd-ray-", dir="/tmp"),
        runtime_env={"env_vars": {"PYTHONPATH": here}},
    )
    try:
        pool = FakePool(cfg, placement=None, model_path="", device="cpu", max_model_len=64)  # type: ignore[arg-type]
        pool.wait_ready()
        groups, replaced = [], 0
        spec = SamplingSpec(n=2, max_tokens=6)
        for item in pool.generate(prompts, spec, step=1, stream="train", min_version=0, segment_tokens=2):
            if isinstance(item, EnginesReplaced):
                replaced += 1
                ray.get([a.set_version.remote(1) for a in pool.actors], timeout=30)  # the caller's recovery
            elif isinstance(item, list):
                groups += item
        stats = dict(pool.fault_stats)
        pool.shutdown()
    finally:
        ray.shutdown()
    assert replaced == 1 and stats["engines_restarted"] == 1 and not die_file.exists()
    assert sorted(g.batch_index for g in groups) == [0, 1, 2, 3]
    continued = 0
    for g in groups:
        for i, c in enumerate(g.completions):
            decoded = [_untoken(t) for t in c.token_ids]
            assert [(b, s, pos) for b, s, pos, _ in decoded] == [(g.batch_index, i, k) for k in range(6)]
            assert c.token_versions == [v for *_, v in decoded] == sorted(c.token_versions)
            continued += c.token_versions[0] == 0 and c.token_versions[-1] == 1
    assert continued > 0  # the dead engine's samples: begun at version 0, finished by the replacement at 1
