"""How weights are cut into buckets for transport (pure: no torch.distributed, no Ray).

The learner describes its parameters once (name, full shape, dtype); both ends derive the same bucket
plan from that description, so a sync only moves flat tensors and never per-parameter messages.
A bucket holds consecutive parameters of one dtype up to ``bucket_bytes``; a parameter larger than the
limit travels alone.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ParamMeta:
    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name, e.g. "float32"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def nbytes(self) -> int:
        return self.numel * self.torch_dtype.itemsize


@dataclass(frozen=True)
class Bucket:
    params: tuple[ParamMeta, ...]

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].torch_dtype

    @property
    def numel(self) -> int:
        return sum(p.numel for p in self.params)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.params)

    def split(self, flat: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, view)`` of each parameter inside the flat bucket tensor ``[numel]``."""
        assert flat.numel() == self.numel and flat.dtype == self.dtype
        offset = 0
        for p in self.params:
            yield p.name, flat[offset : offset + p.numel].view(p.shape)
            offset += p.numel


def make_buckets(params: Sequence[ParamMeta], bucket_bytes: int) -> list[Bucket]:
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes={bucket_bytes}: must be > 0")
    buckets: list[Bucket] = []
    current: list[ParamMeta] = []
    size = 0
    for p in params:
        if current and (p.dtype != current[0].dtype or size + p.nbytes > bucket_bytes):
            buckets.append(Bucket(tuple(current)))
            current, size = [], 0
        current.append(p)
        size += p.nbytes
    if current:
        buckets.append(Bucket(tuple(current)))
    return buckets


def checksum(flat: torch.Tensor) -> int:
    """CRC32 of a tensor's bytes: proves that what arrived is bit-for-bit what was sent."""
    data = flat.detach().contiguous().cpu().view(torch.uint8).numpy()
    return zlib.crc32(memoryview(data))
