"""Weight transports: how flat buckets get from learner rank 0 into every rollout engine.

A transport has a sending half (on learner rank 0) and a receiving half (in each engine); both follow
the same bucket plan (``grpo_dist.sync.plan``). Two implementations:

- ``broadcast``: one collective broadcast per bucket from rank 0 over a dedicated process group
  (learner rank 0 + all engines) with its own TCPStore rendezvous, beside DeepSpeed's default group;
  gloo on CPU, nccl on GPU. Every collective carries the group's timeout, so a stalled peer surfaces
  as an error, never a hang.
- ``object_store``: rank 0 puts each bucket into Ray's object store as a numpy array (zero-copy reads);
  engines fetch them. Slower, but needs no extra process group: the fallback.

``make_sender`` / ``make_receiver`` switch on the config's name and reject anything else.
"""

from __future__ import annotations

import datetime
from abc import ABC, abstractmethod
from typing import Any

import torch

TRANSPORTS = ("broadcast", "object_store")


class WeightSender(ABC):
    """Learner rank 0's half: called once per bucket, in plan order."""

    @abstractmethod
    def send_bucket(self, flat: torch.Tensor) -> None: ...

    def finish(self) -> Any:
        """What the receivers need to fetch this sync's buckets (None when they arrive by collective)."""
        return None


class WeightReceiver(ABC):
    """An engine's half: returns bucket ``index`` of the plan as a flat tensor."""

    @abstractmethod
    def receive_bucket(self, index: int, numel: int, dtype: torch.dtype, handle: Any) -> torch.Tensor: ...


# ---------------------------------------------------------------------------------------------------- broadcast


def init_broadcast_group(
    *, host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float
) -> torch.distributed.ProcessGroup:
    """Join the weight-sync group: rank 0 (learner) hosts the store, engines are ranks 1..N.

    A process that is already a DeepSpeed rank cannot join a second default group, so this group is
    built directly on its own store and never touches ``torch.distributed``'s global state.
    """
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=False)
    prefixed = dist.PrefixStore("grpo_dist_weight_sync", store)
    if backend == "gloo":
        return dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(prefixed, rank, world_size, opts)
    raise ValueError(f"sync backend {backend!r}: expected 'gloo' or 'nccl'")


def _broadcast(group: Any, tensor: torch.Tensor) -> None:
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([tensor], opts).wait()


class BroadcastSender(WeightSender):
    def __init__(self, group: Any) -> None:
        self.group = group

    def send_bucket(self, flat: torch.Tensor) -> None:
        _broadcast(self.group, flat.contiguous())


class BroadcastReceiver(WeightReceiver):
    def __init__(self, group: Any, device: torch.device) -> None:
        self.group = group
        self.device = device

    def receive_bucket(self, index: int, numel: int, dtype: torch.dtype, handle: Any) -> torch.Tensor:
        # A fresh buffer per bucket: vLLM may hold on to loaded tensors until a layer is complete.
        flat = torch.empty(numel, dtype=dtype, device=self.device)
        _broadcast(self.group, flat)
        return flat


# ------------------------------------------------------------------------------------------------- object store


class ObjectStoreSender(WeightSender):
    def __init__(self) -> None:
        self.refs: list[Any] = []

    def send_bucket(self, flat: torch.Tensor) -> None:
        import ray

        # numpy, not torch: Ray serialises numpy zero-copy (about 5x faster than tensors here).
        array = flat.detach().cpu().contiguous()
        if array.dtype == torch.bfloat16:  # numpy has no bfloat16: ship the raw bits
            array = array.view(torch.int16)
        self.refs.append(ray.put(array.numpy()))

    def finish(self) -> list[Any]:
        refs, self.refs = self.refs, []
        return refs


class ObjectStoreReceiver(WeightReceiver):
    def __init__(self, device: torch.device, timeout_s: float) -> None:
        self.device = device
        self.timeout_s = timeout_s

    def receive_bucket(self, index: int, numel: int, dtype: torch.dtype, handle: Any) -> torch.Tensor:
        import ray

        array = ray.get(handle[index], timeout=self.timeout_s)
        flat = torch.from_numpy(array.copy())  # the store's buffer is read-only
        if dtype == torch.bfloat16:
            flat = flat.view(torch.bfloat16)
        assert flat.numel() == numel, (flat.numel(), numel)
        return flat.to(self.device)


# ------------------------------------------------------------------------------------------------- factories


def check_transport(name: str) -> None:
    if name not in TRANSPORTS:
        raise ValueError(f"sync.transport = {name!r}: expected one of {', '.join(TRANSPORTS)}")


def make_sender(
    transport: str, *, host: str, port: int, world_size: int, backend: str, timeout_s: float
) -> WeightSender:
    """Learner rank 0's half of ``transport`` (``broadcast``: it hosts the sync group as its rank 0)."""
    check_transport(transport)
    if transport == "broadcast":
        group = init_broadcast_group(
            host=host, port=port, rank=0, world_size=world_size, backend=backend, timeout_s=timeout_s
        )
        return BroadcastSender(group)
    return ObjectStoreSender()


def make_receiver(
    transport: str,
    *,
    device: torch.device,
    host: str,
    port: int,
    rank: int,
    world_size: int,
    backend: str,
    timeout_s: float,
) -> WeightReceiver:
    """An engine's half of ``transport`` (``broadcast``: it joins the sync group as ``rank``)."""
    check_transport(transport)
    if transport == "broadcast":
        group = init_broadcast_group(
            host=host, port=port, rank=rank, world_size=world_size, backend=backend, timeout_s=timeout_s
        )
        return BroadcastReceiver(group, device)
    return ObjectStoreReceiver(device, timeout_s)
