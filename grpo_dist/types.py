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
    messages: list[dict[str, Any]] | None = None
    """The row's chat messages (``role``, ``content``) before rendering, for a multi-turn environment to
    continue the conversation; None for a plain-text prompt."""


@dataclass(frozen=True)
class Segment:
    """One sequence the learner trains on: the context the engine was given, then what followed it (the
    model's tokens, loss mask 1, and an environment's, 0). A trajectory is one segment unless its chat
    template rewrote history (``rollout.multi_turn.template_check: fork``): each rewrite starts a segment
    whose context is the conversation as the template then renders it."""

    context_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    loss_mask: list[int]


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]
    logprobs: list[float]
    """The sampling engine's logprob of each generated token, under the distribution it sampled from
    (after temperature: vLLM's ``processed_logprobs``), as the learner computes it at the same temperature."""
    finish_reason: FinishReason
    text: str
    token_versions: list[int] = field(default_factory=list)
    """The weights version each token was sampled with, where a partial rollout (``rollout.partial_rollout:
    resume``) continued the completion under newer weights part-way; empty: every token has its group's
    ``weights_version``."""

    loss_mask: list[int] = field(default_factory=list)
    """1 for each token the model sampled, 0 for a token an environment inserted (a tool's output, a user's
    reply) in a multi-turn trajectory, which never enters the loss; empty: every token is the model's."""
    turns: list[dict[str, Any]] = field(default_factory=list)
    """A multi-turn trajectory's turns (the model's text, then the environment's messages, step reward and
    tool calls), for the reward functions and the rollout log; empty for a single answer."""

    forks: list[Segment] = field(default_factory=list)
    """A forked trajectory's later segments, in order (``token_ids`` and the fields above are its first, which
    continues the prompt); empty: the whole trajectory is one sequence."""

    def mask(self) -> list[int]:
        """Each token's loss mask (1 throughout for a single answer); of the first segment where it forked."""
        return list(self.loss_mask) if self.loss_mask else [1] * len(self.token_ids)

    def segments(self, prompt_ids: list[int]) -> list[Segment]:
        """The sequences the learner trains on: the prompt and ``token_ids``, then each fork."""
        return [Segment(list(prompt_ids), list(self.token_ids), list(self.logprobs), self.mask()), *self.forks]

    @property
    def num_model_tokens(self) -> int:
        """Tokens the model sampled, in every segment (an environment's are not counted)."""
        return sum(self.mask()) + sum(sum(f.loss_mask) for f in self.forks)

    @property
    def response_length(self) -> int:
        """Tokens after the prompt, the model's and the environment's, in every segment (what
        ``data.max_response_length`` bounds)."""
        return len(self.token_ids) + sum(len(f.token_ids) for f in self.forks)

    def versions(self, default: int) -> list[int]:
        """Each token's weights version (``default``, its group's, where none were recorded)."""
        return list(self.token_versions) if self.token_versions else [default] * len(self.token_ids)

    @property
    def is_partial(self) -> bool:
        """Continued under newer weights than it started with."""
        return len(set(self.token_versions)) > 1


@dataclass(frozen=True)
class RolloutGroup:
    """The G completions of one prompt, from one engine (``engine_index``; a partial rollout whose engine
    died continues on another); generated with one weights version, or, in a partial rollout, started with
    it and continued with newer ones (see ``Completion.token_versions``)."""

    prompt: Prompt
    completions: list[Completion]
    weights_version: int
    """The version the group was generated with; in a partial rollout, the oldest (the one it started with),
    which is what its staleness counts from."""
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
