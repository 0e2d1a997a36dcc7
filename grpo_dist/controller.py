"""The training loop: one readable step after another.

```
 prompts (PromptCursor over the dataset)
    │
    ▼
 EnginePool.generate ── G completions per prompt, seeded per sample, tagged with the weights version
    │  (groups stream out as each engine finishes)
    ▼
 RewardPool.submit / collect ── weighted reward components, validated, failures masked or fatal
    │
    ▼
 advantages (grpo_dist.algo, over each group's valid samples)
    │
    ▼
 LearnerGroup.train ── DeepSpeed ZeRO ranks: (old / ref logprobs), GRPO loss, optimizer steps
    │
    ▼
 WeightSync.sync ── bucketed, checksummed, with a deadline ──► every engine at version = step
```

Each phase is timed (``timing/*_s``); each step's metrics go to ``metrics.jsonl``, TensorBoard and the
terminal, and every completion to ``rollouts/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grpo_dist import algo, cluster, metric_names, metrics
from grpo_dist.checkpoint import CheckpointManager, checkpoint_name, write_json_durably
from grpo_dist.cluster import ActorDiedError
from grpo_dist.config import Config, model_context_length
from grpo_dist.placement import place_roles, reward_cpus, role_specs, total_cpus
from grpo_dist.rollout.pool import EngineError
from grpo_dist.sync.manager import WeightSyncError
from grpo_dist.types import Prompt, ScoredGroup

logger = logging.getLogger("grpo_dist")


CONTROLLER_STATE = "controller.json"


class TrainingAborted(RuntimeError):  # noqa: N818 - a state, not a programming error
    pass


@dataclass
class ScoredBatch:
    """What one step produced, before it is logged."""

    groups: list[ScoredGroup]
    advantages: torch.Tensor  # [P, G]
    metrics: dict[str, float]


class Trainer:
    """Owns the actors of a run and drives the step loop. Use as a context manager: actors stop on exit."""

    def __init__(self, cfg: Config, *, run_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir or cfg.trainer.output_dir)
        self.engines: Any = None
        self.learners: Any = None
        self.rewards: Any = None
        self.weight_sync: Any = None
        self._consecutive_nonfinite = 0
        self.weights_version = 0  # the version every engine holds (= the last step whose weights were synced)
        self._trained_step = 0  # the last step whose update the learner holds

    # --------------------------------------------------------------------------------------------- set-up

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def start(self, *, training: bool = True) -> None:
        """Load and check data, start Ray and the actors. ``training=False`` starts only what evaluation
        needs (engines and reward workers)."""
        from transformers import AutoTokenizer

        from grpo_dist.data import PromptCursor, load_prompts
        from grpo_dist.learner.group import LearnerGroup
        from grpo_dist.models.assets import resolve_data_files, resolve_model_path
        from grpo_dist.reward.worker import RewardPool
        from grpo_dist.rollout.pool import EnginePool
        from grpo_dist.sync.manager import WeightSync

        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", keep_last=cfg.trainer.keep_last)
        self.resume_from: Path | None = None
        self.start_step = 1
        if training:
            self.checkpoints.cleanup()
            self.resume_from = self.checkpoints.resolve(cfg.trainer.resume)  # verified, or refused
            (self.run_dir / "config.yaml").write_text(cfg.to_yaml())
        self.device = cluster.resolve_device(cfg)
        self.model_path = resolve_model_path(cfg)
        from grpo_dist.models.support import unsupported_reason

        reason = unsupported_reason(json.loads((Path(self.model_path) / "config.json").read_text()), device=self.device)
        if reason is not None:
            raise ValueError(f"model.path = {self.model_path!r} cannot be trained correctly here: {reason}")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        train_files, eval_files = resolve_data_files(cfg)
        # all data is read and checked before any actor starts
        self.train_prompts, train_stats = load_prompts(train_files, self.tokenizer, cfg.data, source="train")
        self.eval_prompts: list[Prompt] = []
        if eval_files:
            self.eval_prompts, _ = load_prompts(eval_files, self.tokenizer, cfg.data, source="eval")
            if cfg.eval.max_prompts:
                self.eval_prompts = self.eval_prompts[: cfg.eval.max_prompts]
            logger.info("held-out evaluation: %d prompts from %s", len(self.eval_prompts), ", ".join(eval_files))
        else:
            logger.info("held-out evaluation: none (data.train_files is set and data.eval_files is empty)")
        self.data_metrics = {f"data/{k}": v for k, v in train_stats.metrics().items()}
        # reward functions are imported and their kwargs checked here, before any actor starts
        from grpo_dist.reward import resolve

        for i, f in enumerate(cfg.reward.functions):
            resolve(f, index=i, max_response_length=cfg.data.max_response_length)
        self.cursor = PromptCursor(
            len(self.train_prompts),
            batch_size=cfg.data.train_batch_size,
            seed=cfg.trainer.seed,
            shuffle=cfg.data.shuffle,
        )
        specs = role_specs(cfg, self.device, with_learner=training)
        self._owns_ray = cluster.init_ray(cfg, total_cpus(specs, reward_cpus(cfg)))
        cluster.check_resources(specs, reward_cpus(cfg))
        max_model_len = cfg.data.max_prompt_length + cfg.data.max_response_length
        context = model_context_length(cfg.model.model_copy(update={"path": self.model_path}))
        if context is not None and max_model_len > context:
            raise ValueError(
                f"data.max_prompt_length + data.max_response_length = {max_model_len} exceeds the context of "
                f"{self.model_path} ({context} tokens)"
            )
        state: dict[str, Any] = {}
        engine_model, version = self.model_path, 0
        if self.resume_from is not None:
            state = json.loads((self.resume_from / CONTROLLER_STATE).read_text())
            self.cursor.load_state_dict(state["cursor"])
            self.start_step = state["step"] + 1
            self._consecutive_nonfinite = state["consecutive_nonfinite"]
            self.weights_version = self._trained_step = state["step"]
            engine_model, version = str(self.resume_from / "hf"), state["weights_version"]
            logger.info("resuming from %s (step %d)", self.resume_from, state["step"])
        # engines start in their own processes while the learner ranks rendezvous
        placements = place_roles(specs, timeout_s=cfg.cluster.placement_timeout_s)
        self.engines = EnginePool(
            cfg,
            placement=placements["rollout"],
            model_path=engine_model,
            device=self.device,
            max_model_len=max_model_len,
            initial_version=version,
        )
        self.rewards = RewardPool(
            cfg.reward,
            max_response_length=cfg.data.max_response_length,
            num_cpus_per_worker=cfg.cluster.num_cpus_per_reward_worker,
            extra_sys_path=[os.getcwd(), *sys.path],
            max_worker_restarts=cfg.reward.max_worker_restarts,
            worker_timeout_s=cfg.reward.worker_timeout_s,
        )
        if training:
            # the learner starts from the original model (also the KL reference) and then loads its state
            self.learners = LearnerGroup(
                cfg, placement=placements["learner"], model_path=self.model_path, device=self.device
            )
            if self.resume_from is not None:
                self.learners.load_checkpoint(
                    str(self.resume_from / "learner"),
                    version=state["weights_version"],
                    consecutive_nonfinite=state["consecutive_nonfinite"],
                )
        self.engines.wait_ready()
        if training:
            from grpo_dist.sync.probe import make_probe

            probe = make_probe(
                [p.token_ids for p in self.train_prompts[: 4 * cfg.sync.probe_num_sequences]],
                num_sequences=cfg.sync.probe_num_sequences,
                length=min(cfg.sync.probe_length, max_model_len - 1),  # the engine scores it as a prompt + 1 token
            )
            self.weight_sync = WeightSync(
                cfg, self.learners, self.engines, device=self.device, probe=probe, dtype=self.engines.dtype
            )
            if self.weight_sync.probe is not None:
                # before any update: do the engines and the learner compute the same model at all?
                worst = self.weight_sync.check_behaviour(self.weights_version)
                logger.info("engines agree with the learner on the probe: %s", worst.describe())
            self.metrics = metrics.MetricsLogger(
                cfg, self.run_dir, total_steps=cfg.trainer.total_steps, initial_step=self.start_step - 1
            )

    def shutdown(self) -> None:
        for part in (self.rewards, self.engines, self.learners):
            if part is not None:
                part.shutdown()
        if getattr(self, "metrics", None) is not None:
            self.metrics.close()
        import ray

        if getattr(self, "_owns_ray", False) and ray.is_initialized():
            ray.shutdown()

    # ----------------------------------------------------------------------------------------------- loop

    def run(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        history = []
        last = cfg.trainer.total_steps
        if self.start_step == 1 and self.eval_prompts:
            self._log_eval(0)
        checkpoint = None
        for step in range(self.start_step, last + 1):
            try:
                record = self.train_step(step)
            except (ActorDiedError, EngineError, WeightSyncError, TimeoutError) as exc:
                raise self._abort(step, exc) from exc
            self.metrics.log(step, record)
            history.append(record)
            if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0 and step != last:
                self._log_eval(step)  # its own line: eval records and training records stay apart
            if step == last or (cfg.trainer.save_every and step % cfg.trainer.save_every == 0):
                checkpoint = self.save_checkpoint(step)
        if self.eval_prompts and self.start_step <= last:
            self._log_eval(last)
        final = self.run_dir / "final"
        shutil.rmtree(final, ignore_errors=True)
        if checkpoint is not None:  # the last step's checkpoint already holds the HF export
            shutil.copytree(checkpoint / "hf", final)
        else:  # resumed at the last step: nothing was trained in this run
            self.learners.save_hf(str(final))
        return history

    def _abort(self, step: int, exc: Exception) -> TrainingAborted:
        """Stop the run on a fault it cannot absorb, leaving a checkpoint to resume from."""
        dead = getattr(exc, "dead", [])
        if any(name.startswith("learner") for name in dead):
            # the dead rank held a shard of the ZeRO state: the survivors cannot rebuild it
            hint = self._resume_hint()
            return TrainingAborted(
                f"step {step}: {', '.join(dead)} died; ZeRO state cannot be rebuilt from the surviving ranks "
                f"({exc}). {hint}"
            )
        try:
            if self._trained_step < step:  # the step's batch was drawn but not trained on: put it back
                self.cursor.load_state_dict(self._cursor_at_step_start)
            if self._trained_step >= 1 and self.checkpoints.latest_name() != checkpoint_name(self._trained_step):
                self.save_checkpoint(self._trained_step)
        except (ActorDiedError, TimeoutError, OSError, RuntimeError, ValueError) as save_exc:  # never mask the first
            logger.error("step %d: could not write a checkpoint after the fault: %s", step, save_exc)
        what = str(exc) if str(exc).startswith(f"step {step}") else f"step {step}: {exc}"
        return TrainingAborted(f"{what}. {self._resume_hint()}")

    def _resume_hint(self) -> str:
        name = self.checkpoints.latest_name()
        if name is None:
            return "No checkpoint was written yet: the run must start again."
        return f"The latest checkpoint is {name}: continue with trainer.resume=auto."

    def _recover_engines(self) -> None:
        """After an engine was replaced: a new sync group, and the current weights into every engine."""
        self.weight_sync.connect()
        self.weight_sync.sync(version=self.weights_version)

    def _sync(self, step: int) -> dict[str, float]:
        """Publish the weights of ``step``; an engine that died meanwhile is replaced and the sync repeated."""
        try:
            timing = self.weight_sync.sync(version=step)
        except ActorDiedError as exc:
            engines = [n for n in exc.dead if n.startswith("engine")]
            if not engines or len(engines) != len(exc.dead):
                raise
            for name in engines:
                self.engines.replace_failed(self.engines.names.index(name), step=step, reason="died during a sync")
            self.weight_sync.connect()
            timing = self.weight_sync.sync(version=step)
        self.weights_version = step
        return timing

    def save_checkpoint(self, step: int) -> Path:
        """Learner state, controller state and an HF export, written atomically (see ``checkpoint``)."""
        t0 = time.perf_counter()
        tmp = self.checkpoints.begin(step)
        self.learners.save_checkpoint(str(tmp / "learner"))
        self.learners.save_hf(str(tmp / "hf"))
        state = {
            "step": step,
            "weights_version": step,
            "cursor": self.cursor.state_dict(),
            "consecutive_nonfinite": self._consecutive_nonfinite,
            "config": self.cfg.to_dict(),
        }
        write_json_durably(tmp / CONTROLLER_STATE, state)
        path = self.checkpoints.commit(tmp, step)
        logger.info("checkpoint %s written in %.1f s", path.name, time.perf_counter() - t0)
        return path

    def train_step(self, step: int) -> dict[str, Any]:
        cfg = self.cfg
        t_step = time.perf_counter()
        self._cursor_at_step_start = self.cursor.state_dict()
        prompts = [self.train_prompts[i] for i in self.cursor.next_batch()]
        groups, timing, rounds = self._sample(step, prompts)
        result = self._advantages(groups)
        t0 = time.perf_counter()
        batch = self._train_batch(result)
        train_metrics = self.learners.train(batch, step)
        timing["timing/train_s"] = time.perf_counter() - t0
        self._consecutive_nonfinite = int(train_metrics.get("consecutive_nonfinite", 0))
        check_nonfinite(step, train_metrics, cfg.learner.max_nonfinite_steps)
        self._trained_step = step
        timing |= self._sync(step)
        timing["timing/step_s"] = time.perf_counter() - t_step
        num_tokens = sum(len(c.token_ids) for g in result.groups for c in g.group.completions)
        record = {
            **result.metrics,
            **{k: v for k, v in train_metrics.items() if k != "consecutive_nonfinite"},
            **timing,
            metric_names.TOKENS_PER_S: num_tokens / max(timing["timing/rollout_s"], 1e-9),
            "throughput/samples_per_s": len(batch.advantages) / timing["timing/step_s"],
            metric_names.WEIGHTS_VERSION: float(step),
            "rollout/sampling_rounds": float(rounds),
            "data/epoch": float(self.cursor.epoch),
            **{f"faults/{k}": float(v) for k, v in self.engines.fault_stats.items()},
            **{f"faults/reward_{k}": float(v) for k, v in self.rewards.fault_stats().items()},
        }
        if cfg.logging.log_rollouts:
            from grpo_dist.rollout_log import rollout_rows, write_rollouts

            write_rollouts(self.run_dir, step, rollout_rows(step, result.groups, result.advantages.tolist()))
        return record

    # ---------------------------------------------------------------------------------------------- phases

    def _generate_and_score(
        self, step: int, prompts: list[Prompt], stream: str
    ) -> tuple[list[ScoredGroup], float, float]:
        """Rollout with rewards scored as groups arrive; returns groups in prompt order and phase times."""
        from grpo_dist.rollout.engine import SamplingSpec

        r = self.cfg.rollout
        spec = SamplingSpec(
            n=r.num_generations,
            max_tokens=self.cfg.data.max_response_length,
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            stop=tuple(r.stop),
            ignore_eos=r.ignore_eos,
        )
        min_version = max(0, step - 1 - self.cfg.sync.max_staleness)
        t0 = time.perf_counter()
        for groups in self.engines.generate(
            prompts,
            spec,
            step=step,
            stream=stream,
            min_version=min_version,
            chunks_per_engine=r.chunks_per_engine,
            recover=self._recover_engines,
        ):
            self.rewards.submit(groups)
        t_rollout = time.perf_counter() - t0
        scored = self._collect_in_order(step, prompts)
        t_reward = time.perf_counter() - t0 - t_rollout
        for s in scored:
            if len(s.group.completions) != r.num_generations:
                raise RuntimeError(
                    f"step {step}: prompt {s.group.prompt.prompt_id} got {len(s.group.completions)} completions, "
                    f"expected {r.num_generations}"
                )
        return scored, t_rollout, t_reward

    def _sample(self, step: int, prompts: list[Prompt]) -> tuple[list[ScoredGroup], dict[str, float], int]:
        """One rollout round, or with DAPO dynamic sampling as many as needed (bounded) to fill the batch
        with groups whose rewards differ."""
        a = self.cfg.algo
        groups, t_rollout, t_reward = self._generate_and_score(step, prompts, "train")
        rounds = 1
        if a.dynamic_sampling:
            keep, dropped = _split_by_signal(groups)
            while len(keep) < len(prompts) and rounds < a.max_sampling_rounds:
                extra = [self.train_prompts[i] for i in self.cursor.take(len(prompts) - len(keep))]
                more, tr, tw = self._generate_and_score(step, extra, f"train-round{rounds}")
                t_rollout, t_reward, rounds = t_rollout + tr, t_reward + tw, rounds + 1
                more_keep, more_dropped = _split_by_signal(more)
                keep += more_keep
                dropped += more_dropped
            # still short after the last round: fill with zero-signal groups (advantage 0, no gradient)
            groups = (keep + dropped)[: len(prompts)]
        return groups, {"timing/rollout_s": t_rollout, "timing/reward_s": t_reward}, rounds

    def _advantages(self, groups: list[ScoredGroup]) -> ScoredBatch:
        a = self.cfg.algo
        rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float64)  # [P, G], NaN where invalid
        valid = torch.tensor([g.valid for g in groups], dtype=torch.bool)  # [P, G]
        adv = algo.masked_group_advantages(
            torch.where(valid, rewards, torch.zeros_like(rewards)),
            valid,
            scale_by_std=a.norm_adv_by_std,
            eps=a.adv_eps,
            baseline=a.baseline,
            std_correction=a.std_correction,
        )
        return ScoredBatch(groups, adv, _rollout_metrics(groups, valid, rewards, self.cfg.data.max_response_length))

    def _train_batch(self, step: ScoredBatch) -> Any:
        from grpo_dist.learner.batch import collate

        cfg = self.cfg
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batch = collate(step.groups, step.advantages.flatten().float(), pad_token_id=pad)
        optimizer_steps = cfg.learner.ppo_epochs * (cfg.data.train_batch_size // cfg.learner.mini_batch_size)
        updates: dict[str, Any] = {}
        if cfg.learner.recompute_old_logprobs and not cfg.algo.rollout_correction.bypass and optimizer_steps > 1:
            updates["old_logprobs"] = self.learners.compute_logprobs(batch)
        if cfg.algo.kl_coef > 0:
            updates["ref_logprobs"] = self.learners.compute_logprobs(batch, reference=True)
        if updates:
            from dataclasses import replace

            batch = replace(batch, **updates)
        return batch

    # ------------------------------------------------------------------------------------------------ eval

    def evaluate(self, step: int, *, log_name: str = "eval_greedy") -> dict[str, float]:
        """pass@1 greedy, pass@1 over samples and pass@k on the held-out prompts, with the engines."""
        from grpo_dist.evaluation import eval_metrics
        from grpo_dist.rollout.engine import SamplingSpec

        e, d = self.cfg.eval, self.cfg.data
        if not self.eval_prompts:
            raise ValueError("no held-out prompts to evaluate: set data.eval_files")
        t0 = time.perf_counter()
        sampled_spec = SamplingSpec(
            n=e.num_samples,
            max_tokens=d.max_response_length,
            temperature=e.temperature,
            stop=tuple(self.cfg.rollout.stop),
        )
        greedy_spec = SamplingSpec(
            n=1, max_tokens=d.max_response_length, greedy=True, stop=tuple(self.cfg.rollout.stop)
        )
        sampled = self._score_all(step, self.eval_prompts, sampled_spec, "eval")
        greedy = self._score_all(step, self.eval_prompts, greedy_spec, "eval-greedy")
        out = eval_metrics(
            [[r > 0.5 for r in s.components[self._correctness_key()]] for s in sampled],
            e.k_values,
            greedy=[s.components[self._correctness_key()][0] > 0.5 for s in greedy],
        )
        out["timing/eval_s"] = time.perf_counter() - t0
        if self.cfg.logging.log_rollouts:
            from grpo_dist.rollout_log import rollout_rows, write_rollouts

            zeros = [[0.0] * len(s.rewards) for s in greedy]
            write_rollouts(self.run_dir, step, rollout_rows(step, greedy, zeros), name=log_name)
        return out

    def _correctness_key(self) -> str:
        """The reward component that says whether an answer is right (the first exact_match)."""
        for f in self.cfg.reward.functions:
            if f.path is None and f.name == "exact_match":
                return f.name
        return self.cfg.reward.functions[0].name

    def _score_all(self, step: int, prompts: list[Prompt], spec: Any, stream: str) -> list[ScoredGroup]:
        recover = self._recover_engines if self.weight_sync is not None else None
        for groups in self.engines.generate(prompts, spec, step=step, stream=stream, min_version=step, recover=recover):
            self.rewards.submit(groups)
        return self._collect_in_order(step, prompts)

    def _collect_in_order(self, step: int, prompts: list[Prompt]) -> list[ScoredGroup]:
        """Every submitted group, scored, in batch order; anything missing or foreign is an error."""
        scored = sorted(
            self.rewards.collect(timeout_s=self.cfg.reward.collect_timeout_s), key=lambda s: s.group.batch_index
        )
        for failure in self.rewards.drain_failures():
            logger.warning(
                "step %d: reward function %r: %s on prompt %d sample %d, handled by %s: %s",
                step,
                failure.function,
                failure.kind,
                failure.prompt_id,
                failure.sample_index,
                self.cfg.reward.failure_policy,
                failure.message,
            )
        got = [(s.group.batch_index, s.group.prompt.prompt_id) for s in scored]
        if got != [(i, p.prompt_id) for i, p in enumerate(prompts)]:
            raise RuntimeError(f"step {step}: rollout returned groups for other prompts than were sent")
        return scored

    def _log_eval(self, step: int) -> dict[str, float]:
        out = self.evaluate(step)
        self.metrics.log(step, out)
        return out


def check_nonfinite(step: int, train_metrics: dict[str, float], max_steps: int) -> None:
    """Abort once ``max_steps`` consecutive steps had their update skipped for a non-finite loss/gradient."""
    run = int(train_metrics.get("consecutive_nonfinite", 0))
    if run >= max_steps:
        raise TrainingAborted(
            f"step {step}: the loss or gradient was non-finite in {run} consecutive steps, each update skipped "
            f"(learner.max_nonfinite_steps = {max_steps}); lower learner.lr or check the rewards and data"
        )


def _split_by_signal(groups: list[ScoredGroup]) -> tuple[list[ScoredGroup], list[ScoredGroup]]:
    """Groups whose valid rewards differ (a learning signal), and those whose rewards are all equal."""
    keep: list[ScoredGroup] = []
    dropped: list[ScoredGroup] = []
    for g in groups:
        (dropped if _zero_std(g) else keep).append(g)
    return keep, dropped


def _zero_std(group: ScoredGroup) -> bool:
    values = [r for r, ok in zip(group.rewards, group.valid) if ok]
    return len(values) < 2 or all(v == values[0] for v in values)


def _rollout_metrics(
    groups: list[ScoredGroup], valid: torch.Tensor, rewards: torch.Tensor, max_response_length: int
) -> dict[str, float]:
    ok = rewards[valid]
    lengths = [len(c.token_ids) for g in groups for c in g.group.completions]
    out: dict[str, float] = {
        metric_names.REWARD_MEAN: float(ok.mean()) if ok.numel() else math.nan,
        metric_names.REWARD_STD: float(ok.std(correction=0)) if ok.numel() else math.nan,
        metric_names.REWARD_FRAC_ZERO_STD: sum(_zero_std(g) for g in groups) / len(groups),
        metric_names.RESPONSE_LEN: sum(lengths) / len(lengths),
        metric_names.RESPONSE_CLIP: sum(c.finish_reason == "length" for g in groups for c in g.group.completions)
        / len(lengths),
        "response_length/max": float(max(lengths)),
        "reward/num_masked_samples": float((~valid).sum()),
    }
    names = list(groups[0].components)
    for name in names:
        values = [v for g in groups for v, k in zip(g.components[name], g.valid) if k and math.isfinite(v)]
        out[f"reward/{name}"] = sum(values) / len(values) if values else math.nan
        out[f"reward/{name}/failures"] = float(sum(g.failures.get(name, 0) for g in groups))
    return out
