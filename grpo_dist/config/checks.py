"""Checks that span fields or sections, run once every section is valid on its own.

They read the config alone (and the model directory's ``config.json`` for its context length): what needs
the tokenizer, the data or the user's reward modules is checked by ``grpo_dist.preflight``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from grpo_dist.config.sections import VLLM_LORA_RANKS
from grpo_dist.embedded import EMBEDDED_MODEL

if TYPE_CHECKING:
    from grpo_dist.config.root import Config
    from grpo_dist.config.sections import ModelConfig

BUILTIN_REWARD_NAMES: tuple[str, ...] = ("code_exec", "env_reward", "exact_match", "format", "overlong")
"""The built-in reward functions, by the ``reward.functions[i].name`` that selects one when ``path`` is unset.

Data rather than an import of ``grpo_dist.reward``: the config must not load a role package to validate a
name. ``tests/unit/test_config_layout.py`` holds it equal to ``grpo_dist.reward.builtins.BUILTINS``."""


def model_context_length(model: ModelConfig) -> int | None:
    """The model's context length, from the config, the model directory or the embedded spec."""
    if model.max_model_len is not None:
        return model.max_model_len
    if model.path is None:
        return EMBEDDED_MODEL.max_position_embeddings
    config_json = Path(model.path) / "config.json"
    if not config_json.is_file():
        return None  # checked by the components that load the model
    hf = json.loads(config_json.read_text())
    value = hf.get("max_position_embeddings") or hf.get("text_config", {}).get("max_position_embeddings")
    return int(value) if value else None


def cross_field_errors(cfg: Config) -> list[str]:
    """Checks that span fields or sections; each message names the fields and values involved."""
    errors: list[str] = []
    d, r, lrn, a = cfg.data, cfg.rollout, cfg.learner, cfg.algo
    if d.train_batch_size % lrn.mini_batch_size:
        errors.append(
            f"learner.mini_batch_size = {lrn.mini_batch_size} must divide data.train_batch_size = "
            f"{d.train_batch_size} (both count prompts)"
        )
    context = model_context_length(cfg.model)
    total = d.max_prompt_length + d.max_response_length
    if context is not None and total > context:
        errors.append(
            f"data.max_prompt_length + data.max_response_length = {d.max_prompt_length} + "
            f"{d.max_response_length} = {total} exceeds the model's context of {context} tokens"
        )
    if cfg.cluster.device == "cpu" and r.tensor_parallel_size != 1:
        errors.append(f"rollout.tensor_parallel_size = {r.tensor_parallel_size}: must be 1 when cluster.device = 'cpu'")
    if cfg.eval.num_samples < max(cfg.eval.k_values, default=1):
        errors.append(
            f"eval.num_samples = {cfg.eval.num_samples} is smaller than the largest of eval.k_values = "
            f"{cfg.eval.k_values}"
        )
    if any(k < 1 for k in cfg.eval.k_values):
        errors.append(f"eval.k_values = {cfg.eval.k_values}: every k must be >= 1")
    for i, f in enumerate(cfg.reward.functions):
        if f.path is None and f.name not in BUILTIN_REWARD_NAMES:
            errors.append(
                f"reward.functions.{i}.name = {f.name!r} is not a built-in ({', '.join(BUILTIN_REWARD_NAMES)}); "
                f"set reward.functions.{i}.path = 'package.module:function' for your own"
            )
    if cfg.cluster.colocate and (r.tensor_parallel_size != 1 or r.num_engines != lrn.num_ranks):
        errors.append(
            f"cluster.colocate = true pairs engine i with learner rank i on one GPU: needs "
            f"rollout.tensor_parallel_size = 1 (got {r.tensor_parallel_size}) and rollout.num_engines = "
            f"learner.num_ranks (got {r.num_engines} and {lrn.num_ranks})"
        )
    rc = a.rollout_correction
    if rc.mode != "none" and (rc.bypass or not lrn.recompute_old_logprobs):
        anchor = (
            "algo.rollout_correction.bypass = true"
            if rc.bypass
            else "learner.recompute_old_logprobs = false (like algo.rollout_correction.bypass = true)"
        )
        errors.append(
            f"{anchor} makes the engine's logprobs the PPO anchor, so the clipped ratio pi_theta / pi_engine "
            f"already corrects for the engine and a correction weight would be 1: set "
            f"algo.rollout_correction.mode = 'none' (got {rc.mode!r})"
        )
    errors += _async_errors(cfg)
    errors += _lora_errors(cfg)
    if a.clip_ratio_c is not None and a.ratio_level == "sequence":
        errors.append("algo.clip_ratio_c (dual clip) is defined for token-level ratios; unset it for GSPO")
    if cfg.trainer.resume not in ("never", "auto") and not cfg.trainer.resume:
        errors.append("trainer.resume must be 'never', 'auto' or a checkpoint path")
    return errors


