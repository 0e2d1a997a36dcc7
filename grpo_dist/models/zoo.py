"""Tiny random models of every architecture family the conformance matrix covers, built locally in seconds.

Each family is a row of ``FAMILIES``: the transformers config class, the keyword arguments that make a
tiny model of it (hidden 64, 2 layers, head_dim 32: the smallest head size vLLM's CPU attention accepts)
while keeping the family's distinctive features switched on (biases, q/k norms, soft-capping, sliding
windows, fused projections, experts), and whether its embeddings are tied. ``build_tiny`` saves config,
random weights (safetensors) and a byte-level BPE tokenizer so that both vLLM and transformers load the
directory like any other model.

Weights are drawn with a larger spread than a real initialisation (``initializer_range``) so that the
logits are far from uniform, and every tensor that an initialisation would leave constant (norm scales,
biases) gets noise of its own: a loader that swapped two such tensors, or kept a stale one, then shows
up in the logprobs instead of hiding behind identical values. Everything is deterministic from the seed.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Shape shared by every family (families add or override keys).
COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "max_position_embeddings": 256,
    "initializer_range": 0.2,
}

#: The vocabulary size asked of the tokenizer trainer; the model's ``vocab_size`` is the size it reaches.
TOKENIZER_VOCAB = 512


@dataclass(frozen=True)
class FamilySpec:
    """One architecture family: how to build a tiny model of it."""

    family: str
    config_class: str  # a transformers config class name
    kwargs: dict[str, Any] = field(default_factory=dict)
    tied: bool = False
    features: str = ""  # what the tiny model exercises, for the table

    def config_kwargs(self) -> dict[str, Any]:
        kwargs = {**COMMON, **self.kwargs, "tie_word_embeddings": self.tied}
        return {k: v for k, v in kwargs.items() if v is not None}


FAMILIES: tuple[FamilySpec, ...] = (
    FamilySpec("llama", "LlamaConfig", features="baseline"),
    FamilySpec("llama-tied", "LlamaConfig", tied=True, features="tied embeddings"),
    FamilySpec("qwen2", "Qwen2Config", tied=True, features="q/k/v bias, tied"),
    FamilySpec("qwen3", "Qwen3Config", tied=True, features="q/k RMSNorm, tied"),
    FamilySpec("mistral", "MistralConfig", {"sliding_window": 16}, features="sliding window 16"),
    FamilySpec(
        "gemma2",
        "Gemma2Config",
        {
            "query_pre_attn_scalar": 32,
            "sliding_window": 16,
            # small caps, so that they bite on a tiny random model (the released models use 50 and 30)
            "attn_logit_softcapping": 10.0,
            "final_logit_softcapping": 5.0,
        },
        tied=True,
        features="embedding scale, (1+w) norms, attention + final soft-capping, sliding/global layers",
    ),
    FamilySpec(
        "gemma3",
        "Gemma3TextConfig",
        {
            "query_pre_attn_scalar": 32,
            "sliding_window": 16,
            "layer_types": ["sliding_attention", "full_attention"],
        },
        tied=True,
        features="embedding scale, q/k norms, sliding/global layers with their own RoPE",
    ),
    FamilySpec(
        "phi3",
        "Phi3Config",
        {"head_dim": None, "pad_token_id": None},
        features="fused qkv_proj and gate_up_proj in the checkpoint",
    ),
    FamilySpec(
        "qwen3-moe",
        "Qwen3MoeConfig",
        {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64, "norm_topk_prob": True},
        features="4 experts, top-2, q/k norms",
    ),
    FamilySpec(
        "mixtral",
        "MixtralConfig",
        {"num_local_experts": 4, "num_experts_per_tok": 2},
        features="4 experts, top-2",
    ),
)

BY_NAME: dict[str, FamilySpec] = {f.family: f for f in FAMILIES}

# transformers initialises weights from torch's global generator: builds in threads take turns
_BUILD_LOCK = threading.Lock()


def family_spec(family: str) -> FamilySpec:
    if family not in BY_NAME:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(BY_NAME)}")
    return BY_NAME[family]


@functools.lru_cache(maxsize=4)
def _tokenizer(vocab_size: int):  # -> PreTrainedTokenizerFast
    from grpo_dist.models.builder import tokenizer_corpus, train_tokenizer

    return train_tokenizer(tokenizer_corpus(0), vocab_size)


def tiny_tokenizer():  # -> PreTrainedTokenizerFast
    """The tokenizer every tiny model shares (trained once per process)."""
    return _tokenizer(TOKENIZER_VOCAB)


def tiny_config(family: str):  # -> PretrainedConfig
    import transformers

    spec = family_spec(family)
    tok = tiny_tokenizer()
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    kwargs = {**ids, **spec.config_kwargs(), "vocab_size": len(tok)}
    config = getattr(transformers, spec.config_class)(**kwargs)
    config.dtype = "float32"
    return config


def build_tiny(family: str, out_dir: Path | str, seed: int = 0) -> Path:
    """Save a tiny random model of ``family`` (config, safetensors weights, tokenizer) into ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = tiny_config(family)
    tok = tiny_tokenizer()
    config.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    # the family's tokenizer class may add a token of its own on load (Qwen2's adds <|endoftext|> as its unknown
    # token): the vocabulary is what the loaders see, so that every id they can produce has an embedding row
    config.vocab_size = max(config.vocab_size, len(AutoTokenizer.from_pretrained(out_dir)))
    with _BUILD_LOCK:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            flat = p.reshape(-1)
            if bool((flat == flat[0]).all()):  # a constant init (norm scale, bias): make every entry its own
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
