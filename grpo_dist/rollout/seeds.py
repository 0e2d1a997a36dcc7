"""Per-sample sampling seeds.

A completion's seed is a hash of (run seed, stream, step, prompt id, sample index), so a retried,
rebalanced or resumed rollout samples exactly the same tokens, whichever engine runs it and in
whatever order.
"""

from __future__ import annotations

import hashlib


def sample_seed(run_seed: int, stream: str, step: int, prompt_id: int, sample_index: int) -> int:
    key = f"{run_seed}/{stream}/{step}/{prompt_id}/{sample_index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1  # < 2**63
