"""LoRA's pure parts: the export views' names and shapes against a real peft model, the out-of-place merge
against peft's own, the adapter file against ``PeftModel.from_pretrained``, and the config's refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from grpo_dist.config import Config, ConfigError, apply_overrides, parse_config
from grpo_dist.config.sections import LoraConfig, vllm_max_lora_rank
from grpo_dist.learner import lora
from grpo_dist.learner.export import WeightExport, param_metas, save_adapter


def _tiny_llama(*, tied: bool) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config).eval()


def _wrapped(rank: int = 4, **kwargs) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the plain model, a copy under peft with random non-zero B so the adapters change the output)."""
    import copy

    base = _tiny_llama(tied=kwargs.pop("tied", True))
    model = lora.wrap(copy.deepcopy(base), LoraConfig(rank=rank, **kwargs))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
    return base, model.eval()


def _export(model: torch.nn.Module, view: lora.ExportView) -> WeightExport:
    return WeightExport(model, view, rank=0, zero3=False, bucket_bytes=1 << 14, scales=lora.layer_scales(model))


@pytest.mark.parametrize("use_rslora", [False, True])
def test_merged_view_is_the_plain_models_state_under_its_own_names(use_rslora: bool) -> None:
    base, model = _wrapped(alpha=8.0, use_rslora=use_rslora)
    assert set(lora.layer_scales(model).values()) == {8.0 / 2 if use_rslora else 8.0 / 4}  # alpha / sqrt(r)
    merged = _export(model, "merged").state_dict()
    assert merged is not None
    assert list(merged) == [n for n, _ in base.named_parameters()]  # same names, same order, tied head once
    peft_merged = model.merge_and_unload()  # peft's own merge (in place: fine on this throwaway copy)
    for name, ref in peft_merged.named_parameters():
        assert torch.allclose(merged[name], ref, atol=1e-6), name
    changed = [n for n, p in base.named_parameters() if not torch.equal(merged[n], p)]
    assert changed and all(n.endswith("proj.weight") for n in changed)  # only the adapted layers moved


def test_merge_never_writes_the_base() -> None:
    _, model = _wrapped()
    before = {n: p.clone() for n, p in model.named_parameters() if "base_layer" in n}
    export = _export(model, "merged")
    for _ in range(3):
        assert all(flat is not None for flat in export.buckets())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if "base_layer" in n)


def test_materialize_computes_w0_plus_scaled_b_a_in_float32() -> None:
    w0 = torch.randn(6, 5, dtype=torch.bfloat16)
    a, b = torch.randn(2, 5), torch.randn(6, 2)
    export = lora.Export(lora.ParamMeta("w", (6, 5), "bfloat16"), ("w0", "a", "b"), scale=0.5)
    out = lora.materialize(export, [w0, a, b])
    assert out.dtype == torch.bfloat16 and out.data_ptr() != w0.data_ptr()
    assert torch.equal(out, (w0.float() + 0.5 * b @ a).bfloat16())


