"""``WeightExport``: the tensors a learner rank hands out (to the engines, to an HF export), in buckets.

A view (``grpo_dist.learner.lora``: ``full``, ``merged`` or ``adapter``) fixes which tensors leave the
rank and under which names; the bucket plan (``grpo_dist.sync.plan``) cuts them into flat tensors of one
dtype. Under ZeRO-3 a parameter lives in shards on every rank, so producing a bucket is a collective:
every rank iterates ``buckets()`` together, each bucket's sources are gathered for the time it takes to
compute it, and rank 0 gets the flat tensor (None elsewhere). Never more than one bucket is gathered.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import torch

from grpo_dist.learner.lora import ADAPTER_DIR, Export, ExportView, export_table, materialize
from grpo_dist.sync.plan import Bucket, ParamMeta, make_buckets


def param_metas(module: torch.nn.Module) -> list[ParamMeta]:
    """Name, full shape and dtype of every parameter of ``module`` (ZeRO-3 shards keep the full shape in
    ``ds_shape``)."""
    metas = []
    for name, p in module.named_parameters():
        shape = tuple(getattr(p, "ds_shape", p.shape))
        metas.append(ParamMeta(name, tuple(int(s) for s in shape), str(p.dtype).removeprefix("torch.")))
    return metas


class WeightExport:
    def __init__(
        self,
        module: torch.nn.Module,
        view: ExportView,
        *,
        rank: int,
        zero3: bool,
        bucket_bytes: int,
        scales: dict[str, float] | None = None,
    ) -> None:
        """``scales``: ``alpha / r`` per adapted layer (``lora.layer_scales``), needed by ``merged``."""
        self.module = module
        self.view = view
        self.rank = rank
        self.zero3 = zero3
        self.table: list[Export] = export_table(param_metas(module), view, scales or {})
        self.plan: list[Bucket] = make_buckets([e.meta for e in self.table], bucket_bytes)
        self._per_bucket: list[list[Export]] = []
        i = 0
        for bucket in self.plan:
            self._per_bucket.append(self.table[i : i + len(bucket.params)])
            i += len(bucket.params)

    @property
    def num_bytes(self) -> int:
        return sum(b.nbytes for b in self.plan)

    @property
    def num_params(self) -> int:
        return sum(b.numel for b in self.plan)

    def buckets(self) -> Iterator[torch.Tensor | None]:
        """Each bucket's flat tensor on rank 0 (None elsewhere), in plan order; every rank must iterate."""
        named = dict(self.module.named_parameters())
        for bucket, exports in zip(self.plan, self._per_bucket):
            sources = [named[s] for e in exports for s in e.sources]
            ctx: Any = contextlib.nullcontext()
            if self.zero3:
                import deepspeed

                ctx = deepspeed.zero.GatheredParameters(sources, modifier_rank=None)
            with ctx, torch.no_grad():
                if self.rank != 0:
                    yield None
                    continue
                parts = [materialize(e, [named[s].data for s in e.sources]) for e in exports]
                yield torch.cat([t.reshape(-1).to(bucket.dtype) for t in parts])

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """Every exported tensor by its exported name, on the CPU (rank 0; None elsewhere); all ranks call."""
        state: dict[str, torch.Tensor] = {}
        for bucket, flat in zip(self.plan, self.buckets()):
            if flat is not None:
                state.update({k: v.clone() for k, v in bucket.split(flat.cpu())})
        return state if self.rank == 0 else None


def write_hf(
    path: str,
    model: Any,
    state: dict[str, torch.Tensor],
    *,
    tokenizer_from: str,
    adapter: dict[str, torch.Tensor] | None = None,
    adapter_config: dict[str, Any] | None = None,
) -> None:
    """An HF model directory at ``path`` that transformers and vLLM load: ``model``'s config and generation
    config, ``state`` (the whole model, exported names) as safetensors laid out as ``save_pretrained`` would,
    the tokenizer of ``tokenizer_from``; and, given an ``adapter``, that adapter in peft's format in
    ``path/adapter`` (``adapter_model.safetensors`` + ``adapter_config.json``)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from grpo_dist.models.layout import CheckpointLayout

    os.makedirs(path, exist_ok=True)
    state = CheckpointLayout(model.config).state_dict(state)
    model.config.save_pretrained(path)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(path)
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(path)
    if adapter is not None:
        assert adapter_config is not None
        save_adapter(os.path.join(path, ADAPTER_DIR), adapter, adapter_config)


def save_adapter(path: str, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """A LoRA adapter in peft's on-disk format, which ``PeftModel.from_pretrained`` and vLLM's
    ``LoRARequest`` load: its tensors under peft's saved names and its ``adapter_config.json``."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(path, "adapter_model.safetensors"))
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
