"""Which prompts each training step uses: an epoch-based, resumable stream of prompt indices.

Why not a ``DataLoader``: the driver needs plain indices (prompts are already tokenized in memory), a
state that is two integers (so a checkpoint resumes on exactly the next prompt, none skipped or repeated),
and draws of any size (dynamic sampling asks for "n more" mid-step).

The stream is the concatenation of epoch 0's order, epoch 1's order, ... where epoch ``e``'s order is a
permutation of ``range(num_prompts)`` that depends only on ``(seed, e)`` (the identity when
``shuffle=False``). Consequently a draw that reaches the end of an epoch takes its rest and continues with
the next epoch's order, and a draw larger than the dataset spans several epochs and then holds some
prompts more than once. That is allowed rather than rejected: a small dataset with a large batch is a
legitimate (if unusual) setup, and every prompt still appears exactly once per epoch of the stream.

The permutation comes from NumPy's ``Generator`` (PCG64 seeded through ``SeedSequence([seed, epoch])``).
NumPy does not promise that ``Generator.permutation`` stays the same across releases, so the state dict
stores a digest of the current epoch's order and ``load_state_dict`` refuses to resume if it no longer
matches, instead of silently training on a different order.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

__all__ = ["PromptCursor"]

_STATE_VERSION = 1


class PromptCursor:
    """Deterministic, resumable stream of indices into a list of ``num_prompts`` prompts.

    ``epoch`` and ``position`` point at the next index to be drawn: after a draw that ends exactly at an
    epoch's end they are ``(epoch + 1, 0)``. ``consumed`` counts every index drawn so far.
    """

    def __init__(self, num_prompts: int, *, batch_size: int, seed: int, shuffle: bool = True) -> None:
        for name, value in (("num_prompts", num_prompts), ("batch_size", batch_size), ("seed", seed)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if num_prompts < 1:
            raise ValueError(f"num_prompts = {num_prompts}: the cursor needs at least one prompt")
        if batch_size < 1:
            raise ValueError(f"batch_size = {batch_size}: must be >= 1")
        self._num_prompts = num_prompts
        self._batch_size = batch_size
        self._seed = seed
        self._shuffle = bool(shuffle)
        self._epoch = 0
        self._position = 0
        self._cached_epoch = -1
        self._cached_order: np.ndarray = np.empty(0, dtype=np.int64)

    # ---------------------------------------------------------------------------------------------------
    # Properties
    # ---------------------------------------------------------------------------------------------------

    @property
    def num_prompts(self) -> int:
        return self._num_prompts

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def shuffle(self) -> bool:
        return self._shuffle

    @property
    def epoch(self) -> int:
        """The epoch the next drawn index belongs to."""
        return self._epoch

    @property
    def position(self) -> int:
        """How many indices of the current epoch have been drawn."""
        return self._position

    @property
    def consumed(self) -> int:
        return self._epoch * self._num_prompts + self._position

    def __repr__(self) -> str:
        return (
            f"PromptCursor(num_prompts={self._num_prompts}, batch_size={self._batch_size}, seed={self._seed}, "
            f"shuffle={self._shuffle}, epoch={self._epoch}, position={self._position})"
        )

    # ---------------------------------------------------------------------------------------------------
    # Order
    # ---------------------------------------------------------------------------------------------------

    def order(self, epoch: int) -> list[int]:
        """Epoch ``epoch``'s order of all prompt indices (for inspection and tests; draws use ``take``)."""
        if epoch < 0:
            raise ValueError(f"epoch = {epoch}: must be >= 0")
        return self._order(epoch).tolist()

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._cached_epoch:
            if self._shuffle:
                # SeedSequence entropy must be non-negative; zig-zag keeps distinct seeds distinct.
                entropy = 2 * self._seed if self._seed >= 0 else -2 * self._seed - 1
                rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([entropy, epoch])))
                self._cached_order = rng.permutation(self._num_prompts).astype(np.int64)
            else:
                self._cached_order = np.arange(self._num_prompts, dtype=np.int64)
            self._cached_epoch = epoch
        return self._cached_order

    def _digest(self, epoch: int) -> str:
        data = self._order(epoch).astype("<i8").tobytes()
        return hashlib.blake2b(data, digest_size=8).hexdigest()

    # ---------------------------------------------------------------------------------------------------
    # Draws
    # ---------------------------------------------------------------------------------------------------

    def take(self, n: int) -> list[int]:
        """Draw the next ``n`` indices (crossing epochs as needed); ``n = 0`` draws nothing."""
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(f"n must be an int, got {type(n).__name__}")
        if n < 0:
            raise ValueError(f"n = {n}: cannot draw a negative number of prompts")
        out: list[int] = []
        while n > 0:
            order = self._order(self._epoch)
            k = min(n, self._num_prompts - self._position)
            out.extend(order[self._position : self._position + k].tolist())
            self._position += k
            n -= k
            if self._position == self._num_prompts:
                self._epoch += 1
                self._position = 0
        return out

    def next_batch(self) -> list[int]:
        """The next ``batch_size`` indices."""
        return self.take(self._batch_size)

    # ---------------------------------------------------------------------------------------------------
    # Checkpointing
    # ---------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain ints / str / bool (JSON-safe). ``batch_size`` is not part of it: it may change on resume."""
        return {
            "version": _STATE_VERSION,
            "epoch": self._epoch,
            "position": self._position,
            "num_prompts": self._num_prompts,
            "seed": self._seed,
            "shuffle": self._shuffle,
            "order_digest": self._digest(self._epoch),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state``; refuses a state whose dataset size, seed, shuffle or order differ from this
        cursor's, since resuming would then draw different prompts than the original run."""
        missing = [k for k in ("epoch", "position", "num_prompts", "seed", "shuffle") if k not in state]
        if missing:
            raise ValueError(f"prompt cursor state is missing {missing} (got keys {sorted(state)})")
        version = state.get("version", _STATE_VERSION)
        if version != _STATE_VERSION:
            raise ValueError(f"prompt cursor state version {version!r}: this build reads version {_STATE_VERSION}")
        for key, now in (("num_prompts", self._num_prompts), ("seed", self._seed), ("shuffle", self._shuffle)):
            if state[key] != now:
                raise ValueError(
                    f"prompt cursor state has {key} = {state[key]!r} but this run has {now!r}; resuming would "
                    "draw different prompts than the checkpointed run (same data files, data config and "
                    "trainer.seed are needed)"
                )
        epoch, position = state["epoch"], state["position"]
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"prompt cursor state epoch = {epoch!r}: expected an int >= 0")
        if not isinstance(position, int) or isinstance(position, bool) or not 0 <= position <= self._num_prompts:
            raise ValueError(f"prompt cursor state position = {position!r}: expected an int in 0..{self._num_prompts}")
        digest = state.get("order_digest")
        if digest is not None and digest != self._digest(epoch):
            raise ValueError(
                f"prompt cursor state: epoch {epoch}'s prompt order differs from the checkpointed run's (same "
                "seed and dataset size, so the shuffling itself changed, e.g. a different NumPy); resuming would "
                "skip and repeat prompts"
            )
        if position == self._num_prompts:  # an un-normalised end of epoch: same point in the stream
            epoch, position = epoch + 1, 0
        self._epoch, self._position = epoch, position
