"""Layouts that vLLM's in-place weight reload leaves stale, and the step that re-derives each of them.

vLLM's ``reload_weights`` materialises each layer in checkpoint layout, loads the new weights into it,
re-runs the layer's weight processing and copies the result into the layer's original storage. Some
processing steps are skipped on a reload, so the copy lands in a kernel layout it no longer matches.
Each function here runs inside a vLLM worker (``LLM.apply_model``) right after a reload, exactly once,
and returns the names of the layers it fixed. None imports vLLM: layers are recognised by what they hold.

- ``refresh_tied_layers``: a tied LM head receives no weights of its own (see its docstring).
- ``repack_cpu_moe_experts``: on CPU, the unquantized fused-MoE kernel reads expert weights prepacked
  into its grouped-GEMM layout. The first load prepacks them; a reload re-runs the method's processing,
  which skips the experts' own step once a kernel exists (``UnquantizedFusedMoEMethod._setup_kernel``:
  ``if not is_weight_update: ... fused_experts.process_weights_after_loading(layer)``), so the storage
  then holds the new weights in plain ``[E, N, K]`` layout that the kernel reads as if prepacked. Measured
  on a tiny Qwen3-MoE: logprob error 6.5 after one reload, 3e-6 with the repack.
"""

from __future__ import annotations

import torch


def _cpu_moe_experts(module: torch.nn.Module) -> object | None:
    """The CPU unquantized experts object of a fused-MoE layer, or None for any other layer."""
    method = getattr(module, "quant_method", None)
    if method is None or not type(method).__name__.startswith("Unquantized"):
        return None
    experts = getattr(getattr(method, "moe_kernel", None), "fused_experts", None)
    if experts is None or not type(experts).__module__.endswith(".cpu_moe"):
        return None
    # quantized CPU experts (int8, fp8, ...) have their own classes; only the plain one is re-derivable here
    if not any(c.__name__ == "CPUUnquantizedExperts" for c in type(experts).__mro__):
        return None
    return experts


def repack_cpu_moe_experts(model: torch.nn.Module) -> list[str]:
    """Prepack every CPU fused-MoE layer's expert weights again after an in-place reload (see the module
    docstring). Not idempotent: it must follow each ``reload_weights`` exactly once."""
    repacked = []
    for name, module in model.named_modules():
        experts = _cpu_moe_experts(module)
        if experts is None or getattr(experts, "_use_zentorch", False):
            continue  # the zentorch kernel reads plain weights: nothing to re-derive
        with torch.no_grad():
            experts.process_weights_after_loading(module)  # type: ignore[attr-defined]
        repacked.append(name)
    return repacked


def refresh_tied_layers(model: torch.nn.Module) -> list[str]:
    """Re-derive the kernel-format copies of layers whose weights are all tied to another layer's.

    vLLM's in-place reload (``reload_weights``) re-runs a layer's weight processing once every weight of
    that layer has arrived. A tied layer receives none: a checkpoint of a model with tied embeddings
    holds ``embed_tokens.weight`` only, and the model's loader skips ``lm_head.weight``. The shared
    parameter itself is updated through the embedding, but on CPU the LM head's processing made a derived
    copy for the CPU GEMM kernels (a repacked or oneDNN-reordered weight held by ``layer.cpu_linear``),
    and vLLM restores the layer as it was ("ParallelLMHead: Failed to load weights"): the engine then
    samples from the new body with the *initial* output layer. Re-running the layer's (unquantized)
    processing rebuilds that copy from the updated parameter; on GPU the same processing is a no-op.

    Runs inside each vLLM worker (``LLM.apply_model``); returns the names of the layers refreshed.
    """
    seen: set[int] = set()
    refreshed = []
    for name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        tied = bool(own) and all(id(p) in seen for _, p in own)
        seen.update(id(p) for _, p in own)
        method = getattr(module, "quant_method", None)
        # quantized layers' processing is not idempotent (it would quantize twice): only re-derive plain ones
        if tied and method is not None and type(method).__name__.startswith("Unquantized"):
            with torch.no_grad():
                method.process_weights_after_loading(module)
            refreshed.append(name)
    return refreshed


def rederive_after_reload(model: torch.nn.Module) -> dict[str, list[str]]:
    """Everything above, in order, once after each in-place reload (run through ``LLM.apply_model``);
    returns the layers each step re-derived."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    return {
        "tied": refresh_tied_layers(model),
        "cpu_moe": repack_cpu_moe_experts(model) if on_cpu else [],
    }
