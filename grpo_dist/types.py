"""Messages that cross actor boundaries.

Plain dataclasses of Python scalars and lists (cheap to pickle through Ray, readable in a debugger), no
Ray / vLLM / torch.distributed imports. The flow of one step:

    Prompt ──► RolloutEngine ──► RolloutGroup ──► RewardWorker ──► ScoredGroup ──► advantages ──► learner
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class Prompt:
    """One dataset row, templated and tokenized, ready for an engine."""

    prompt_id: int
    """Stable id of the row within its dataset (its position); seeds and resume bookkeeping use it."""
    token_ids: list[int]
    text: str
    """The prompt as rendered (after the chat template)."""
    ground_truth: str | None = None
    data_source: str | None = None
    extra_info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]
    logprobs: list[float]
    """The sampling engine's logprob of each generated token, under the distribution it sampled from
    (after temperature: vLLM's ``processed_logprobs``), as the learner computes it at the same temperature."""
    finish_reason: FinishReason
    text: str


@dataclass(frozen=True)
class RolloutGroup:
    """The G completions of one prompt, all from one engine and one weights version."""

    prompt: Prompt
    completions: list[Completion]
    weights_version: int
    engine_index: int
    batch_index: int = 0
    """Position of the prompt in the step's batch (a batch that crosses an epoch may hold a prompt twice)."""


@dataclass(frozen=True)
class ScoredGroup:
    """A rollout group with its rewards.

    ``rewards[i]`` is the weighted total for completion i; ``components[name][i]`` each function's raw
    value (NaN where it failed). ``valid[i]`` is False for a completion masked out of the loss by the
    reward failure policy; ``failures`` counts failures per function name.
    """

    group: RolloutGroup
    rewards: list[float]
    components: dict[str, list[float]]
    valid: list[bool]
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def num_valid(self) -> int:
        return sum(self.valid)


@dataclass(frozen=True)
class RewardFailure:
    """What went wrong in one reward call (reported in metrics and logs)."""

    function: str
    prompt_id: int
    sample_index: int
    kind: Literal["exception", "timeout", "invalid"]
    message: str
