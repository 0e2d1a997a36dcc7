"""A stand-in for a DeepSpeed engine around a tiny LM, for unit tests of the learner's loss logic: backward
accumulates plain gradients and ``step`` applies nothing, so a test reads the gradient a step would use."""

from __future__ import annotations

import torch


class TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(7, 4)
        self.head = torch.nn.Linear(4, 7)

    def forward(self, input_ids: torch.Tensor, **_: object) -> object:  # no attention: packed == padded
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.head(self.emb(input_ids)))


class FakeEngine:
    """The parts of a DeepSpeed engine ``train()`` uses; backward accumulates plain gradients, no update."""

    def __init__(self) -> None:
        self.module = TinyLM()

    def __call__(self, **kwargs: torch.Tensor) -> object:
        return self.module(**kwargs)

    def train(self) -> None:
        self.module.train()

    def backward(self, loss: torch.Tensor, scale_wrt_gas: bool = False) -> None:
        loss.backward()

    def step(self) -> None:
        pass

    def get_global_grad_norm(self) -> float:
        return 1.0

    def get_lr(self) -> list[float]:
        return [1e-5]
