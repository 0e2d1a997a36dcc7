"""The architecture conformance matrix: for each model family, is the weight sync right and does the export load?

For every family of ``grpo_dist.models.zoo`` a tiny random model goes through the real actors: one
rollout engine (``EnginePool``, vLLM), one DeepSpeed ZeRO-2 learner rank (``LearnerGroup``) and the
``WeightSync`` between them. Measured, in fp32, on a fixed probe (a few sequences of random token ids):

1. ``parity_before``: max |engine logprob - learner logprob| on the initial weights;
2. two training steps on the engine's own rollouts with random advantages and a learning rate that
   visibly moves the weights (``weight_delta``: max |w - w0|; ``logprob_shift``: how far the learner's
   probe logprobs moved), each followed by a weight sync with its behavioural check on the same probe
   (a failing check fails the stage); then ``parity_after``, the same difference;
3. the learner's Hugging Face export (``LearnerGroup.save_hf``) loaded in transformers (``hf_reload``:
   difference to the learner) and in a fresh engine (``vllm_reload``).

A family conforms when every difference is below ``TOLERANCE``. ``grpo_dist.models.support`` refuses
the families that do not, with the cause; the matrix test checks that exactly those fail.

``python -m grpo_dist.models.conformance --write`` runs the matrix on a private Ray and writes
``benchmarks/results/conformance.json`` and the table between the markers of README.md's
"Supported architectures" section.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from grpo_dist.models.conformance_results import (
    LEARNING_RATE,
    NUM_STEPS,
    PROBE_LENGTH,
    PROBE_SEQUENCES,
    FamilyResult,
    make_record,
    markdown_table,
    max_abs_diff,
    update_readme,
)

logger = logging.getLogger(__name__)

RAY_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, ValueError, TimeoutError)
NUM_PROMPTS = 2
PROMPT_LENGTH = 8
RESPONSE_LENGTH = 8


def probe_sequences(vocab_size: int, seed: int) -> list[list[int]]:
    """``PROBE_SEQUENCES`` sequences of ``PROBE_LENGTH`` random token ids (the special tokens excluded)."""
    import random

    rng = random.Random(seed)
    return [[rng.randrange(3, vocab_size) for _ in range(PROBE_LENGTH)] for _ in range(PROBE_SEQUENCES)]


def matrix_config(model_path: str, run_dir: str, *, seed: int) -> Any:  # -> Config
    """The smallest run that trains: 1 engine, 1 ZeRO-2 rank, fp32, no KL term."""
    from grpo_dist.config import load_config

    return load_config(
        None,
        [
            f"model.path={model_path}",
            "model.dtype=float32",
            f"data.train_batch_size={NUM_PROMPTS}",
            f"data.max_prompt_length={PROBE_LENGTH + 8}",
            f"data.max_response_length={RESPONSE_LENGTH}",
            "rollout.num_engines=1",
            "rollout.num_generations=4",
            "rollout.kv_cache_gib=0.1",
            "rollout.request_timeout_s=300",
            "learner.num_ranks=1",
            "learner.zero_stage=2",
            f"learner.lr={LEARNING_RATE}",
            f"learner.mini_batch_size={NUM_PROMPTS}",
            "learner.micro_batch_size=8",
            "learner.step_timeout_s=300",
            "algo.kl_coef=0",
            "sync.timeout_s=120",
            "cluster.device=cpu",
            "cluster.placement_timeout_s=120",
            f"trainer.seed={seed}",
            f"trainer.total_steps={NUM_STEPS}",
            f"trainer.output_dir={run_dir}",
            "logging.progress=off",
        ],
    )


def describe_error(exc: BaseException, limit: int = 400) -> str:
    """``Outer: message``, or ``Outer <- Inner: message`` where the exception came out of an actor (the
    innermost cause of a chain, unwrapped from Ray's task error), on one line without colour codes."""
    import re

    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    inner = getattr(root, "cause", None) or root  # a RayTaskError carries the actor's exception
    head = type(exc).__name__ if inner is exc else f"{type(exc).__name__} <- {type(inner).__name__}"
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(inner)).split())
    return f"{head}: {text[:limit]}"


