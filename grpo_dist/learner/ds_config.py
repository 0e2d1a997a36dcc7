"""The DeepSpeed config of a learner rank: the only place DeepSpeed's keys are spelled."""

from __future__ import annotations

from typing import Any

from grpo_dist.config import LearnerConfig

BUCKET_ELEMENTS = 1 << 25


def build_ds_config(cfg: LearnerConfig, *, world_size: int, bf16: bool) -> dict[str, Any]:
    """Gradient accumulation is unmanaged: micro-batches are cut by tokens, so their number changes from
    step to step; the learner calls ``backward`` once per micro-batch and ``step`` once per mini-batch, and
    DeepSpeed's batch-size keys only satisfy its bookkeeping (``micro_batch_size`` x 1 x ranks)."""
    zero: dict[str, Any] = {
        "stage": cfg.zero_stage,
        "overlap_comm": False,
        "contiguous_gradients": True,
        # DeepSpeed's defaults (5e8 elements: 2 GB each in float32) size buffers for 10B-parameter models;
        # 2^25 elements (128 MB in float32) keep the collectives large and the buffers small
        "reduce_bucket_size": BUCKET_ELEMENTS,
        "allgather_bucket_size": BUCKET_ELEMENTS,
    }
    if cfg.zero_stage == 3:
        zero |= {
            # gather every parameter for the forward: our buckets are gathered explicitly for weight sync
            "stage3_param_persistence_threshold": 0,
            "stage3_gather_16bit_weights_on_model_save": True,
        }
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": cfg.micro_batch_size * world_size,
        "managed_gradient_accumulation": False,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": zero,
        # bf16 has no loss scaling, so ask DeepSpeed to check gradients and skip a non-finite update
        "bf16": {"enabled": bf16, "check_grad_overflow": True},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
