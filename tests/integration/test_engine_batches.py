"""Rollout engines on batches shaped like a user's: many distinct, long, seeded prompts.

A batch of 8 prompts x 8 samples with chat-length prompts overflows vLLM's per-step token budget, so the
scheduler would split some prefills across steps; on CPU that crashed the engine when the request carried
its own seed (every grpo-dist request does). The engine must sample the whole batch, and the per-sample
seeds must still make it reproducible.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

pytestmark = pytest.mark.slow

NUM_PROMPTS = 64
PROMPT_TOKENS = 130


@pytest.fixture(scope="module")
def engine(local_ray: None, tiny_assets: dict[str, str]) -> Any:
    import ray

    from grpo_dist.rollout.engine import create_engine_actor, engine_env

    actor = create_engine_actor(
        options={"num_cpus": 1},
        env=engine_env(device="cpu", cpu_ids=None),
        engine_index=0,
        model_path=tiny_assets["model"],
        dtype="float32",
        device="cpu",
        max_model_len=PROMPT_TOKENS + 64,
        seed=0,
        kv_cache_gib=0.25,
    )
    ray.get(actor.info.remote(), timeout=300)
    yield actor
    ray.kill(actor, no_restart=True)


def _prompts() -> list[Any]:
    from grpo_dist.types import Prompt

    rng = random.Random(0)
    return [
        Prompt(prompt_id=i, token_ids=[rng.randrange(3, 200) for _ in range(PROMPT_TOKENS)], text="")
        for i in range(NUM_PROMPTS)
    ]


def test_long_seeded_batch_over_the_step_budget_samples_every_request(engine: Any) -> None:
    import ray

    from grpo_dist.rollout.engine import SamplingSpec

    spec = SamplingSpec(n=2, max_tokens=16, ignore_eos=True)
    runs = [
        ray.get(engine.generate.remote(_prompts(), spec, run_seed=0, stream="train", step=1), timeout=600)
        for _ in range(2)
    ]
    first, second = ([c.token_ids for g in groups for c in g.completions] for groups in runs)
    assert len(first) == NUM_PROMPTS * 2
    assert all(len(ids) == 16 for ids in first)
    assert first == second  # the per-sample seeds still reproduce the batch
