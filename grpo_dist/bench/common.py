"""What every benchmark shares: the settings, the two model sizes, a private Ray, interleaved timing."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from grpo_dist.bench.records import REPO_ROOT
from grpo_dist.embedded import EmbeddedModelSpec, cache_root

# The two model sizes: the embedded default as it is, and a larger one of about 51M parameters.
MODELS: dict[str, EmbeddedModelSpec] = {
    "small": EmbeddedModelSpec(),
    "large": EmbeddedModelSpec(
        name="bench-large",
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=8,
        num_key_value_heads=8,
    ),
}


# ==================================================================================================== settings


@dataclass(frozen=True)
class Settings:
    """What each benchmark runs; ``quick`` trims repetitions and keeps only the small model for the slow
    parts."""

    quick: bool
    reps: int
    rollout_models: tuple[str, ...]
    learner_models: tuple[str, ...]
    sync_models: tuple[str, ...]
    e2e_models: tuple[str, ...]
    # rollout: prompts x G completions of a fixed length
    rollout_prompts: int = 16
    rollout_prompt_len: int = 16
    rollout_response_len: int = 64
    group_size: int = 8
    # learner: the same shape of batch a demo-like step trains on
    learner_prompts: int = 16
    learner_prompt_len: int = 16
    learner_response_len: int = 32
    micro_batch_size: int = 16
    zero_stages: tuple[int, ...] = (1, 2, 3)
    # sync
    sync_zero_stages: tuple[int, ...] = (2,)
    sync_engines: tuple[int, ...] = (1, 2)
    # e2e
    e2e_response_len: int = 32
    e2e_warmup_steps: int = 1
    e2e_steps: int = 3
    e2e_natural: bool = True  # also the natural (EOS) mode on the embedded task
    # async: steps per mode and layout; the controller's overhead with canned engines
    async_warmup_steps: int = 2
    async_steps: int = 6
    overhead_engines: tuple[int, ...] = (1, 4, 16, 64)
    overhead_prompts_per_engine: int = 4
    overhead_steps: int = 3
    # against TRL's GRPOTrainer (the e2e workload, in TRL's own venv)
    trl_models: tuple[str, ...] = ("small",)
    trl_dtypes: tuple[str, ...] = ("float32", "bfloat16")
    trl_checkpointing: tuple[bool, ...] = (True, False)  # TRL's default first, then without recomputation
    # config overrides for grpo-dist's trainer in e2e and trl (e.g. a learner layout to try)
    overrides: tuple[str, ...] = ()
    verbose: bool = False

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def settings_for(quick: bool, *, models: Sequence[str] | None = None, reps: int | None = None) -> Settings:
    if quick:
        s = Settings(
            quick=True,
            reps=3,
            rollout_models=("small",),
            learner_models=("small",),
            sync_models=("small",),
            e2e_models=("small",),
            e2e_steps=2,
            async_steps=4,
        )
    else:
        s = Settings(
            quick=False,
            reps=4,
            rollout_models=("small", "large"),
            learner_models=("small", "large"),
            sync_models=("small", "large"),
            e2e_models=("small", "large"),
            trl_models=("small", "large"),
            sync_zero_stages=(2, 3),
            e2e_steps=3,
        )
    if models:
        unknown = [m for m in models if m not in MODELS]
        if unknown:
            raise ValueError(f"--models {','.join(unknown)}: expected some of {', '.join(MODELS)}")
        m = tuple(models)
        s = replace(s, rollout_models=m, learner_models=m, sync_models=m, e2e_models=m, trl_models=m)
    if reps is not None:
        s = replace(s, reps=max(1, reps))
    return s


# ============================================================================================ models and Ray


def bench_model(name: str) -> Path:
    """The benchmark model ``name`` (tokenizer + random weights), built once into the cache."""
    from grpo_dist.models.assets import atomic_build
    from grpo_dist.models.builder import build_model

    spec = MODELS[name]
    target = cache_root() / "bench-models" / f"{spec.name}-seed{spec.seed}"
    return atomic_build(target, lambda tmp: build_model(tmp, spec))


def model_facts(path: Path) -> dict[str, Any]:
    """Parameter count, bytes and shape of a saved model (read from the safetensors header)."""
    import struct

    cfg = json.loads((path / "config.json").read_text())
    with open(path / "model.safetensors", "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    params = sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return {
        "params": params,
        "vocab_size": cfg["vocab_size"],
        "hidden_size": cfg["hidden_size"],
        "intermediate_size": cfg["intermediate_size"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "num_attention_heads": cfg["num_attention_heads"],
        "num_key_value_heads": cfg["num_key_value_heads"],
    }


@contextlib.contextmanager
def private_ray(*, num_cpus: int = 16, verbose: bool = False) -> Iterator[None]:
    """A local Ray of our own in a fresh temp dir, shut down (and its dir removed) on exit."""
    import ray

    if ray.is_initialized():
        raise RuntimeError("a Ray is already initialised in this process; the benchmarks start their own")
    tmp = tempfile.mkdtemp(prefix="gd-bench-", dir="/tmp")  # Ray's socket paths must stay short
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        _temp_dir=tmp,
        log_to_driver=verbose,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}},
    )
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def start_actor(cls: type, *, num_cpus: float, env: dict[str, str] | None = None, **kwargs: Any) -> Any:
    import ray

    options: dict[str, Any] = {"num_cpus": num_cpus, "max_restarts": 0}
    if env:
        options["runtime_env"] = {"env_vars": env}
    return ray.remote(cls).options(**options).remote(**kwargs)


def all_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def bench_config(model_path: Path, overrides: Sequence[str]) -> Any:
    """The demo config (``configs/demo.yaml``) pointed at a benchmark model, quiet, plus ``overrides``."""
    from grpo_dist.config import load_config

    demo = REPO_ROOT / "configs" / "demo.yaml"
    base = [
        f"model.path={model_path}",
        "cluster.device=cpu",
        "logging.progress=off",
        "logging.tensorboard=false",
        "logging.log_rollouts=false",
    ]
    return load_config(demo if demo.is_file() else None, [*base, *overrides])


def engine_settings(cfg: Any, model_path: Path, max_model_len: int) -> dict[str, Any]:
    """The arguments every engine of these benchmarks (grpo-dist's or raw) is built with."""
    from grpo_dist.rollout.pool import engine_dtype

    return {
        "model_path": str(model_path),
        "dtype": engine_dtype(cfg.model.dtype, "cpu"),
        "max_model_len": max_model_len,
        "seed": cfg.trainer.seed,
        "kv_cache_gib": cfg.rollout.kv_cache_gib,
        "enforce_eager": cfg.rollout.enforce_eager,
    }


def synthetic_prompts(num: int, length: int, vocab_size: int, seed: int, *, first_id: int = 3) -> list[Any]:
    """``num`` prompts of ``length`` random token ids (ids below ``first_id`` are the special tokens)."""
    import random

    from grpo_dist.types import Prompt

    rng = random.Random(seed)
    return [
        Prompt(prompt_id=i, token_ids=[rng.randrange(first_id, vocab_size) for _ in range(length)], text="")
        for i in range(num)
    ]


def synthetic_batch(num_seqs: int, prompt_len: int, response_len: int, vocab_size: int, seed: int) -> Any:
    """A fixed-length ``TrainBatch``: every row is prompt + response, the loss on the response tokens.

    Its engine logprobs are zeros, so the rollout-correction weights differ from a real run's: that changes
    the loss's value, not the work of a step."""
    import torch

    from grpo_dist.learner.batch import TrainBatch

    g = torch.Generator().manual_seed(seed)
    width = prompt_len + response_len
    ids = torch.randint(3, vocab_size, (num_seqs, width), generator=g)
    loss_mask = torch.zeros((num_seqs, width - 1))
    loss_mask[:, prompt_len - 1 :] = 1.0
    adv = torch.randn(num_seqs, generator=g)
    return TrainBatch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        loss_mask=loss_mask,
        advantages=adv,
        engine_logprobs=torch.zeros((num_seqs, width - 1)),
    )


# ================================================================================================ benchmarks


def settle() -> None:
    time.sleep(0.3)  # let the previous process's spinning OpenMP threads go idle


def per_model(
    models: Sequence[str], one: Callable[[Settings, str], tuple[dict[str, Any], list[dict[str, Any]]]], s: Settings
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    config: dict[str, Any] = {"models": {}}
    figures: list[dict[str, Any]] = []
    for model in models:
        model_config, model_figures = one(s, model)
        config["models"][model] = model_config
        figures += model_figures
    return config, figures


def interleaved(runs: dict[str, Callable[[int], dict[str, float]]], reps: int) -> dict[str, list[dict[str, float]]]:
    """One warm-up call of each run, then ``reps`` rounds with the order rotated each round (so a drift
    in the machine's load is shared out)."""
    for run in runs.values():
        run(0)
        settle()
    order = list(runs)
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in runs}
    for rep in range(reps):
        k = rep % len(order)
        for name in order[k:] + order[:k]:
            samples[name].append(runs[name](rep + 1))
            settle()
    return samples
