"""The learner's view of a step: scored groups turned into padded tensors.

Layout: each row is prompt + response, right-padded to the longest row. Position t of a ``[N, L-1]``
tensor refers to predicting token t+1 from tokens <= t; ``loss_mask`` is 1 exactly where token t+1 is
a token the model sampled, of a sample that counts (the reward failure policy may mask whole samples; a
multi-turn trajectory's environment tokens are 0).

A row is one sequence. A multi-turn trajectory that forked (``rollout.multi_turn.template_check: fork``) is
several rows, one per segment, each its own context and continuation, sharing the trajectory's advantage.
``sample_index`` then says which completion each row belongs to (mini-batches cut between completions) and
``sample_tokens`` how many loss tokens that completion has over all its rows, so that the ``seq-mean-*``
losses count the trajectory once and average over all its tokens, wherever its rows land.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from grpo_dist.types import ScoredGroup


@dataclass(frozen=True)
class TrainBatch:
    input_ids: torch.Tensor  # [N, L] long
    attention_mask: torch.Tensor  # [N, L] long
    loss_mask: torch.Tensor  # [N, L-1] float
    advantages: torch.Tensor  # [N] float
    engine_logprobs: torch.Tensor  # [N, L-1] float, 0 outside loss_mask
    old_logprobs: torch.Tensor | None = None  # [N, L-1]
    ref_logprobs: torch.Tensor | None = None  # [N, L-1]
    versions: torch.Tensor | None = None  # [N, L-1] long: the weights version each target token was sampled with
    sample_index: torch.Tensor | None = None  # [N] long: each row's completion, in step order (None: row i's is i)
    sample_tokens: torch.Tensor | None = None  # [N] float: loss tokens of the row's completion in all its rows

    @property
    def num_sequences(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, index: slice | torch.Tensor) -> TrainBatch:
        return replace(self, **{f.name: _take(getattr(self, f.name), index) for f in fields(self)})

    def placeholder(self) -> TrainBatch:
        """One two-token row that counts for nothing (loss mask and advantage 0): the pass a rank runs when
        the others still have a micro-batch and it has none (under ZeRO every pass is a collective)."""
        zeros = torch.zeros((1, 1), dtype=torch.float32)
        return TrainBatch(
            input_ids=torch.zeros((1, 2), dtype=torch.long),
            attention_mask=torch.ones((1, 2), dtype=torch.long),
            loss_mask=zeros,
            advantages=torch.zeros(1),
            engine_logprobs=zeros,
            old_logprobs=None if self.old_logprobs is None else zeros,
            ref_logprobs=None if self.ref_logprobs is None else zeros,
            versions=None if self.versions is None else torch.full((1, 1), -1, dtype=torch.long),
            sample_index=None if self.sample_index is None else torch.full((1,), -1, dtype=torch.long),
            sample_tokens=None if self.sample_tokens is None else torch.zeros(1),
        )

    def trimmed(self) -> TrainBatch:
        """Drop padding columns that no row uses (shards often need fewer than the whole batch)."""
        width = int(self.attention_mask.sum(dim=1).max().item())
        width = max(width, 2)
        cols = slice(0, width)
        return replace(
            self,
            input_ids=self.input_ids[:, cols],
            attention_mask=self.attention_mask[:, cols],
            **{
                name: t[:, : width - 1]
                for name in ("loss_mask", "engine_logprobs", "old_logprobs", "ref_logprobs", "versions")
                if (t := getattr(self, name)) is not None
            },
        )


def _take(t: torch.Tensor | None, index: slice | torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t[index]


def collate(groups: list[ScoredGroup], advantages: torch.Tensor, *, pad_token_id: int) -> TrainBatch:
    """Flatten groups (in order) into one right-padded batch, a row per segment of each completion (one,
    unless a trajectory forked); ``advantages`` is ``[num_groups * G]``, one per completion."""
    rows, resp_lens, engine_lps, token_versions, valid, masks, owner, owner_tokens = [], [], [], [], [], [], [], []
    for scored in groups:
        version = scored.group.weights_version
        for completion, ok in zip(scored.group.completions, scored.valid):
            for k, segment in enumerate(completion.segments(scored.group.prompt.token_ids)):
                rows.append((len(segment.context_ids), segment.context_ids + segment.token_ids))
                resp_lens.append(len(segment.token_ids))
                masks.append(segment.loss_mask)
                engine_lps.append(segment.logprobs)
                # (a fork's tokens have the group's version: partial rollouts of trajectories are not built)
                token_versions.append(completion.versions(version) if k == 0 else [version] * len(segment.token_ids))
                valid.append(ok)
                owner.append(len(owner_tokens))
            owner_tokens.append(completion.num_model_tokens if ok else 0)
    n = len(rows)
    assert advantages.shape == (len(owner_tokens),), (advantages.shape, len(owner_tokens))
    forked = n > len(owner_tokens)
    index = torch.tensor(owner, dtype=torch.long)
    advantages = advantages[index]
    width = max(2, max(len(ids) for _, ids in rows))
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    loss_mask = torch.zeros((n, width - 1), dtype=torch.float32)
    lps = torch.zeros((n, width - 1), dtype=torch.float32)
    versions = torch.full((n, width - 1), -1, dtype=torch.long)  # -1: not a generated token
    for i, (prompt_len, ids) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[i, : len(ids)] = 1
        # target position t predicts token t+1: response tokens sit at prompt_len .. len(ids)-1
        start, stop = prompt_len - 1, len(ids) - 1
        if valid[i]:  # a multi-turn trajectory's environment tokens stay 0: never in the loss or its counts
            loss_mask[i, start:stop] = torch.tensor(masks[i], dtype=torch.float32)
        if resp_lens[i]:
            lps[i, start:stop] = torch.tensor(engine_lps[i], dtype=torch.float32)
            versions[i, start:stop] = torch.tensor(token_versions[i], dtype=torch.long)
    adv = torch.where(torch.tensor(valid), advantages.float(), torch.zeros_like(advantages, dtype=torch.float32))
    if not forked:
        return TrainBatch(input_ids, attention, loss_mask, adv, lps, versions=versions)
    tokens = torch.tensor(owner_tokens, dtype=torch.float32)[index]
    return TrainBatch(
        input_ids, attention, loss_mask, adv, lps, versions=versions, sample_index=index, sample_tokens=tokens
    )
