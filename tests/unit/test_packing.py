"""Packed rows and the fused head compute exactly what the padded, full-logits path computes, on every
model family the project supports; and the trap of an all-ones attention mask is shown to be one."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from grpo_dist.learner.forward import ForwardSettings, fused_head_weight, token_outputs
from grpo_dist.learner.packing import pack
from grpo_dist.learner.varlen_attention import register as register_varlen
from grpo_dist.learner.varlen_attention import sequence_bounds
from grpo_dist.models.support import learner_attn_implementation
from grpo_dist.models.zoo import FAMILIES, build_tiny

PADDED_FULL = ForwardSettings(packing=False, temperature=0.8, chunk_size=7, fused_head=False)


@functools.cache
def _model(family: str, root: str, varlen: bool = False) -> torch.nn.Module:
    """The family's tiny model as the learner loads it; ``varlen``: with the per-sequence packed attention
    where the learner would use it (not where it needs eager attention)."""
    import json

    from transformers import AutoModelForCausalLM

    path = build_tiny(family, Path(root) / family)
    attn = learner_attn_implementation(json.loads((path / "config.json").read_text()))
    if varlen and attn is None:
        attn = register_varlen()
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn).eval()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("zoo"))


def _batch(vocab: int, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros((len(lengths), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, :n] = 1
    return ids, mask


def _valid(mask: torch.Tensor) -> torch.Tensor:
    return mask[:, 1:].bool() & mask[:, :-1].bool()


def test_pack_lays_sequences_end_to_end_with_restarting_positions() -> None:
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [1, 2, 3, 4]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    row = pack(ids, mask)
    assert row.input_ids.tolist() == [[5, 6, 7, 8, 9, 1, 2, 3, 4]]
    assert row.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    flat = torch.arange(8.0)  # flat position j predicts packed token j + 1
    assert row.unpack(flat).tolist() == [[0.0, 1.0, 0.0], [3.0, 0.0, 0.0], [5.0, 6.0, 7.0]]
    assert row.forward_kwargs(torch.device("cpu"))["attention_mask"] is None


def test_pack_refuses_left_padding() -> None:
    with pytest.raises(ValueError, match="right-padded"):
        pack(torch.tensor([[0, 5, 6]]), torch.tensor([[0, 1, 1]]))


@pytest.mark.parametrize("family", [f.family for f in FAMILIES])
def test_packed_and_fused_paths_equal_the_padded_full_logits_path(family: str, root: str) -> None:
    model = _model(family, root)
    # lengths beyond the tiny models' sliding windows (where they have one), so the band is exercised too
    ids, mask = _batch(model.config.vocab_size, [9, 3, 40, 6, 2, 33])
    valid = _valid(mask)
    ref_lp, ref_ent = token_outputs(model, ids, mask, PADDED_FULL)
    for varlen in (False, True):
        m = _model(family, root, varlen)
        for packing in (False, True):
            for fused in (False, True):
                s = ForwardSettings(packing=packing, temperature=0.8, chunk_size=7, fused_head=fused)
                lp, ent = token_outputs(m, ids, mask, s)
                assert (lp - ref_lp)[valid].abs().max() < 1e-5, (family, varlen, packing, fused)
                assert (ent - ref_ent)[valid].abs().max() < 1e-5, (family, varlen, packing, fused)
        # only the positions asked for: those equal, the rest 0
        needed = valid & (torch.rand(valid.shape, generator=torch.Generator().manual_seed(5)) < 0.5)
        for packing in (False, True):
            s = ForwardSettings(packing=packing, temperature=0.8, chunk_size=7, fused_head=True)
            lp, ent = token_outputs(m, ids, mask, s, needed=needed)
            assert (lp - ref_lp)[needed].abs().max() < 1e-5 and (ent - ref_ent)[needed].abs().max() < 1e-5
            assert not lp[~needed].any() and not ent[~needed].any()
    if family == "gemma2":
        assert fused_head_weight(model) is not None and model.config.final_logit_softcapping  # soft-capped, fused


@pytest.mark.parametrize("family", ["llama-tied", "gemma2", "qwen3-moe"])
def test_packed_fused_gradients_equal_the_padded_ones(family: str, root: str) -> None:
    model = _model(family, root)
    ids, mask = _batch(model.config.vocab_size, [11, 4, 8], seed=1)
    valid = _valid(mask).float()
    weights = torch.randn(valid.shape, generator=torch.Generator().manual_seed(2)) * valid

    def grads(s: ForwardSettings, needed: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        model.zero_grad()
        lp, _ = token_outputs(model, ids, mask, s, needed=needed)
        (lp * weights).sum().backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    ref = grads(PADDED_FULL)
    packed = ForwardSettings(packing=True, temperature=0.8, chunk_size=5, fused_head=True)
    for varlen, needed in ((False, None), (True, None), (True, weights != 0)):
        model = _model(family, root, varlen)
        got = grads(packed, needed)
        assert ref.keys() == got.keys()
        for k in ref:
            # fp32, a different summation order in attention: relative to the tensor's scale (measured <= 6e-6)
            assert (got[k] - ref[k]).abs().max() <= 1e-4 * ref[k].abs().max(), (varlen, k)


def test_sequence_bounds_come_from_restarting_positions() -> None:
    assert sequence_bounds(torch.tensor([[0, 1, 2, 0, 1, 0]]), 6) == [(0, 3), (3, 5), (5, 6)]
    assert sequence_bounds(torch.tensor([[0, 1, 2]]), 3) == [(0, 3)]
    assert sequence_bounds(torch.tensor([[0, 1], [0, 1]]), 2) is None  # a padded batch: not one packed row
    assert sequence_bounds(None, 4) is None


@pytest.mark.parametrize("varlen", [False, True])
def test_changing_one_packed_sequence_leaves_the_others_unchanged(root: str, varlen: bool) -> None:
    model = _model("qwen2", root, varlen)
    ids, mask = _batch(model.config.vocab_size, [7, 12, 5])
    s = ForwardSettings(packing=True, temperature=1.0, chunk_size=64)
    before, _ = token_outputs(model, ids, mask, s)
    changed = ids.clone()
    changed[0, :7] = torch.flip(changed[0, :7], dims=[0])  # sequence 0 precedes the others in the packed row
    after, _ = token_outputs(model, changed, mask, s)
    valid = _valid(mask)
    assert not torch.allclose(before[0][valid[0]], after[0][valid[0]])
    assert torch.equal(before[1:][valid[1:]], after[1:][valid[1:]])


def test_an_all_ones_mask_switches_the_packing_detection_off(root: str) -> None:
    """The trap the packed path avoids: with a 2-D all-ones mask transformers sees one long sequence, and the
    second sequence attends to the first (its logprobs change); without a mask they equal the padded ones."""
    model = _model("llama", root)
    ids, mask = _batch(model.config.vocab_size, [6, 8])
    ref, _ = token_outputs(model, ids, mask, PADDED_FULL)
    row = pack(ids, mask)
    kwargs = row.forward_kwargs(torch.device("cpu"))
    with torch.no_grad():
        good = model(**kwargs).logits[0, :-1]  # kwargs carry use_cache=False: a KV cache also disables it
        bad = model(**{**kwargs, "attention_mask": torch.ones_like(row.input_ids)}).logits[0, :-1]
    good_lp = row.unpack(torch.log_softmax(good / 0.8, -1).gather(-1, row.targets[:, None]).squeeze(-1))
    bad_lp = row.unpack(torch.log_softmax(bad / 0.8, -1).gather(-1, row.targets[:, None]).squeeze(-1))
    valid = _valid(mask)
    assert (good_lp - ref)[valid].abs().max() < 1e-5
    assert (bad_lp - ref)[1][valid[1]].abs().max() > 1e-3  # sequence 2 saw sequence 1
