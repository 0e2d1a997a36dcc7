"""``unsupported_reason``: the conformance matrix's known failures are refused up front, with the cause."""

from __future__ import annotations

import pytest

from grpo_dist.models.support import CONFORMANT, head_dim, num_experts, unsupported_reason


def _llama(**extra: object) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 576,
        "num_attention_heads": 9,
        **extra,
    }


def test_dense_families_pass() -> None:
    assert unsupported_reason(_llama()) is None
    assert unsupported_reason({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "head_dim": 128}) is None
    # Gemma 3 text: its config carries attn_logit_softcapping = null
    gemma3 = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "head_dim": 256}
    assert unsupported_reason({**gemma3, "attn_logit_softcapping": None}) is None


def test_an_architecture_the_matrix_does_not_cover_is_not_refused() -> None:
    assert "OlmoForCausalLM" not in CONFORMANT
    assert unsupported_reason({"architectures": ["OlmoForCausalLM"], "model_type": "olmo", "head_dim": 64}) is None


def test_head_size_outside_the_cpu_attention_set_is_refused_on_cpu_only() -> None:
    cfg = _llama(hidden_size=64, num_attention_heads=4)  # head_dim 16
    assert head_dim(cfg) == 16
    reason = unsupported_reason(cfg, device="cpu")
    assert reason is not None
    assert "head_dim = 16" in reason
    assert unsupported_reason(cfg, device="cuda") is None


def test_the_layouts_the_matrix_found_and_fixed_are_no_longer_refused() -> None:
    """Mixtral's expert layout, MoE prepacking on CPU and Gemma 2's soft-capping were refused until their
    fixes (models.layout, models.reload_fixes, learner_attn_implementation) landed; the matrix checks them."""
    mixtral = {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "head_dim": 128,
        "num_local_experts": 8,
    }
    moe = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "head_dim": 128, "num_experts": 4}
    gemma2 = {"architectures": ["Gemma2ForCausalLM"], "head_dim": 256, "attn_logit_softcapping": 50.0}
    for cfg in (mixtral, moe, gemma2):
        for device in ("cpu", "cuda"):
            assert unsupported_reason(cfg, device=device) is None


@pytest.mark.parametrize("key", ["num_experts", "num_local_experts", "n_routed_experts"])
def test_expert_count_is_read_under_each_name(key: str) -> None:
    assert num_experts({key: 4}) == 4


def test_a_multimodal_config_is_read_through_its_text_config() -> None:
    cfg = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": {"hidden_size": 64, "num_attention_heads": 4, "model_type": "gemma3_text"},
    }
    reason = unsupported_reason(cfg, device="cpu")
    assert reason is not None
    assert "head_dim = 16" in reason


def test_reads_the_config_json_of_every_zoo_family() -> None:
    """The zoo's own configs, as the matrix sees them: none is refused (every family conforms)."""
    from grpo_dist.models.zoo import FAMILIES, tiny_config

    refused = {f.family for f in FAMILIES if unsupported_reason(tiny_config(f.family).to_dict(), device="cpu")}
    assert refused == set()


def test_learner_attention_is_eager_exactly_where_attention_is_soft_capped() -> None:
    from grpo_dist.models.support import learner_attn_implementation

    assert learner_attn_implementation({"model_type": "gemma2", "attn_logit_softcapping": 50.0}) == "eager"
    assert learner_attn_implementation({"model_type": "gemma3_text", "attn_logit_softcapping": None}) is None
    assert learner_attn_implementation(_llama()) is None
