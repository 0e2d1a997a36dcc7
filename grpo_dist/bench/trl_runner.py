"""Time TRL's ``GRPOTrainer`` on the benchmark workload, for the grpo-dist vs TRL throughput comparison.

Runs with the Python of TRL's own virtual environment (not grpo-dist's), so it is standalone: from grpo-dist it
imports only ``grpo_dist.reward.builtins`` (stdlib only), and both trainers score with the same ``exact_match``
(with the same keyword arguments, ``reward_kwargs``)::

    PYTHONPATH=<repo> <trl-venv>/bin/python grpo_dist/bench/trl_runner.py SPEC.json OUT.json

One optimizer step does a grpo-dist step's work: ``num_prompts x num_generations`` completions generated at once,
scored, and ONE optimizer update over all of them in micro-batches of ``micro_batch_size`` completions. Settings
the workload does not pin stay TRL's defaults (what a CPU user of TRL runs). Per step it records the wall time,
the time in TRL's generation method, completions and tokens generated and the mean reward, and writes them with
the resolved ``GRPOConfig`` to OUT.json. Offline only: no hub access.

Prompts are plain text or chat messages (a ``prompt`` column of ``[{role, content}, ...]``, as grpo-dist's
chat datasets hold them): TRL applies the model's chat template to those itself, and its completions then
come back as messages, whose text the reward scores.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

_INT_KEYS = ("num_prompts", "num_generations", "max_completion_length", "micro_batch_size", "threads", "steps")
_NONNEG_INT_KEYS = ("seed", "warmup_steps")
_FLOAT_KEYS = ("temperature", "learning_rate", "max_grad_norm")
_BOOL_KEYS = ("fixed_length", "gradient_checkpointing")
_PATH_KEYS = ("model_path", "train_file")
DTYPES = ("float32", "bfloat16")
GEN_METHOD = "_generate_single_turn"  # TRL 1.16: the GRPOTrainer method that calls model.generate for a batch


class SpecError(ValueError):
    """A missing or bad key in SPEC.json."""


def load_spec(path: str) -> dict[str, Any]:
    """Read SPEC.json and check every required key's presence, type and range."""
    spec = json.loads(Path(path).read_text())
    if not isinstance(spec, dict):
        raise SpecError(f"{path}: expected a JSON object")
    required = (*_INT_KEYS, *_NONNEG_INT_KEYS, *_FLOAT_KEYS, *_BOOL_KEYS, *_PATH_KEYS, "dtype")
    missing = [key for key in required if key not in spec]
    if missing:
        raise SpecError(f"missing key(s): {', '.join(missing)}")
    for key in _INT_KEYS + _NONNEG_INT_KEYS:
        value, low = spec[key], 0 if key in _NONNEG_INT_KEYS else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise SpecError(f"key {key!r} must be an integer >= {low}, got {value!r}")
    for key in _FLOAT_KEYS:
        value = spec[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise SpecError(f"key {key!r} must be a number > 0, got {value!r}")
    for key in _BOOL_KEYS:
        if not isinstance(spec[key], bool):
            raise SpecError(f"key {key!r} must be true or false, got {spec[key]!r}")
    for key in _PATH_KEYS:
        if not isinstance(spec[key], str) or not Path(spec[key]).expanduser().exists():
            raise SpecError(f"key {key!r} must be an existing path, got {spec[key]!r}")
    if not isinstance(spec.setdefault("reward_kwargs", {}), dict):
        raise SpecError(f"key 'reward_kwargs' must be an object, got {spec['reward_kwargs']!r}")
    if spec["dtype"] not in DTYPES:
        raise SpecError(f"key 'dtype' must be one of {DTYPES}, got {spec['dtype']!r}")
    if spec["num_generations"] < 2:
        raise SpecError(f"key 'num_generations' must be >= 2 (GRPO needs a group), got {spec['num_generations']}")
    if (spec["num_prompts"] * spec["num_generations"]) % spec["micro_batch_size"]:
        raise SpecError(
            f"key 'micro_batch_size' ({spec['micro_batch_size']}) must divide num_prompts * num_generations "
            f"({spec['num_prompts'] * spec['num_generations']})"
        )
    return spec


def completion_text(completion: Any) -> str:
    """A TRL completion's text: the string itself (text prompts) or its messages' contents (chat prompts)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and all(isinstance(m, dict) and "content" in m for m in completion):
        return "".join(str(m["content"]) for m in completion)
    raise TypeError(f"unexpected completion {completion!r}: expected a string or a list of chat messages")


def jsonable(value: Any) -> Any:
    """``value`` as JSON: enums by value, containers recursively, anything else unknown as ``str``."""
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Train ``warmup_steps + steps`` optimizer steps with TRL's GRPOTrainer and return the measurements."""
    import accelerate
    import datasets
    import pyarrow.parquet as pq
    import torch
    import transformers
    import trl

    from grpo_dist.reward.builtins import exact_match

    torch.set_num_threads(spec["threads"])
    group, max_len = spec["num_prompts"] * spec["num_generations"], spec["max_completion_length"]
    table = pq.read_table(Path(spec["train_file"]).expanduser(), columns=["prompt", "ground_truth"])
    dataset = datasets.Dataset.from_dict(table.to_pydict())

    reward_kwargs = spec["reward_kwargs"]

    def exact_match_reward(prompts: list[Any], completions: list[Any], ground_truth: list[str], **_: Any) -> list:
        texts = [completion_text(c) for c in completions]
        return [exact_match(None, t, gt, None, **reward_kwargs) for t, gt in zip(texts, ground_truth, strict=True)]

    class StepRecorder(transformers.TrainerCallback):
        """Marks ``perf_counter`` at train begin and after every optimizer step; sums generation time per step."""

        def __init__(self) -> None:
            self.marks: list[float] = []
            self.gen_s, self.lengths = 0.0, []  # this step's generation seconds and completion lengths
            self.steps: list[dict[str, Any]] = []
            self.rewards: dict[int, float] = {}

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.marks = [time.perf_counter()]

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.marks.append(time.perf_counter())
            self.steps.append({"gen_s": self.gen_s, "lengths": self.lengths})
            self.gen_s, self.lengths = 0.0, []

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs and "reward" in logs:
                self.rewards[state.global_step] = float(logs["reward"])

    recorder = StepRecorder()
    output_dir = tempfile.mkdtemp(prefix="trl-bench-")
    try:
        config = trl.GRPOConfig(
            output_dir=output_dir,
            per_device_train_batch_size=spec["micro_batch_size"],
            gradient_accumulation_steps=group // spec["micro_batch_size"],
            num_generations=spec["num_generations"],
            max_completion_length=max_len,
            generation_kwargs={"min_new_tokens": max_len} if spec["fixed_length"] else None,
            temperature=float(spec["temperature"]),
            learning_rate=float(spec["learning_rate"]),
            max_grad_norm=float(spec["max_grad_norm"]),
            num_iterations=1,
            beta=0.0,
            loss_type="grpo",
            use_cpu=True,
            use_vllm=False,
            bf16=spec["dtype"] == "bfloat16",
            fp16=False,
            model_init_kwargs={"dtype": "float32"},
            # transformers 5.2x renamed gradient_checkpointing to activation_checkpointing; set both (no warning)
            activation_checkpointing=spec["gradient_checkpointing"],
            gradient_checkpointing=spec["gradient_checkpointing"],
            max_steps=spec["warmup_steps"] + spec["steps"],
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            seed=spec["seed"],
            dataloader_num_workers=0,
        )
        if config.generation_batch_size != group or config.steps_per_generation != config.gradient_accumulation_steps:
            raise RuntimeError(
                f"TRL resolved generation_batch_size={config.generation_batch_size}, steps_per_generation="
                f"{config.steps_per_generation}; expected {group} and {config.gradient_accumulation_steps}"
            )
        trainer = trl.GRPOTrainer(
            model=str(Path(spec["model_path"]).expanduser()),
            reward_funcs=exact_match_reward,
            args=config,
            train_dataset=dataset,
            callbacks=[recorder],
        )
        generate = getattr(trainer, GEN_METHOD, None)
        if generate is None:
            raise RuntimeError(f"GRPOTrainer has no {GEN_METHOD}: this runner is written against TRL 1.16")

        def timed_generate(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            completion_ids, logprobs = generate(*args, **kwargs)
            recorder.gen_s += time.perf_counter() - start
            recorder.lengths.extend(len(ids) for ids in completion_ids)
            return completion_ids, logprobs

        setattr(trainer, GEN_METHOD, timed_generate)  # instance attribute shadows the bound method
        start = time.perf_counter()
        trainer.train()
        wall_s = time.perf_counter() - start
        grpo_config = {
            f.name: "<redacted>" if f.name.endswith("token") and getattr(config, f.name) else getattr(config, f.name)
            for f in dataclasses.fields(config)
            if not f.name.startswith("_")
        }
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)

    steps = recorder.steps
    if len(steps) != config.max_steps:
        raise RuntimeError(f"ran {len(steps)} optimizer steps, expected {config.max_steps}")
    if spec["fixed_length"]:
        bad = sorted({n for s in steps for n in s["lengths"] if n != max_len})
        if bad:
            raise RuntimeError(f"fixed_length: completion lengths {bad} != max_completion_length {max_len}")
    return {
        "trl_version": trl.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "accelerate_version": accelerate.__version__,
        "grpo_config": jsonable(grpo_config),
        "spec": spec,
        "step_s": [b - a for a, b in zip(recorder.marks, recorder.marks[1:])],
        "generate_s": [s["gen_s"] for s in steps],
        "completions_per_step": [len(s["lengths"]) for s in steps],
        "completion_tokens": [sum(s["lengths"]) for s in steps],
        "mean_completion_length": [sum(s["lengths"]) / max(len(s["lengths"]), 1) for s in steps],
        "completion_length_min": [min(s["lengths"], default=0) for s in steps],
        "completion_length_max": [max(s["lengths"], default=0) for s in steps],
        "reward_mean": [recorder.rewards.get(i + 1) for i in range(len(steps))],
        "warmup_steps": spec["warmup_steps"],
        "threads": torch.get_num_threads(),
        "wall_s": wall_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: kB
    }


def write_atomic(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` via a temp file in the same folder and a rename."""
    target = Path(path).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str]) -> int:
    # Run as a script, this folder is sys.path[0]: keep its modules from shadowing packages TRL imports.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    if len(argv) != 2:
        print("usage: trl_runner.py SPEC.json OUT.json", file=sys.stderr)
        return 2
    try:
        spec = load_spec(argv[0])
    except (OSError, json.JSONDecodeError, SpecError) as exc:
        print(f"trl_runner: bad spec {argv[0]}: {exc}", file=sys.stderr)
        return 2
    # Before transformers/trl/datasets/torch are imported: no hub access, and the thread count for OpenMP.
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[var] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", str(spec["threads"]))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        write_atomic(argv[1], run(spec))
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