@contextlib.contextmanager
def _stage(result: FamilyResult, name: str) -> Iterator[None]:
    """Record a failure of one stage (the harness goes on to the next family) instead of raising."""
    import ray

    t0 = time.perf_counter()
    try:
        yield
    except (*RAY_ERRORS, ray.exceptions.RayError) as exc:
        result.errors[name] = describe_error(exc)
        logger.warning("%s: %s failed: %s", result.family, name, result.errors[name])
    finally:
        result.stage_seconds[name] = round(time.perf_counter() - t0, 2)


def _engine_logprobs(engines: Any, probe: list[list[int]]) -> list[list[float]]:
    return engines.call_all("sequence_token_logprobs", probe, timeout_s=300, what="probe logprobs")[0]


def _train_batch(engines: Any, cfg: Any, step: int, vocab_size: int, seed: int) -> Any:
    """One step's batch: the engine's rollouts of random prompts, with random +-1 advantages."""
    import random

    import torch

    from grpo_dist.learner.batch import collate
    from grpo_dist.rollout.engine import SamplingSpec
    from grpo_dist.types import Prompt, ScoredGroup

    rng = random.Random(seed * 1000 + step)
    prompts = [
        Prompt(prompt_id=i, token_ids=[rng.randrange(3, vocab_size) for _ in range(PROMPT_LENGTH)], text="")
        for i in range(NUM_PROMPTS)
    ]
    spec = SamplingSpec(n=cfg.rollout.num_generations, max_tokens=RESPONSE_LENGTH, ignore_eos=True)
    groups = engines.generate_all(prompts, spec, step=step, stream="conformance", min_version=0)
    groups.sort(key=lambda g: g.batch_index)
    n = spec.n
    scored = [ScoredGroup(g, [0.0] * n, {"random": [0.0] * n}, [True] * n) for g in groups]
    signs = [rng.choice((-1.0, 1.0)) for _ in range(len(groups) * n)]
    return collate(scored, torch.tensor(signs), pad_token_id=0)


_LOAD_LOCK = threading.Lock()


def _hf_logprobs(model_dir: str | Path, probe: list[list[int]]) -> tuple[list[list[float]], dict[str, Any]]:
    """Probe logprobs of a model directory loaded in transformers (with the attention a learner needs for
    it, see ``support.learner_attn_implementation``), and its parameters."""
    import torch
    from transformers import AutoModelForCausalLM

    from grpo_dist import algo
    from grpo_dist.models.support import learner_attn_implementation

    attn = learner_attn_implementation(json.loads((Path(model_dir) / "config.json").read_text()))
    with _LOAD_LOCK:  # families run in threads; transformers' loading is not thread-safe (meta-device init)
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=torch.float32, attn_implementation=attn
        ).eval()
    ids = torch.tensor(probe)
    with torch.no_grad():
        lp = algo.token_logprobs(model(input_ids=ids).logits[:, :-1], ids[:, 1:]).float()
    return lp.tolist(), {n: p.detach() for n, p in model.named_parameters()}