@pytest.mark.parametrize("use_rslora", [False, True])
def test_adapter_view_holds_only_a_and_b_under_peft_saved_names(tmp_path: Path, use_rslora: bool) -> None:
    """Also under rsLoRA: the adapter file says so (vLLM reads ``use_rslora`` from it), and the model loaded
    from it computes what the learner's does."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    base, model = _wrapped(target_modules=["q_proj", "v_proj"], use_rslora=use_rslora)
    table = _export(model, "adapter").table
    expected = get_peft_model_state_dict(model)  # what peft's save_pretrained writes
    assert [e.meta.name for e in table] == list(expected)
    assert all(e.meta.shape == tuple(expected[e.meta.name].shape) for e in table)
    assert len(table) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)

    state = _export(model, "adapter").state_dict()
    assert state is not None
    config = lora.adapter_config(model, base_model="unused")
    assert config["use_rslora"] is use_rslora
    save_adapter(str(tmp_path), state, config)
    loaded = PeftModel.from_pretrained(base, str(tmp_path)).eval()
    ids = torch.tensor([[1, 5, 9, 33, 2]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-6)


def test_full_view_without_lora_is_every_parameter_as_itself() -> None:
    base = _tiny_llama(tied=False)
    table = lora.export_table(param_metas(base), "full", {})
    assert [e.meta.name for e in table] == [n for n, _ in base.named_parameters()]
    assert all(e.sources == (e.meta.name,) for e in table)
    with pytest.raises(ValueError, match="without LoRA layers"):
        lora.export_table(param_metas(base), "adapter", {})


def test_all_linear_targets_every_projection_but_not_the_output_layer() -> None:
    _, model = _wrapped(tied=False)
    layers = set(lora.layer_scales(model))
    assert len(layers) == 2 * 7 and not any("lm_head" in n for n in layers)
    assert set(lora.layer_scales(model).values()) == {32.0 / 4}  # alpha / r


def test_a_target_list_that_matches_nothing_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"model\.lora\.target_modules"):
        lora.wrap(_tiny_llama(tied=True), LoraConfig(rank=4, target_modules=["nonexistent_proj"]))


@pytest.mark.parametrize(("rank", "expected"), [(1, 1), (2, 8), (8, 8), (9, 16), (300, 320), (512, 512)])
def test_max_lora_rank_rounds_up_to_what_vllm_accepts(rank: int, expected: int) -> None:
    assert vllm_max_lora_rank(rank) == expected


def _cfg(*overrides: str) -> Config:
    return parse_config(apply_overrides({}, list(overrides)))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["model.lora.alpha=8"], "alpha = 8.0 set while rank = 0"),
        (["model.lora.sync=merged"], "sync = 'merged' set while rank = 0"),
        (["model.lora.use_rslora=true"], "use_rslora = True set while rank = 0"),
        (["model.lora.rank=4", "model.lora.target_modules=[]"], "name at least one module"),
        (["model.lora.rank=4", "model.lora.target_modules=[q_proj, lm_head]"], r"\['lm_head'\]"),
        (["model.lora.rank=600"], "up to rank 512"),
        (["model.lora.rank=4", "model.lora.load_in_4bit=true", "cluster.device=cpu"], "needs a CUDA GPU"),
        (["model.lora.rank=4", "model.lora.load_in_4bit=true", "cluster.device=cuda"], "not implemented yet"),
    ],
)
def test_config_refuses_lora_settings_that_would_do_nothing_or_fail(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _cfg(*overrides)


def test_config_accepts_lora_and_keeps_it_off_by_default() -> None:
    assert not _cfg().model.lora.enabled
    cfg = _cfg("model.lora.rank=600", "model.lora.sync=merged", "model.lora.target_modules=[q_proj, v_proj]")
    assert cfg.model.lora.enabled and cfg.model.lora.target_modules == ["q_proj", "v_proj"]
    assert parse_config(cfg.to_dict()) == cfg  # a saved config loads back (defaults included)


def test_resume_refuses_a_checkpoint_trained_with_other_adapters(tmp_path: Path) -> None:
    import json

    from grpo_dist.run_parts import check_same_trainable
    from grpo_dist.run_state import CONTROLLER_STATE

    def checkpoint(*overrides: str) -> Path:
        path = tmp_path / str(len(list(tmp_path.iterdir())))
        path.mkdir()
        (path / CONTROLLER_STATE).write_text(json.dumps({"config": _cfg(*overrides).to_dict()}))
        return path

    lora8 = ["model.lora.rank=8"]
    check_same_trainable(_cfg(*lora8), checkpoint(*lora8))
    check_same_trainable(
        _cfg(*lora8, "model.lora.sync=merged"), checkpoint(*lora8)
    )  # the way to the engines may change
    check_same_trainable(_cfg(), checkpoint())
    with pytest.raises(ValueError, match=r"model\.lora\.rank 8 -> 16"):
        check_same_trainable(_cfg("model.lora.rank=16"), checkpoint(*lora8))
    with pytest.raises(ValueError, match=r"model\.lora\.alpha 32\.0 -> 8\.0"):
        check_same_trainable(_cfg(*lora8, "model.lora.alpha=8"), checkpoint(*lora8))
    with pytest.raises(ValueError, match=r"model\.lora\.rank 0 -> 8"):
        check_same_trainable(_cfg(*lora8), checkpoint())  # a full fine-tune's checkpoint
    with pytest.raises(ValueError, match=r"model\.lora\.use_rslora False -> True"):
        check_same_trainable(_cfg(*lora8, "model.lora.use_rslora=true"), checkpoint(*lora8))
    older = checkpoint(*lora8)  # a checkpoint written before the field existed: it had the default
    state = json.loads((older / CONTROLLER_STATE).read_text())
    del state["config"]["model"]["lora"]["use_rslora"]
    (older / CONTROLLER_STATE).write_text(json.dumps(state))
    check_same_trainable(_cfg(*lora8), older)


def test_dropout_acts_in_the_training_forward_only() -> None:
    _, model = _wrapped(dropout=0.5)
    ids = torch.tensor([[1, 5, 9, 33, 2]])
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(ids).logits, model(ids).logits)
        model.train()
        assert not torch.equal(model(ids).logits, model(ids).logits)


def test_layers_other_than_linear_are_refused_naming_the_module() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16))
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.attn\.c_attn \(Conv1D\)"):
        lora.wrap(gpt2, LoraConfig(rank=4, target_modules=["c_attn"]))