STALENESS_OF_MODE = {"sync": 0, "one_step_off": 1, "async": 1}
"""The staleness bound of each ``trainer.async_mode`` when ``sync.max_staleness`` is unset. ``sync`` and
``one_step_off`` produce exactly theirs and accept no other; ``async`` takes any bound."""

FIXED_STALENESS_MODES = ("sync", "one_step_off")


def _lora_errors(cfg: Config) -> list[str]:
    lora, errors = cfg.model.lora, []
    if lora.load_in_4bit and cfg.cluster.device == "cpu":
        errors.append(
            "model.lora.load_in_4bit = true with cluster.device = 'cpu': QLoRA's 4-bit base needs a CUDA GPU "
            "(bitsandbytes' NF4 kernels); on a CPU use model.lora.load_in_4bit = false"
        )
    elif lora.load_in_4bit:
        errors.append(
            "model.lora.load_in_4bit = true: QLoRA (a 4-bit base) is not implemented yet; train LoRA on the "
            "model's own dtype (model.lora.load_in_4bit = false)"
        )
    top = VLLM_LORA_RANKS[-1]
    if lora.sync == "adapter" and lora.rank > top:
        errors.append(
            f"model.lora.rank = {lora.rank} with model.lora.sync = 'adapter': vLLM serves adapters up to rank {top}; "
            "lower the rank or use model.lora.sync = 'merged'"
        )
    return errors


def max_staleness(cfg: Config) -> int:
    """The run's staleness bound: ``sync.max_staleness``, or its mode's when unset."""
    if cfg.sync.max_staleness is not None:
        return cfg.sync.max_staleness
    return STALENESS_OF_MODE[cfg.trainer.async_mode]


def _async_errors(cfg: Config) -> list[str]:
    mode, rc, every = cfg.trainer.async_mode, cfg.algo.rollout_correction, cfg.trainer.save_every
    errors = []
    bound = cfg.sync.max_staleness
    if bound is not None and mode in FIXED_STALENESS_MODES and bound != STALENESS_OF_MODE[mode]:
        errors.append(
            f"sync.max_staleness = {bound} with trainer.async_mode = {mode!r}, whose samples are at most "
            f"{STALENESS_OF_MODE[mode]} version(s) behind the learner by construction: the setting cannot change "
            "that; leave it unset, or set trainer.async_mode = 'async' to choose the bound"
        )
    if max_staleness(cfg) > 0 and rc.mode == "none" and not rc.bypass:
        errors.append(
            f"trainer.async_mode = {mode!r} trains on samples up to {max_staleness(cfg)} weight version(s) old: "
            "their importance ratio must be corrected, so algo.rollout_correction.mode must not be 'none' (or set "
            "algo.rollout_correction.bypass = true to make the engine's logprobs the PPO anchor)"
        )
    if every and max_staleness(cfg) >= every:
        errors.append(
            f"trainer.async_mode = {mode!r} with a staleness bound of {max_staleness(cfg)} and trainer.save_every = "
            f"{every}: every checkpoint step is a barrier (nothing is generated ahead past it), so no sample is "
            f"more than {every - 1} version(s) old and the bound above that does nothing; lower sync.max_staleness "
            f"below {every}, raise trainer.save_every, or use trainer.async_mode = 'sync'"
        )
    r, budget = cfg.rollout, cfg.data.max_response_length
    if r.partial_rollout == "off" and r.partial_segment_tokens is not None:
        errors.append(
            f"rollout.partial_segment_tokens = {r.partial_segment_tokens} with rollout.partial_rollout = 'off': "
            "samples are only generated in segments in a partial rollout; set rollout.partial_rollout = 'resume' "
            "or leave it unset"
        )
    if r.partial_rollout == "resume" and r.multi_turn.enabled:
        errors.append(
            "rollout.partial_rollout = 'resume' with rollout.multi_turn.env set: a trajectory is generated turn by "
            "turn inside one engine call, and continuing one under new weights part-way is not built yet; use "
            "rollout.partial_rollout = 'off'"
        )
    if r.partial_rollout == "resume" and max_staleness(cfg) == 0:
        errors.append(
            f"rollout.partial_rollout = 'resume' with trainer.async_mode = {mode!r} and a staleness bound of 0: "
            "no update ever lands while the engines generate, so there is nothing to continue under new weights; "
            "use trainer.async_mode = 'one_step_off' or 'async', or rollout.partial_rollout = 'off'"
        )
    if r.partial_rollout == "resume" and r.partial_segment_tokens is not None and r.partial_segment_tokens >= budget:
        errors.append(
            f"rollout.partial_segment_tokens = {r.partial_segment_tokens} is not below data.max_response_length = "
            f"{budget}: every sample is done in one segment, so an update never reaches a sample part-way; lower it"
        )
    return errors


def segment_tokens(cfg: Config) -> int | None:
    """Tokens per sample in one engine call of a training rollout: None unless it is a partial rollout."""
    r = cfg.rollout
    if r.partial_rollout == "off":
        return None
    return r.partial_segment_tokens or max(1, cfg.data.max_response_length // 4)
