"""The weight transports are built by one factory per half, which refuses a name it does not know."""

from __future__ import annotations

import pytest
import torch

from grpo_dist.sync import transport as t

GROUP = {"host": "127.0.0.1", "port": 0, "world_size": 2, "backend": "gloo", "timeout_s": 5.0}


def test_object_store_halves() -> None:
    assert isinstance(t.make_sender("object_store", **GROUP), t.ObjectStoreSender)
    receiver = t.make_receiver("object_store", device=torch.device("cpu"), rank=1, **GROUP)
    assert isinstance(receiver, t.ObjectStoreReceiver) and receiver.timeout_s == 5.0


@pytest.mark.parametrize("name", ["nccl", "", "Broadcast"])
def test_unknown_transport_is_refused_naming_the_field(name: str) -> None:
    with pytest.raises(ValueError, match=rf"sync.transport = {name!r}: expected one of broadcast, object_store"):
        t.make_sender(name, **GROUP)
    with pytest.raises(ValueError, match=r"sync\.transport"):
        t.make_receiver(name, device=torch.device("cpu"), rank=1, **GROUP)
