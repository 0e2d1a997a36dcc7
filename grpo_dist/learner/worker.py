"""``LearnerWorker``: one DeepSpeed ZeRO data-parallel rank.

Each rank holds a DeepSpeed engine around the policy (and, when ``algo.kl_coef > 0``, a frozen
reference model), computes logprobs and the GRPO loss from ``grpo_dist.algo`` on the work the driver
cut for it (``learner.work.RankWork``: its sequences, their micro-batches, each mini-batch's global loss
denominator), and takes part in weight publication (under ZeRO-3 every rank helps gather each bucket;
rank 0 sends it). Plain class: ``LearnerGroup`` wraps it in Ray actors.

Loss normalisation is independent of how the batch is split: every micro-batch loss is divided by its
mini-batch's global count (tokens or sequences, counted by the driver), and DeepSpeed's gradient
averaging over ranks is undone by ``data_parallel_denominator``; so the update equals the one a single
process would make on the whole mini-batch. The number of micro-batches varies from step to step (a
token budget cuts by length), so DeepSpeed runs with unmanaged gradient accumulation: ``backward`` per
micro-batch, ``step`` once per mini-batch.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch

from grpo_dist import algo, metric_names
from grpo_dist.config import Config
from grpo_dist.learner import lora
from grpo_dist.learner.anchor import anchor_and_correction, on_policy_tokens, ppo_anchor
from grpo_dist.learner.batch import TrainBatch
from grpo_dist.learner.ds_config import build_ds_config
from grpo_dist.learner.export import WeightExport, write_hf
from grpo_dist.learner.forward import ForwardSettings, token_outputs
from grpo_dist.learner.schedule import lr_factor
from grpo_dist.learner.work import RankWork
from grpo_dist.sync.plan import Bucket, checksum

logger = logging.getLogger(__name__)


LOSS_TOKENS = metric_names.LEARNER_LOSS_TOKENS
"""The tokens of a rank's loss in a step: the weight of its token-averaged metrics in the group's mean."""
CONSECUTIVE_NONFINITE = "consecutive_nonfinite"
"""Not a metric: the control figure (steps in a row with a skipped update) the driver aborts on."""


def learner_env(device: str) -> dict[str, str]:
    env = {"DS_ACCELERATOR": "cpu" if device == "cpu" else "cuda"}
    return env


def free_port() -> tuple[str, int]:
    """An address of this node and a port free on it (for a rendezvous hosted here)."""
    import ray

    host = ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return host, int(s.getsockname()[1])


class LearnerWorker:
    def __init__(self, *, cfg: Config, rank: int, world_size: int, model_path: str, device: str) -> None:
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.model_path = model_path
        self.device_name = device
        self.device = torch.device("cuda" if device == "cuda" else "cpu")
        self.bf16 = _resolve_dtype(cfg.model.dtype, device) == torch.bfloat16
        self.engine: Any = None
        self.ref_model: torch.nn.Module | None = None
        self.version = 0
        self.consecutive_nonfinite = 0
        self._sender: Any = None
        self._exports: dict[str, WeightExport] = {}
        self.packing = cfg.learner.packing  # setup() turns it off for an architecture it is not exact on

    # ---------------------------------------------------------------------------------------------- setup

    def address(self) -> tuple[str, int]:
        return free_port()

    def setup(self, master_addr: str, master_port: int) -> dict[str, Any]:
        """Join the DeepSpeed world (every rank must be called together) and build model + optimizer."""
        import deepspeed
        from transformers import AutoModelForCausalLM

        lc = self.cfg.learner
        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK="0",
            LOCAL_WORLD_SIZE="1",
        )
        if self.device_name == "cpu":
            torch.set_num_threads(max(1, int(self.cfg.cluster.num_cpus_per_rank)))
        else:
            torch.cuda.set_device(0)  # Ray gives each rank one visible GPU
        torch.manual_seed(self.cfg.trainer.seed)
        deepspeed.init_distributed(
            dist_backend="gloo" if self.device_name == "cpu" else "nccl",
            timeout=datetime.timedelta(seconds=lc.step_timeout_s),
        )
        self.packing = self._packing_exact()
        attn = self._attn_implementation()
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32, attn_implementation=attn)
        if lc.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.config.use_cache = False
        lora_cfg = self.cfg.model.lora
        if lora_cfg.enabled:
            model = lora.wrap(model, lora_cfg)
            if lc.gradient_checkpointing:  # the frozen embeddings' output must carry a gradient into the adapters
                model.enable_input_require_grads()
        # fused: one kernel over DeepSpeed's flat partition (0.1 s instead of 0.5-0.75 s for 135M parameters
        # on 2 CPU cores); TRL's default optimizer is the fused one too
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            trainable, lr=lc.lr, betas=tuple(lc.betas), weight_decay=lc.weight_decay, fused=True
        )
        total = self.cfg.trainer.total_steps * lc.ppo_epochs * self.num_minibatches
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: lr_factor(
                s, warmup_steps=lc.warmup_steps, total_steps=total, kind=lc.lr_scheduler, min_ratio=lc.min_lr_ratio
            ),
        )
        ds_config = build_ds_config(lc, world_size=self.world_size, bf16=self.bf16)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        if self.cfg.algo.kl_coef > 0 and not lora_cfg.enabled:  # with LoRA the reference is the bare base
            ref = AutoModelForCausalLM.from_pretrained(
                self.model_path, dtype=_resolve_dtype(self.cfg.model.dtype, self.device_name), attn_implementation=attn
            )
            self.ref_model = ref.to(self.device).eval().requires_grad_(False)
        self.sync_export = self._export(lora_cfg.sync if lora_cfg.enabled else "full")
        return {
            "rank": self.rank,
            "pid": os.getpid(),
            "num_params": self._base_export().num_params,
            "num_trainable_params": self._trainable_params(),
            "sync_bytes": self.sync_export.num_bytes,
            "packing": self.packing,
            "attn_implementation": attn or "default",
        }

    def _export(self, view: lora.ExportView) -> WeightExport:
        """The tensors of ``view`` (made once per view: the table depends only on the module's layout)."""
        if view not in self._exports:
            module, lc = self.engine.module, self.cfg.learner
            scales = lora.layer_scales(module) if self.cfg.model.lora.enabled else None
            bucket_bytes = int(self.cfg.sync.bucket_size_mb * (1 << 20))
            self._exports[view] = WeightExport(
                module, view, rank=self.rank, zero3=lc.zero_stage == 3, bucket_bytes=bucket_bytes, scales=scales
            )
        return self._exports[view]

    def _base_export(self) -> WeightExport:
        """The whole model under its own names: the full weights, or with LoRA the merged ones."""
        return self._export("merged" if self.cfg.model.lora.enabled else "full")

    def _trainable_params(self) -> int:
        return sum(int(getattr(p, "ds_numel", p.numel())) for p in self.engine.module.parameters() if p.requires_grad)

    def _base_module(self) -> torch.nn.Module:
        """The transformers model itself (under peft's wrapper when LoRA is on)."""
        module = self.engine.module
        return module.get_base_model() if self.cfg.model.lora.enabled else module

    @contextlib.contextmanager
    def _reference(self) -> Iterator[torch.nn.Module]:
        """The KL reference: its own frozen copy, or with LoRA the policy with its adapters switched off."""
        if self.ref_model is not None:
            yield self.ref_model
            return
        assert self.cfg.model.lora.enabled, "a KL reference without LoRA is its own model"
        with self.engine.module.disable_adapter():
            yield self.engine.module

    def _hf_config(self) -> dict[str, Any]:
        import json

        with open(os.path.join(self.model_path, "config.json")) as f:
            return json.load(f)

    def _attn_implementation(self) -> str | None:
        """transformers' attention path that computes what vLLM computes (``eager`` for soft-capped
        attention, which ``sdpa`` silently drops); for packed rows, flash-attention's varlen kernel on a GPU
        where it is installed, else sdpa one sequence at a time (``varlen_attention``); None for
        transformers' default."""
        import importlib.util

        from grpo_dist.learner.varlen_attention import register
        from grpo_dist.models.support import learner_attn_implementation

        attn = learner_attn_implementation(self._hf_config())
        if attn is not None or not self.packing:
            return attn
        if self.device_name == "cuda" and importlib.util.find_spec("flash_attn"):
            return "flash_attention_2"
        return register()

    def _packing_exact(self) -> bool:
        from grpo_dist.models.support import packing_exact

        if not self.cfg.learner.packing:
            return False
        if packing_exact(self._hf_config()):
            return True
        logger.warning("learner.packing: not checked exact for this architecture; micro-batches are padded")
        return False

    @property
    def num_minibatches(self) -> int:
        return self.cfg.data.train_batch_size // self.cfg.learner.mini_batch_size

    def _forward_settings(self, *, temperature: float | None = None) -> ForwardSettings:
        lc = self.cfg.learner
        return ForwardSettings(
            packing=self.packing,
            temperature=self.cfg.rollout.temperature if temperature is None else temperature,
            chunk_size=lc.logprob_chunk_size,
            fused_head=lc.zero_stage != 3,
        )

    # ------------------------------------------------------------------------------------------- logprobs

    def _forward_logprobs(self, model: torch.nn.Module, batch: TrainBatch, *, with_entropy: bool = False):
        """``([n, W-1]`` logprobs, ``[n, W-1]`` entropies or None``)`` of one micro-batch."""
        entropy_grad = with_entropy and self.cfg.algo.entropy_coef > 0
        lp, entropy = token_outputs(
            model,
            batch.input_ids,
            batch.attention_mask,
            self._forward_settings(),
            entropy_grad=entropy_grad,
            needed=batch.loss_mask > 0,  # everything downstream reads the loss positions only
        )
        return lp, entropy if with_entropy else None

    @staticmethod
    def _micro(work: RankWork, rows: list[int]) -> TrainBatch:
        """One micro-batch of ``work``, trimmed of unused padding; a zero-weight placeholder when empty."""
        if not rows:
            return work.batch.placeholder()
        return work.batch.select(torch.tensor(rows, dtype=torch.long)).trimmed()

    @torch.no_grad()
    def compute_logprobs(self, work: RankWork, *, reference: bool = False) -> torch.Tensor:
        """``[n, L-1]`` logprobs of this rank's sequences under the current policy (or the reference), in
        ``work.batch``'s row order, computed in the same micro-batches as training."""
        self.engine.module.eval()  # no dropout in what is compared or anchored on
        n, width = work.batch.num_sequences, work.batch.input_ids.shape[1] - 1
        out = torch.zeros((n, width), dtype=torch.float32)
        with self._reference() if reference else contextlib.nullcontext(self.engine.module) as model:
            for mini in work.micro_batches:
                for rows in mini:
                    lp, _ = self._forward_logprobs(model, self._micro(work, rows))
                    if rows:
                        out[torch.tensor(rows, dtype=torch.long), : lp.shape[1]] = lp.float().cpu()
        return out

    def sequence_token_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """Per-token logprobs of whole sequences at temperature 1 (to compare with an engine's), through
        the same forward path (packing, fused head) as training."""
        n = len(sequences)
        width = max(len(s) for s in sequences)
        ids = torch.zeros((n, width), dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, s in enumerate(sequences):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        self.engine.module.eval()
        with torch.no_grad():
            lp, _ = token_outputs(self.engine.module, ids, mask, self._forward_settings(temperature=1.0))
        lp = lp.float().cpu()
        return [lp[i, : len(s) - 1].tolist() for i, s in enumerate(sequences)]

    # ------------------------------------------------------------------------------------------- training

    def train(self, work: RankWork, step: int) -> dict[str, float]:
        """``ppo_epochs`` passes over this rank's work; one optimizer step per mini-batch (every rank runs the
        same number of micro-batches in each, placeholders included, as the plan guarantees)."""
        lc, ac = self.cfg.learner, self.cfg.algo
        if self.version != step - 1:  # the controller counted the batch's staleness from step - 1
            raise RuntimeError(
                f"learner rank {self.rank} holds weights version {self.version}, but step {step}'s batch was "
                f"scored against version {step - 1}: the run's step and the learner's state disagree"
            )
        anchor = ppo_anchor(self.cfg)
        if anchor == "recomputed" and work.batch.old_logprobs is None:  # (the controller has them computed first)
            work = replace(work, batch=replace(work.batch, old_logprobs=self.compute_logprobs(work)))
        engine = self.engine
        engine.train()
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        grad_norms: list[float] = []
        num_skipped = 0
        reuse_current = anchor == "current"
        mismatch = algo.MismatchStats.empty(self.device)  # every token once: measured in the first epoch
        num_tokens = off_policy = 0.0
        clock = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}  # where a rank's step goes
        for epoch in range(lc.ppo_epochs):
            for mini, global_count in zip(work.micro_batches, work.denominators):
                denominator = algo.data_parallel_denominator(global_count, world_size=self.world_size)
                for rows in mini:
                    t0 = time.perf_counter()
                    micro = self._micro(work, rows)
                    lp, entropy = self._forward_logprobs(engine.module, micro, with_entropy=True)
                    old, is_weights, stats = anchor_and_correction(
                        lp, micro, self.cfg, reuse_current=reuse_current, measure=epoch == 0
                    )
                    if stats is not None:
                        mismatch = mismatch.merged(stats)
                    loss, metrics = algo.policy_loss(
                        lp,
                        old,
                        micro.advantages.to(lp),
                        micro.loss_mask.to(lp),
                        clip_ratio_low=ac.clip_ratio_low,
                        clip_ratio_high=ac.clip_ratio_high,
                        clip_ratio_c=ac.clip_ratio_c,
                        loss_agg_mode=ac.loss_agg_mode,
                        ratio_level=ac.ratio_level,
                        ref_logprobs=None if micro.ref_logprobs is None else micro.ref_logprobs.to(lp),
                        kl_coef=ac.kl_coef,
                        kl_estimator=ac.kl_estimator,
                        entropy=entropy,
                        entropy_coef=ac.entropy_coef,
                        max_response_length=self.cfg.data.max_response_length,
                        loss_scale_denominator=denominator,
                        rollout_is_weights=is_weights,
                        sample_tokens=None if micro.sample_tokens is None else micro.sample_tokens.to(lp),
                        sample_index=micro.sample_index,
                    )
                    t1 = time.perf_counter()
                    engine.backward(loss, scale_wrt_gas=False)
                    t2 = time.perf_counter()
                    clock["forward"] += t1 - t0
                    clock["backward"] += t2 - t1
                    weight = float(micro.loss_mask.sum().item())
                    if epoch == 0:
                        num_tokens += weight
                        on_policy = on_policy_tokens(micro.versions, micro.loss_mask, learner_version=self.version)
                        off_policy += weight - float(on_policy.sum().item())
                    for k, v in metrics.items():
                        if k in ("num_tokens", "num_sequences", "loss"):
                            continue  # counts, and the loss, which is summed below rather than averaged
                        totals[k] = totals.get(k, 0.0) + v * weight
                        counts[k] = counts.get(k, 0) + int(weight)
                    totals["loss"] = totals.get("loss", 0.0) + float(loss.item())
                t0 = time.perf_counter()
                engine.step()  # the mini-batch's boundary: reduce gradients, clip, update
                clock["optimizer"] += time.perf_counter() - t0
                norm = engine.get_global_grad_norm()
                norm = float(norm) if norm is not None else float("nan")
                if not math.isfinite(norm) or not math.isfinite(totals.get("loss", 0.0)):
                    num_skipped += 1  # DeepSpeed found the gradient non-finite and skipped the update
                else:
                    grad_norms.append(norm)
        self.version = step
        self.consecutive_nonfinite = self.consecutive_nonfinite + 1 if num_skipped else 0
        num_minibatches = len(work.micro_batches)
        out = {metric_names.learner_metric(k): totals[k] / max(1, counts[k]) for k in counts}
        # each rank holds world_size x its share of the loss: the group's mean over ranks is the global loss
        out[metric_names.LEARNER_LOSS] = totals.get("loss", 0.0) / (lc.ppo_epochs * num_minibatches)
        out[metric_names.LEARNER_GRAD_NORM] = sum(grad_norms) / len(grad_norms) if grad_norms else float("nan")
        out[metric_names.LEARNER_LR] = float(engine.get_lr()[0])
        out[metric_names.LEARNER_NUM_SKIPPED_UPDATES] = float(num_skipped)
        out[CONSECUTIVE_NONFINITE] = float(self.consecutive_nonfinite)
        out[LOSS_TOKENS] = num_tokens
        # tokens sampled with older weights than these ranks held (a token average: the group weighs ranks)
        out[metric_names.LEARNER_OFF_POLICY_FRAC] = off_policy / num_tokens if num_tokens else 0.0
        out.update({f"timing/learner_{k}_s": v for k, v in clock.items()})
        out.update(self._global_mismatch(mismatch))
        return out

    def _global_mismatch(self, mismatch: algo.MismatchStats) -> dict[str, float]:
        """The ``rollout_corr/*`` figures over every rank's tokens: sums all-reduced with SUM, maxima with MAX,
        so every rank returns the same exact figures (and the group's mean over ranks keeps them)."""
        import deepspeed.comm as dist

        sums, maxima = mismatch.sums.clone(), mismatch.maxima.clone()
        dist.all_reduce(sums)
        dist.all_reduce(maxima, op=dist.ReduceOp.MAX)
        return algo.MismatchStats(sums, maxima).metrics()

    # ---------------------------------------------------------------------------------------- weight sync

    def weight_plan(self) -> list[Bucket]:
        return self.sync_export.plan

    def adapter_config(self) -> dict[str, Any] | None:
        """The adapter's ``adapter_config.json`` when the engines take adapters (``model.lora.sync: adapter``)."""
        if self.sync_export.view != "adapter":
            return None
        return lora.adapter_config(self.engine.module, base_model=self.model_path)

    def init_weight_sync(
        self,
        *,
        transport: str,
        host: str = "",
        port: int = 0,
        world_size: int = 0,
        backend: str = "gloo",
        timeout_s: float = 60.0,
    ) -> bool:
        """Rank 0 joins the sync group as its root (other ranks have nothing to set up)."""
        from grpo_dist.sync import transport as t

        if self.rank != 0:
            return True
        self._sender = t.make_sender(
            transport, host=host, port=port, world_size=world_size, backend=backend, timeout_s=timeout_s
        )
        return True

    def publish_weights(self, verify: bool = True) -> tuple[list[int], Any]:
        """Send every bucket (rank 0) / help gather them (ZeRO-3); returns (checksums, receivers' handle)."""
        sums: list[int] = []
        for flat in self.sync_export.buckets():
            if flat is None:
                continue
            self._sender.send_bucket(flat)
            if verify:
                sums.append(checksum(flat))
        handle = self._sender.finish() if self._sender is not None else None
        return sums, handle

    def save_hf(self, path: str) -> str | None:
        """Write the policy in Hugging Face format from rank 0, with LoRA merged into it and the adapter
        itself in ``path/adapter`` (peft's format); all ranks must call."""
        state = self._base_export().state_dict()
        adapter = self._export("adapter").state_dict() if self.cfg.model.lora.enabled else None
        if state is None:
            return None
        adapter_cfg = lora.adapter_config(self.engine.module, base_model=self.model_path) if adapter else None
        base = self._base_module()
        write_hf(path, base, state, tokenizer_from=self.model_path, adapter=adapter, adapter_config=adapter_cfg)
        return path

    def save_checkpoint(self, path: str) -> bool:
        """This rank's DeepSpeed state (model, optimizer, LR scheduler); every rank must call."""
        # with LoRA the frozen base is the model the run started from: only the adapters are state
        self.engine.save_checkpoint(
            path, tag="state", save_latest=False, exclude_frozen_parameters=self.cfg.model.lora.enabled
        )
        return True

    def load_checkpoint(self, path: str, version: int, consecutive_nonfinite: int) -> bool:
        """Restore the state ``save_checkpoint`` wrote (a checkpoint the driver has verified)."""
        load_path, _ = self.engine.load_checkpoint(
            path,
            tag="state",
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
            load_module_strict=not self.cfg.model.lora.enabled,  # (the base is not in it)
        )
        if load_path is None:
            raise RuntimeError(f"learner rank {self.rank}: DeepSpeed found no state under {path}")
        self.version = version
        self.consecutive_nonfinite = consecutive_nonfinite
        return True

    def info(self) -> dict[str, Any]:
        return {"rank": self.rank, "pid": os.getpid(), "version": self.version}


def _resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, name)
