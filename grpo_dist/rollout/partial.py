"""Partial rollouts (``rollout.partial_rollout: resume``): samples generated in segments, so that a weight
update reaches the engines between requests instead of after the whole batch.

An engine call generates at most ``rollout.partial_segment_tokens`` tokens of each sample. A sample with
budget left that did not stop goes out again as prompt + its tokens so far, with the rest of the budget;
before it does, the controller may publish the update that landed meanwhile (the pool yields a
``SegmentBoundary`` for that), and the sample then continues under the new weights, its KV recomputed
with them. Every token keeps the logprob and the weights version it was sampled with
(``Completion.token_versions``), so the importance-sampling correction and the staleness figures see
exactly which policy produced what.

Pure logic, no Ray or vLLM: the pool and the engine call it, the unit tests check it alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from grpo_dist.types import Completion, Prompt, RolloutGroup

__all__ = ["PartialGroups", "SegmentBoundary", "SegmentRequest", "Segments", "extend_completion", "is_finished"]


@dataclass(frozen=True)
class SegmentRequest:
    """One sample's next segment: its prompt, where it sits in the batch, and its tokens so far."""

    prompt: Prompt
    batch_index: int
    sample_index: int
    occurrence: int
    """Earlier copies of the same prompt in the batch (a repeat samples afresh, as in a whole rollout)."""
    prefix: Completion | None = None
    """What the earlier segments generated (None: the first segment)."""
    segment: int = 0

    @property
    def key(self) -> tuple[int, int]:
        return self.batch_index, self.sample_index

    @property
    def done_tokens(self) -> int:
        return len(self.prefix.token_ids) if self.prefix is not None else 0


@dataclass(frozen=True)
class Segments:
    """An engine's answer to a list of ``SegmentRequest``: each sample so far, in request order, and the
    weights version the call ran with."""

    completions: list[Completion]
    version: int
    engine_index: int


@dataclass(frozen=True)
class SegmentBoundary:
    """What ``EnginePool.generate`` yields when an engine finished a segment and its samples are about to
    continue: the caller may publish newer weights before asking for the next item (the continuations
    are sent then)."""

    engine_index: int


def is_finished(completion: Completion, *, max_tokens: int) -> bool:
    """Stopped (EOS, a stop string, an abort) or out of budget."""
    return completion.finish_reason != "length" or len(completion.token_ids) >= max_tokens


def extend_completion(
    prefix: Completion | None,
    segment: Completion,
    *,
    version: int,
    stop: tuple[str, ...] = (),
    decode: Callable[[list[int]], str] | None = None,
) -> Completion:
    """The sample so far: ``prefix`` followed by ``segment``, the segment's tokens at ``version``.

    The engine saw the prefix as prompt, so a stop string that begins in the prefix's text and ends in the
    segment's went unnoticed there; it is found here and the sample cut as the engine would have cut it
    (the text before the stop string; the tokens up to the one that completed it, which ``decode``, the
    engine's detokenizer of a whole answer's ids, locates).
    """
    new_versions = [version] * len(segment.token_ids)
    if prefix is None:
        return replace(segment, token_versions=new_versions)
    tokens, logprobs = list(segment.token_ids), list(segment.logprobs)
    text, finish = prefix.text + segment.text, segment.finish_reason
    hit = _stop_across(prefix.text, segment.text, stop)
    if hit is not None and decode is not None:
        start, end = hit  # the stop string's span in the joined text
        needed = end - len(prefix.text)  # characters of the segment's text it takes
        so_far = list(prefix.token_ids)  # decoded with the prefix in front, as the engine decoded the segment
        base = len(decode(so_far))
        grown = (k for k in range(1, len(tokens) + 1) if len(decode(so_far + tokens[:k])) - base >= needed)
        keep = next(grown, len(tokens))
        tokens, logprobs, new_versions = tokens[:keep], logprobs[:keep], new_versions[:keep]
        text, finish = text[:start], "stop"
    return Completion(
        token_ids=list(prefix.token_ids) + tokens,
        logprobs=list(prefix.logprobs) + logprobs,
        finish_reason=finish,
        text=text,
        token_versions=prefix.versions(version) + new_versions,
    )


def _stop_across(before: str, after: str, stop: tuple[str, ...]) -> tuple[int, int] | None:
    """The earliest stop string that begins in ``before`` and ends in ``after``, as a span of their join."""
    joined, spans = before + after, []
    for s in stop:
        pos = joined.find(s, max(0, len(before) - len(s) + 1))
        if 0 <= pos < len(before) < pos + len(s):
            spans.append((pos, pos + len(s)))
    return min(spans) if spans else None


class PartialGroups:
    """A batch's samples while they are generated in segments: each sample's tokens so far, which continue,
    and the groups that are whole (every sample finished), each handed out once."""

    def __init__(self, prompts: list[Prompt], *, n: int, max_tokens: int, occurrences: list[int]) -> None:
        self.prompts, self.n, self.max_tokens, self.occurrences = prompts, n, max_tokens, occurrences
        self._done: dict[int, dict[int, Completion]] = {b: {} for b in range(len(prompts))}
        self._engine: dict[int, int] = {}
        self._started: dict[int, int] = {}  # the oldest version any of a group's segments ran at

    def first_requests(self) -> list[SegmentRequest]:
        return [SegmentRequest(p, b, i, self.occurrences[b]) for b, p in enumerate(self.prompts) for i in range(self.n)]

    def cost(self, request: SegmentRequest) -> int:
        """Tokens the request's sample still puts through an engine (prompt + so far + budget left)."""
        return len(request.prompt.token_ids) + self.max_tokens

    def add(self, requests: list[SegmentRequest], answer: Segments) -> tuple[list[RolloutGroup], list[SegmentRequest]]:
        """Fold one engine call's samples in (``answer.completions[i]``: ``requests[i]``'s sample so far,
        as ``extend_completion`` made it); returns the groups now whole and the requests that continue."""
        engine_index, version = answer.engine_index, answer.version
        if len(answer.completions) != len(requests):
            raise RuntimeError(
                f"engine {engine_index} returned {len(answer.completions)} samples for {len(requests)} requests"
            )
        whole, more = [], []
        for request, completion in zip(requests, answer.completions):
            b = request.batch_index
            self._engine.setdefault(b, engine_index)
            self._started[b] = min(self._started.get(b, version), version)
            progressed = len(completion.token_ids) > request.done_tokens
            if is_finished(completion, max_tokens=self.max_tokens) or not progressed:
                self._done[b][request.sample_index] = completion
                if len(self._done[b]) == self.n:
                    whole.append(self._group(b))
            else:
                more.append(replace(request, prefix=completion, segment=request.segment + 1))
        return whole, more

    def _group(self, b: int) -> RolloutGroup:
        completions = [self._done[b][i] for i in range(self.n)]
        # the oldest version in the group is the one it started with: its staleness counts from there
        return RolloutGroup(self.prompts[b], completions, self._started[b], self._engine[b], b)
