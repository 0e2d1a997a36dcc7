"""transformers' in-memory parameter layout, turned back into its checkpoint layout.

Since transformers 5 a model's parameters need not be its checkpoint's tensors: a load-time conversion
may rename or fuse them, and ``save_pretrained`` applies the inverse. Mixture-of-experts models are the
common case: Mixtral's checkpoint holds ``block_sparse_moe.experts.{e}.w1/w2/w3.weight`` per expert, its
module ``mlp.experts.gate_up_proj`` ``[E, 2I, H]`` and ``mlp.experts.down_proj`` ``[E, H, I]``. Anything
that reads ``named_parameters()`` (the learner's weight sync, an export written from them) therefore
speaks the in-memory layout, which vLLM's loaders need not accept (its Mixtral loader does not).

``CheckpointLayout`` applies transformers' own save-time inverse (``revert_weight_conversion``), built
from the model's config alone (a skeleton on the meta device: no weights are allocated), so it can run
where the model is not loaded (a rollout engine) and gives the same result however the model was loaded.
``convert`` works tensor by tensor, so a sync can apply it bucket by bucket.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch


class CheckpointLayout:
    """Maps ``(name, tensor)`` pairs of a model's parameters to the tensors its checkpoint would hold."""

    def __init__(self, config: Any) -> None:  # config: a transformers PretrainedConfig
        from transformers import AutoModelForCausalLM
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter

        with torch.device("meta"):
            self._skeleton = AutoModelForCausalLM.from_config(config)
        conversions = get_model_conversion_mapping(self._skeleton, add_legacy=False)
        self.identity = not conversions
        for c in conversions:
            reverse = c.reverse_transform()
            if isinstance(reverse, WeightConverter) and len(reverse.source_patterns) > 1:
                # the inverse would need several parameters at once: not expressible tensor by tensor
                raise ValueError(
                    f"{type(self._skeleton).__name__}: the checkpoint tensor(s) {reverse.target_patterns} are built "
                    f"from several parameters {reverse.source_patterns}; per-tensor conversion is not possible"
                )

    def convert(self, named: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """Each parameter as the checkpoint tensor(s) it stands for (the pair itself where nothing changes)."""
        if self.identity:
            yield from named
            return
        from transformers.core_model_loading import revert_weight_conversion

        for name, tensor in named:
            yield from revert_weight_conversion(self._skeleton, {name: tensor}).items()

    def state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A whole state dict in checkpoint layout (what ``save_pretrained`` would write)."""
        return dict(self.convert(state.items()))
