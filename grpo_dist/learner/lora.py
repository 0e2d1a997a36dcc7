"""LoRA in the learner: which tensors a rank exports, under which names, and how each is computed.

With LoRA on, the learner's module is a peft ``PeftModel``: every targeted linear layer holds its frozen
``base_layer`` and two small trainable matrices ``A [r, in]`` and ``B [out, r]``, and computes
``x @ (W0 + s * B @ A).T`` with ``s = alpha / r`` (``alpha / sqrt(r)`` under rsLoRA). Its parameters carry peft's names
(``base_model.model.<name>`` and ``<layer>.base_layer.weight``, ``<layer>.lora_A.default.weight``). Three
things leave a rank, and each wants other tensors under other names:

- ``full``: every parameter as itself (no LoRA: today's full-weight sync);
- ``merged``: the model a plain transformers or vLLM loader expects, under the base model's own names,
  each adapted layer's weight computed out of place as ``W0 + s * B @ A`` in float32. The learner's
  ``W0`` is never written: peft's in-place ``merge``/``unmerge`` round-trips through the weight's dtype,
  and a bf16 base drifts a little at every sync;
- ``adapter``: only the ``A``/``B`` matrices, under the names of peft's saved adapter file
  (``base_model.model.<layer>.lora_A.weight``): what vLLM's LoRA loader and ``PeftModel.from_pretrained``
  read.

``export_table`` turns a description of the module's parameters into that list; ``materialize`` computes
one entry from its gathered sources. Both are pure (torch only), so the mapping is unit-tested without
DeepSpeed or peft.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from grpo_dist.config.sections import VLLM_LORA_RANKS, vllm_max_lora_rank
from grpo_dist.sync.plan import ParamMeta

if TYPE_CHECKING:
    from grpo_dist.config.sections import LoraConfig

ExportView = Literal["full", "merged", "adapter"]
ADAPTER = "default"
"""peft's name for the one adapter a model holds."""
PEFT_PREFIX = "base_model.model."
ADAPTER_DIR = "adapter"
"""Where an HF export keeps the adapter, beside the merged model (neither loader looks into subfolders)."""
_A, _B, _BASE = f".lora_A.{ADAPTER}.weight", f".lora_B.{ADAPTER}.weight", ".base_layer.weight"

__all__ = ["VLLM_LORA_RANKS", "Export", "ExportView", "export_table", "materialize", "vllm_max_lora_rank", "wrap"]


@dataclass(frozen=True)
class Export:
    """One tensor a rank exports: ``meta`` as the receiver knows it (name, full shape, dtype), computed from
    the module parameters ``sources``: one (the parameter itself) or three (``W0``, ``A``, ``B``, merged
    with ``scale``)."""

    meta: ParamMeta
    sources: tuple[str, ...]
    scale: float = 0.0


def export_table(params: Sequence[ParamMeta], view: ExportView, scales: Mapping[str, float]) -> list[Export]:
    """The exports of ``view`` over the module parameters ``params`` (peft's names when LoRA is on, in module
    order); ``scales`` maps each adapted layer (its name without the parameter suffix) to ``alpha / r``."""
    if view == "full":
        return [Export(p, (p.name,)) for p in params]
    by_name = {p.name: p for p in params}
    out: list[Export] = []
    for p in params:
        name = p.name
        if view == "adapter":
            if name.endswith((_A, _B)):
                out.append(Export(ParamMeta(_adapter_name(name), p.shape, p.dtype), (name,)))
            continue
        if name.endswith((_A, _B)):
            continue  # folded into their layer's weight
        if name.endswith(_BASE):
            layer = name.removesuffix(_BASE)
            a, b = by_name[layer + _A], by_name[layer + _B]
            merged = ParamMeta(_base_name(layer + ".weight"), p.shape, p.dtype)
            out.append(Export(merged, (name, a.name, b.name), scales[layer]))
        else:
            out.append(Export(ParamMeta(_base_name(name.replace(".base_layer.", ".")), p.shape, p.dtype), (name,)))
    if view == "adapter" and not out:
        raise ValueError("the adapter view of a model without LoRA layers is empty")
    return out


def materialize(export: Export, sources: Sequence[torch.Tensor]) -> torch.Tensor:
    """``export``'s tensor from its gathered ``sources``: the parameter itself, or ``W0 + s * B @ A``
    computed in float32 into a new tensor of ``W0``'s dtype (``W0`` is only read)."""
    if len(sources) == 1:
        return sources[0]
    w0, a, b = sources  # [out, in], [r, in], [out, r]
    delta = (b.float() @ a.float()) * export.scale
    return (w0.float() + delta).to(w0.dtype)


def _base_name(name: str) -> str:
    return name.removeprefix(PEFT_PREFIX)


def _adapter_name(name: str) -> str:
    """``base_model.model.<layer>.lora_A.default.weight`` -> ``base_model.model.<layer>.lora_A.weight``."""
    return name.replace(f".{ADAPTER}.", ".")


def peft_config(lora: LoraConfig) -> Any:
    """The peft ``LoraConfig`` of ``model.lora`` (a causal LM; the output layer is never targeted)."""
    import peft

    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    return peft.LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        use_rslora=lora.use_rslora,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )


def wrap(model: torch.nn.Module, lora: LoraConfig) -> torch.nn.Module:
    """``model`` with LoRA adapters (peft), the base frozen; refuses a target list that matches nothing."""
    import peft
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    try:
        wrapped = peft.get_peft_model(model, peft_config(lora))
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        raise ValueError(f"model.lora.target_modules = {lora.target_modules!r}: {exc}") from exc
    for name, module in wrapped.named_modules():
        # the merge and the engines' adapters assume y = x @ (W0 + s * B @ A).T over a plain nn.Linear
        plain = isinstance(module, LoraLinear) and isinstance(module.base_layer, torch.nn.Linear)
        if isinstance(module, LoraLayer) and not (plain and not module.fan_in_fan_out):
            raise ValueError(
                f"model.lora.target_modules = {lora.target_modules!r} reaches {name.removeprefix(PEFT_PREFIX)} "
                f"({type(module.base_layer).__name__}): only torch.nn.Linear layers can carry adapters here"
            )
    return wrapped


def layer_scales(model: torch.nn.Module) -> dict[str, float]:
    """The scale ``s`` of every adapted layer of a peft model (``alpha / r``, or ``alpha / sqrt(r)`` under
    rsLoRA: peft's own), keyed by the layer's parameter-name prefix."""
    from peft.tuners.lora import LoraLayer

    return {name: float(m.scaling[ADAPTER]) for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def adapter_config(model: torch.nn.Module, *, base_model: str) -> dict[str, Any]:
    """The ``adapter_config.json`` of a peft model's adapter, with its targets resolved (``all-linear``
    becomes the layer names): what vLLM and ``PeftModel.from_pretrained`` read beside the tensors."""
    import json

    config = model.peft_config[ADAPTER]
    config.base_model_name_or_path = base_model
    # through JSON: sets (the resolved targets) become sorted lists, enums their values
    return json.loads(json.dumps(config.to_dict(), default=lambda v: sorted(v) if isinstance(v, set) else str(v)))
