"""Per-sample sampling seeds.

A completion's seed is a hash of (run seed, stream, step, prompt id, sample index), so a retried,
rebalanced or resumed rollout samples exactly the same tokens, whichever engine runs it and in
whatever order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def _hashed(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1  # < 2**63


def sample_seed(run_seed: int, stream: str, step: int, prompt_id: int, sample_index: int) -> int:
    return _hashed(f"{run_seed}/{stream}/{step}/{prompt_id}/{sample_index}")


def occurrences(prompt_ids: Iterable[int]) -> list[int]:
    """For each prompt of a batch, how many times its id came earlier in the batch (0 the first time)."""
    seen: dict[int, int] = {}
    out = []
    for pid in prompt_ids:
        out.append(seen.get(pid, 0))
        seen[pid] = out[-1] + 1
    return out


def occurrence_stream(stream: str, occurrence: int) -> str:
    """The seed stream of a prompt's ``occurrence``-th repeat in one batch, so repeats sample differently."""
    return stream if occurrence == 0 else f"{stream}#{occurrence}"


def segment_stream(stream: str, segment: int) -> str:
    """The seed stream of a partial rollout's ``segment``-th continuation (the first segment samples as a
    whole rollout would), so a continuation does not replay the random draws of the segment before."""
    return stream if segment == 0 else f"{stream}@{segment}"


def derived_seed(seed: int, purpose: str) -> int:
    """A seed for another random source of the same sample (its environment), independent of ``seed``'s."""
    return _hashed(f"{seed}/{purpose}")