class ExportScorer:
    """One long-lived actor that scores each exported model in a fresh vLLM engine of its own
    (``rollout.scoring.ModelScorer``): a fresh engine per export without a new process per export. An
    actor that died is replaced at the next call."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._actor: Any = None

    def score(self, model_path: str, probe: list[list[int]], *, max_model_len: int, seed: int) -> list[list[float]]:
        import ray

        from grpo_dist.cluster import cpu_ids_for
        from grpo_dist.rollout.engine import engine_env
        from grpo_dist.rollout.scoring import ModelScorer

        with self._lock:
            if self._actor is None:
                # beside the rollout engines, which bind their first core
                env = engine_env(device="cpu", cpu_ids=cpu_ids_for(1, 1))
                self._actor = (
                    ray.remote(ModelScorer)
                    .options(num_cpus=1, runtime_env={"env_vars": env}, max_restarts=0, max_concurrency=1)
                    .remote(device="cpu")
                )
            actor = self._actor
        ref = actor.score.remote(model_path, probe, max_model_len=max_model_len, seed=seed)
        try:
            return ray.get(ref, timeout=300)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            with self._lock:
                if self._actor is actor:
                    ray.kill(actor, no_restart=True)
                    self._actor = None
            raise

    def shutdown(self) -> None:
        import ray

        with self._lock:
            if self._actor is not None:
                ray.kill(self._actor, no_restart=True)
                self._actor = None


def _score_export(cfg: Any, export: Path, probe: list[list[int]], scorer: ExportScorer | None) -> list[list[float]]:
    """The probe's logprobs under a fresh vLLM engine started from the export."""
    from grpo_dist.placement import place_roles, role_specs
    from grpo_dist.rollout.pool import EnginePool

    max_model_len = cfg.data.max_prompt_length + cfg.data.max_response_length
    if scorer is not None:
        return scorer.score(str(export), probe, max_model_len=max_model_len, seed=cfg.trainer.seed)
    placements = place_roles(role_specs(cfg, "cpu", with_learner=False), timeout_s=cfg.cluster.placement_timeout_s)
    fresh = EnginePool(
        cfg, placement=placements["rollout"], model_path=str(export), device="cpu", max_model_len=max_model_len
    )
    try:
        fresh.wait_ready()
        return _engine_logprobs(fresh, probe)
    finally:
        fresh.shutdown()


def check_family(
    family: str, work_dir: Path | str, *, seed: int = 0, export_scorer: ExportScorer | None = None
) -> FamilyResult:
    """Run one family through the real engine, learner and sync (Ray must be up); never raises for a
    failure of the family itself: its stages' errors are in the result.

    The export is scored by ``export_scorer`` (a fresh engine in a shared process), else by a fresh
    ``EnginePool`` of its own (a new process: slower, the same check)."""
    from grpo_dist.learner.group import LearnerGroup
    from grpo_dist.models import zoo
    from grpo_dist.models.support import unsupported_reason
    from grpo_dist.placement import place_roles, role_specs
    from grpo_dist.rollout.pool import EnginePool
    from grpo_dist.sync.manager import WeightSync

    start = time.perf_counter()
    spec = zoo.family_spec(family)
    root = Path(work_dir) / family
    model_dir = zoo.build_tiny(family, root / "model", seed)
    build_s = time.perf_counter() - start
    hf_config = json.loads((model_dir / "config.json").read_text())
    result = FamilyResult(
        family=family,
        architecture=hf_config["architectures"][0],
        tied=spec.tied,
        features=spec.features,
        expected_reason=unsupported_reason(hf_config, device="cpu"),
    )
    result.stage_seconds["build"] = round(build_s, 2)
    vocab_size = int(hf_config["vocab_size"])
    probe = probe_sequences(vocab_size, seed)
    cfg = matrix_config(str(model_dir), str(root / "run"), seed=seed)
    max_model_len = cfg.data.max_prompt_length + cfg.data.max_response_length
    export = root / "export"
    engines = learners = None
    learner_before: list[list[float]] | None = None
    learner_after: list[list[float]] | None = None
    try:
        with _stage(result, "start"):
            placements = place_roles(role_specs(cfg, "cpu"), timeout_s=cfg.cluster.placement_timeout_s)
            engines = EnginePool(
                cfg,
                placement=placements["rollout"],
                model_path=str(model_dir),
                device="cpu",
                max_model_len=max_model_len,
            )
            t0 = time.perf_counter()
            learners = LearnerGroup(cfg, placement=placements["learner"], model_path=str(model_dir), device="cpu")
            result.stage_seconds["learner setup"] = round(time.perf_counter() - t0, 2)
            engines.wait_ready()
            # the sync's own behavioural check runs too: a wrong engine fails the sync at once
            sync = WeightSync(cfg, learners, engines, device="cpu", probe=probe, dtype="float32")
        if "start" in result.errors:
            result.seconds = round(time.perf_counter() - start, 1)
            return result
        with _stage(result, "probe before"):
            learner_before = learners.sequence_token_logprobs(probe)
            result.parity_before = max_abs_diff(learner_before, _engine_logprobs(engines, probe))
        with _stage(result, "sync"):
            for step in range(1, NUM_STEPS + 1):
                learners.train(_train_batch(engines, cfg, step, vocab_size, seed), step)
                sync.sync(version=step)
        with _stage(result, "probe after"):  # also after a failed sync: how wrong is the engine?
            learner_after = learners.sequence_token_logprobs(probe)
            if learner_before is not None:
                result.logprob_shift = max_abs_diff(learner_before, learner_after)
            result.parity_after = max_abs_diff(learner_after, _engine_logprobs(engines, probe))
        with _stage(result, "export"):
            learners.save_hf(str(export))
    finally:
        for part in (engines, learners):
            if part is not None:
                part.shutdown()
    if "export" not in result.errors and learner_after is not None:
        with _stage(result, "transformers reload"):
            hf_lp, params = _hf_logprobs(export, probe)
            result.hf_reload = max_abs_diff(learner_after, hf_lp)
            _, initial = _hf_logprobs(model_dir, probe)
            result.weight_delta = max(float((params[n] - initial[n]).abs().max()) for n in initial)
        with _stage(result, "vllm reload"):
            result.vllm_reload = max_abs_diff(learner_after, _score_export(cfg, export, probe, export_scorer))
    result.seconds = round(time.perf_counter() - start, 1)
    logger.info("%s: %s", family, json.dumps(result.to_dict()))
    return result


