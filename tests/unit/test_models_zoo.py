"""The tiny model zoo (deterministic, loadable, every tensor distinct) and the checkpoint-layout inverse."""

from __future__ import annotations

from pathlib import Path

import pytest

from grpo_dist.models.zoo import FAMILIES, build_tiny, family_spec


def test_spec_table_names_each_family_once_with_its_tie() -> None:
    names = [f.family for f in FAMILIES]
    assert len(names) == len(set(names))
    assert family_spec("llama-tied").tied
    assert not family_spec("llama").tied
    with pytest.raises(ValueError, match="unknown model family 'nope'"):
        family_spec("nope")


def test_build_is_deterministic_from_the_seed_and_loads_in_transformers(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a = load_file(build_tiny("qwen2", tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(build_tiny("qwen2", tmp_path / "b", seed=3) / "model.safetensors")
    c = load_file(build_tiny("qwen2", tmp_path / "c", seed=4) / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    # biases and norm scales are not left at a constant initialisation: a swapped pair would show
    for name in ("model.layers.0.self_attn.q_proj.bias", "model.layers.0.input_layernorm.weight"):
        assert a[name].std() > 0.01, name
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert model.config.vocab_size == len(tok)
    assert model.config.tie_word_embeddings
    assert "lm_head.weight" not in a  # tied: the checkpoint holds the embedding only


@pytest.mark.parametrize("family", ["qwen3-moe", "mixtral", "llama"])
def test_checkpoint_layout_matches_what_save_pretrained_writes(family: str, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from grpo_dist.models.layout import CheckpointLayout

    path = build_tiny(family, tmp_path / family, seed=0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    layout = CheckpointLayout(model.config)
    converted = layout.state_dict({n: p.detach() for n, p in model.named_parameters()})
    on_disk = load_file(path / "model.safetensors")
    assert converted.keys() == on_disk.keys()
    assert all(torch.equal(converted[k].contiguous(), on_disk[k]) for k in on_disk)
    assert layout.identity == (family == "llama")
    if family == "mixtral":  # the in-memory names vLLM's Mixtral loader rejects are gone
        assert any(".block_sparse_moe.experts.3.w1.weight" in k for k in converted)
        assert not any("gate_up_proj" in k for k in converted)
