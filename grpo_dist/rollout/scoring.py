"""``ModelScorer``: per-token logprobs of fixed sequences under models loaded one after another in one process.

Checks that a model directory (e.g. a learner's Hugging Face export) loads in vLLM and scores like the
learner that wrote it, without paying a new process and vLLM's import per model: each model gets a fresh
``VllmEngine`` with the rollout engines' own arguments, torn down with vLLM's distributed state before the
next one starts (a parallel state left over from a dense model breaks a mixture-of-experts one).
"""

from __future__ import annotations

import gc
import os
from typing import Any

from grpo_dist.rollout.engine import VllmEngine


class ModelScorer:
    def __init__(self, *, device: str = "cpu") -> None:
        self.device = device

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid()}

    def score(
        self,
        model_path: str,
        sequences: list[list[int]],
        *,
        max_model_len: int,
        seed: int = 0,
        dtype: str = "float32",
        kv_cache_gib: float = 0.1,
    ) -> list[list[float]]:
        """``VllmEngine.sequence_token_logprobs`` of ``sequences`` under a fresh engine on ``model_path``."""
        from vllm.distributed import cleanup_dist_env_and_memory

        engine: VllmEngine | None = None
        try:
            engine = VllmEngine(
                engine_index=0,
                model_path=model_path,
                dtype=dtype,
                device=self.device,
                max_model_len=max_model_len,
                seed=seed,
                kv_cache_gib=kv_cache_gib,
            )
            return engine.sequence_token_logprobs(sequences)
        finally:
            del engine
            gc.collect()
            cleanup_dist_env_and_memory()
