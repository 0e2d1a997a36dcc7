"""The embedded default model's shape, as plain data.

Kept free of heavy imports so that config validation can check lengths against the embedded model's
context before the model has been built (``grpo-dist init-model`` builds it from this spec).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EmbeddedModelSpec:
    """A small Llama-style causal LM and its tokenizer, built locally from random init."""

    name: str = "tiny-llama"
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    vocab_size: int = 512
    seed: int = 0


EMBEDDED_MODEL = EmbeddedModelSpec()


def cache_root() -> Path:
    """Where built models and generated datasets live (``GRPO_DIST_CACHE`` overrides)."""
    env = os.environ.get("GRPO_DIST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "grpo-dist"


def embedded_model_dir(spec: EmbeddedModelSpec = EMBEDDED_MODEL) -> Path:
    return cache_root() / "models" / f"{spec.name}-seed{spec.seed}"
