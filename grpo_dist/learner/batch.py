"""The learner's view of a step: scored groups turned into padded tensors.

Layout: each row is prompt + response, right-padded to the longest row. Position t of a ``[N, L-1]``
tensor refers to predicting token t+1 from tokens <= t; ``loss_mask`` is 1 exactly where token t+1 is
a token the model sampled, of a sample that counts (the reward failure policy may mask whole samples; a
multi-turn trajectory's environment tokens are 0).
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
    """Flatten groups (in order) into one right-padded batch; ``advantages`` is ``[num_groups * G]``."""
    rows, resp_lens, engine_lps, token_versions, valid, masks = [], [], [], [], [], []
    for scored in groups:
        prompt_ids = scored.group.prompt.token_ids
        for completion, ok in zip(scored.group.completions, scored.valid):
            rows.append((len(prompt_ids), list(prompt_ids) + list(completion.token_ids)))
            resp_lens.append(len(completion.token_ids))
            masks.append(completion.mask())
            engine_lps.append(completion.logprobs)
            token_versions.append(completion.versions(scored.group.weights_version))
            valid.append(ok)
    n = len(rows)
    assert advantages.shape == (n,), (advantages.shape, n)
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
    return TrainBatch(input_ids, attention, loss_mask, adv, lps, versions=versions)