def run_matrix(
    families: Sequence[str] | None = None,
    work_dir: Path | str | None = None,
    *,
    seed: int = 0,
    concurrency: int = 2,
) -> list[FamilyResult]:
    """``check_family`` for each family (all of the zoo by default) on the Ray already running, in order.

    ``concurrency`` families run at a time, each on actors of its own: a family spends most of its time
    starting processes, and another family's stages fill those waits.
    """
    from concurrent.futures import ThreadPoolExecutor

    from grpo_dist.models.zoo import FAMILIES, tiny_tokenizer

    names = list(families) if families else [f.family for f in FAMILIES]
    tiny_tokenizer()  # trained once, before the threads share it
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="grpo-dist-conformance-"))
        scorer = ExportScorer()
        stack.callback(scorer.shutdown)
        with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="conformance") as pool:
            return list(pool.map(lambda name: check_family(name, work_dir, seed=seed, export_scorer=scorer), names))


def main(argv: list[str] | None = None) -> int:
    from grpo_dist.bench.common import private_ray
    from grpo_dist.bench.records import REPO_ROOT

    parser = argparse.ArgumentParser(prog="python -m grpo_dist.models.conformance", description=__doc__.split("\n")[0])
    parser.add_argument("families", nargs="*", help="families to check (default: all of the zoo)")
    parser.add_argument("--write", action="store_true", help="write the JSON record and the README table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=2, help="families checked at a time")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    with private_ray():
        results = run_matrix(args.families or None, seed=args.seed, concurrency=args.concurrency)
    record = make_record(results, wall_s=time.perf_counter() - t0)
    machine = f"{record['machine'].get('cpu_model')}, {record['machine'].get('usable_cores')} cores"
    table = markdown_table(results, when=record["time_utc"][:10], machine=machine)
    print(table)
    if args.write:
        out = REPO_ROOT / "benchmarks" / "results" / "conformance.json"
        out.write_text(json.dumps(record, indent=2) + "\n")
        readme = REPO_ROOT / "README.md"
        readme.write_text(update_readme(readme.read_text(), table))
    agree = all(r.ok == (r.expected_reason is None) for r in results)
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
