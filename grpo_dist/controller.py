"""The controller: it drives a run's actors through the steps, one readable step after another.

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
 advantages (grpo_dist.scored_batch, over each group's valid samples)
    │
    ▼
 LearnerGroup.train ── DeepSpeed ZeRO ranks: (old / ref logprobs), GRPO loss, optimizer steps
    │
    ▼
 WeightSync.sync ── bucketed, checksummed, probed, with a deadline ──► every engine at version = step
```

In the overlapping modes (``trainer.async_mode``) the engines generate later steps' batches while the ranks
train; ``grpo_dist.async_schedule`` says which, and with what weights (with partial rollouts an update
reaches them between segments: ``grpo_dist.rollout.partial``). The run's parts are built by
``grpo_dist.run_parts.build_run`` after ``grpo_dist.preflight`` checked its inputs; where the run stands
is one ``RunState``, which is also what a checkpoint records. Each phase is timed (``timing/*_s``); each
step's metrics go to ``metrics.jsonl``, TensorBoard and the terminal, and every completion to
``rollouts/``. A fault the pools cannot repair (``ActorFault``, a deadline) ends the
run the same way whatever its role: a checkpoint of the last trained step where the learner's state
allows one, then ``TrainingAborted`` saying how to resume.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grpo_dist import cluster, metric_names
from grpo_dist.async_schedule import admits, drop_stale, generation_horizon
from grpo_dist.checkpoint import CheckpointManager, checkpoint_name, write_json_durably
from grpo_dist.config import Config, max_staleness, segment_tokens
from grpo_dist.faults import ActorDiedError, ActorFault, ActorTimeoutError, TrainingAborted, at_step
from grpo_dist.preflight import RunInputs, check_inputs
from grpo_dist.run_parts import RunParts, build_run
from grpo_dist.run_state import CONTROLLER_STATE, BatchTicket, RunState
from grpo_dist.scored_batch import SampledBatch, score_batch, split_by_signal, staleness_metrics
from grpo_dist.train_batch import check_nonfinite, prepare_train_batch
from grpo_dist.types import Prompt, ScoredGroup

if TYPE_CHECKING:
    from grpo_dist.learner.group import PendingTrain

logger = logging.getLogger("grpo_dist")

__all__ = ["Controller", "TrainingAborted"]


class Controller:
    """Owns the actors of a run and drives the step loop. Use as a context manager: actors stop on exit."""

    def __init__(self, cfg: Config, *, run_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir or cfg.trainer.output_dir)
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", keep_last=cfg.trainer.keep_last)
        self.parts: RunParts | None = None
        self.state: RunState | None = None
        self._update_in_flight: PendingTrain | None = None
        """The learner update the engines are generating alongside (the overlapping modes), if any."""
        self._early_sync: dict[str, float] = {}
        """The figures of a step's publish that a recovery during its update already did."""

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def start(self, *, training: bool = True) -> None:
        """Check the inputs, then start Ray and the actors (``training=False``: only what evaluation needs,
        engines and reward workers)."""
        from grpo_dist.data import PromptCursor

        cfg = self.cfg
        device = cluster.resolve_device(cfg)
        inputs = check_inputs(cfg, device=device, build_embedded=True)  # before anything is written or started
        assert inputs is not None  # build_embedded: loaded, or a ConfigError was raised
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resume_from = None
        if training:
            self.checkpoints.cleanup()
            resume_from = self.checkpoints.resolve(cfg.trainer.resume)  # verified, or refused
            (self.run_dir / "config.yaml").write_text(cfg.to_yaml())
        cursor = PromptCursor(
            len(inputs.train_prompts),
            batch_size=cfg.data.train_batch_size,
            seed=cfg.trainer.seed,
            shuffle=cfg.data.shuffle,
        )
        self.state = RunState(cursor)
        if resume_from is not None:
            self.state.load(resume_from)
            logger.info("resuming from %s (step %d)", resume_from, self.state.trained_step)
        self.parts = build_run(
            cfg, self.run_dir, inputs, device=device, training=training, state=self.state, resume_from=resume_from
        )

    def shutdown(self) -> None:
        if self.parts is not None:
            self.parts.shutdown()

    # the parts a step uses, checked started
    @property
    def engines(self) -> Any:
        return self._part("engines")

    @property
    def rewards(self) -> Any:
        return self._part("rewards")

    @property
    def learners(self) -> Any:
        return self._part("learners")

    @property
    def weight_sync(self) -> Any:
        return self._part("weight_sync")

    @property
    def inputs(self) -> RunInputs:
        """The run's checked model, tokenizer and prompts."""
        assert self.parts is not None, "call start() first"
        return self.parts.inputs

    def _part(self, name: str) -> Any:
        part = getattr(self.parts, name, None)
        assert part is not None, f"{name} is not started (call start(), with training=True for the learner)"
        return part

    # ----------------------------------------------------------------------------------------------- loop

    def run(self) -> list[dict[str, Any]]:
        cfg, state = self.cfg, self._state()
        metrics = self._part("metrics")
        history = []
        first, last = state.next_step, cfg.trainer.total_steps
        if first == 1 and self.inputs.eval_prompts:
            self._log_eval(0)
        checkpoint = None
        ahead: deque[SampledBatch] = deque()  # batches generated during earlier steps, for the next ones
        for step in range(first, last + 1):
            try:
                record = self.step(ahead.popleft() if ahead else self.sample_batch(step), ahead=ahead)
            except (ActorFault, TimeoutError) as exc:
                raise self._abort(step, exc) from exc
            metrics.log(step, record)
            history.append(record)
            if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0 and step != last:
                self._log_eval(step)  # its own line: eval records and training records stay apart
            if self._saves(step):
                assert not ahead, "a checkpoint step leaves nothing in flight"
                checkpoint = self.save_checkpoint(step)
        if self.inputs.eval_prompts and first <= last:
            self._log_eval(last)
        final = self.run_dir / "final"
        shutil.rmtree(final, ignore_errors=True)
        if checkpoint is not None:  # the last step's checkpoint already holds the HF export
            shutil.copytree(checkpoint / "hf", final)
        else:  # resumed at the last step: nothing was trained in this run
            self.learners.save_hf(str(final))
        return history

    def _saves(self, step: int) -> bool:
        every, last = self.cfg.trainer.save_every, self.cfg.trainer.total_steps
        return step == last or bool(every and step % every == 0)

    def _next_barrier(self, step: int) -> int:
        """The first step at or after ``step`` that writes a checkpoint (the last step always does)."""
        every, last = self.cfg.trainer.save_every, self.cfg.trainer.total_steps
        return min(last, -(-step // every) * every) if every else last

    def _max_staleness(self) -> int:
        return max_staleness(self.cfg)

    def _state(self) -> RunState:
        assert self.state is not None, "call start() first"
        return self.state

    def _abort(self, step: int, exc: Exception) -> TrainingAborted:
        """Stop the run on a fault it cannot absorb, leaving a checkpoint to resume from where it can."""
        state = self._state()
        if isinstance(exc, ActorDiedError) and "learner" in exc.roles:
            # the dead rank held a shard of the ZeRO state: the survivors cannot rebuild it
            dead = ", ".join(a.name for a in exc.actors if a.role == "learner")
            return TrainingAborted(
                f"step {step}: {dead} died; ZeRO state cannot be rebuilt from the surviving ranks ({exc}). "
                f"{self._resume_hint()}"
            )
        if isinstance(exc, ActorTimeoutError) and "learner" in exc.roles:
            # a late rank is still inside its call: a checkpoint would wait for it, then save the state that
            # call leaves (an update may land after all) under the name of the step before
            return TrainingAborted(
                f"{at_step(step, exc)} (learner.step_timeout_s = {self.cfg.learner.step_timeout_s:g}); the ranks "
                f"are still busy, so no checkpoint of their state is written. {self._resume_hint()}"
            )
        try:
            state.rewind()  # batches drawn but not trained on go back: a resumed run draws them again
            if state.trained_step >= 1 and self.checkpoints.latest_name() != checkpoint_name(state.trained_step):
                self.save_checkpoint(state.trained_step)
        except (ActorFault, TimeoutError, OSError, RuntimeError, ValueError) as save_exc:  # never mask the first
            logger.error("step %d: could not write a checkpoint after the fault: %s", step, save_exc)
        return TrainingAborted(f"{at_step(step, exc)}. {self._resume_hint()}")

    def _resume_hint(self) -> str:
        name = self.checkpoints.latest_name()
        if name is None:
            return "No checkpoint was written yet: the run must start again."
        return f"The latest checkpoint is {name}: continue with trainer.resume=auto."

    def _recover_engines(self) -> None:
        """The controller's step after the pool replaced an engine mid-rollout: a new sync group, and the
        learner's latest weights into every engine before the lost prompts go out again. During an
        overlapped update those are the update's: the recovery waits for it and publishes its version (newer
        than the rest of the batch's, within the bound). A run without a learner (evaluation) has nothing
        newer than what the replacement loaded."""
        if self.parts is None or self.parts.weight_sync is None:
            return
        if self._update_in_flight is not None:
            self._update_in_flight.result()
        self.weight_sync.connect()
        self._publish_latest()  # (an engine that dies meanwhile is replaced too)

    def _publish_landed(self) -> None:
        """A partial rollout's segment boundary (or a batch ahead's start): a landed update reaches the
        engines now, and the samples continue under it."""
        pending = self._update_in_flight
        if pending is not None and pending.done() and self._state().weights_version < pending.step:
            pending.result()  # a failed update raises here
            self._publish_latest()

    def _publish_latest(self) -> None:
        """The newest weights into every engine: an overlapped update's (its record keeps the figures)."""
        pending = self._update_in_flight
        if pending is None:
            self._sync(self._state().weights_version)
        else:
            self._early_sync = self._sync(pending.step)

    def _sync(self, step: int) -> dict[str, float]:
        """Publish the weights of ``step`` (the learner's latest); an engine that died meanwhile is replaced
        and the sync repeated."""
        try:
            timing = self.weight_sync.sync(version=step)
        except ActorDiedError as exc:
            if exc.roles != {"rollout"}:
                raise
            for actor in exc.actors:
                self.engines.replace_failed(self.engines.ids.index(actor), step=step, reason="died during a sync")
            self.weight_sync.connect()
            timing = self.weight_sync.sync(version=step)
        self._state().weights_version = step
        return timing

    def save_checkpoint(self, step: int) -> Path:
        """Learner state, run state and an HF export, written atomically (see ``checkpoint``)."""
        state = self._state()
        assert step == state.trained_step, (step, state.trained_step)
        t0 = time.perf_counter()
        tmp = self.checkpoints.begin(step)
        self.learners.save_checkpoint(str(tmp / "learner"))
        self.learners.save_hf(str(tmp / "hf"))
        write_json_durably(tmp / CONTROLLER_STATE, state.to_json(self.cfg.to_dict()))
        path = self.checkpoints.commit(tmp, step)
        logger.info("checkpoint %s written in %.1f s", path.name, time.perf_counter() - t0)
        return path

    def train_step(self, step: int) -> dict[str, Any]:
        """One synchronous step: sample, score, train, publish; returns the step's metrics."""
        return self.step(self.sample_batch(step))

    def sample_batch(self, step: int) -> SampledBatch:
        """Draw ``step``'s prompts (with a ticket) and generate and score their groups."""
        state, started = self._state(), time.perf_counter()
        ticket = state.draw(step, max_staleness=self._max_staleness())
        prompts = [self.inputs.train_prompts[i] for i in state.cursor.next_batch()]
        groups, timing, rounds = self._sample(ticket, prompts)
        return SampledBatch(ticket, groups, timing, rounds, started, epoch=state.cursor.epoch)

    def step(self, sampled: SampledBatch, *, ahead: deque[SampledBatch] | None = None) -> dict[str, Any]:
        """Train on ``sampled`` and publish the new weights; given the queue ``ahead`` (the overlapping
        modes), the engines meanwhile generate the later steps' batches the schedule admits into it."""
        cfg, state, step = self.cfg, self._state(), sampled.ticket.step
        t_step = time.perf_counter() if sampled.prefetched else sampled.started  # a step's own sampling counts
        t_train = time.perf_counter()
        groups, dropped = drop_stale(sampled.groups, step=step, max_staleness=self._max_staleness())
        if dropped:
            logger.warning("step %d: %d group(s) older than sync.max_staleness dropped from the loss", step, dropped)
        result = score_batch(groups, cfg.algo)
        timing = dict(sampled.timing)
        batch = prepare_train_batch(result, cfg, self.learners, pad_token_id=self._pad_token_id())
        t_prepared = time.perf_counter()
        pending = self.learners.start_train(batch, step)
        self._update_in_flight = pending
        try:
            generated = self._sample_ahead(pending, ahead) if ahead is not None else 0
        finally:
            self._update_in_flight = None
        t_overlap = time.perf_counter()
        train_metrics = pending.result()
        t_trained = time.perf_counter()
        state.consecutive_nonfinite = int(train_metrics.get("consecutive_nonfinite", 0))
        check_nonfinite(step, train_metrics, cfg.learner.max_nonfinite_steps)
        state.trained(sampled.ticket)
        if state.weights_version < step:
            timing |= self._sync(step)
        else:  # a recovery during the overlap published them already
            timing |= self._early_sync
        self._early_sync = {}
        t_end = time.perf_counter()
        timing[metric_names.TIMING_TRAIN] = t_trained - t_train
        timing[metric_names.TIMING_STEP] = t_end - t_step
        ranks_busy = sum(v for k, v in train_metrics.items() if k.startswith("timing/learner_"))
        learner_busy = (t_prepared - t_train) + ranks_busy  # the logprob passes, then the update itself
        timing[metric_names.TIMING_TRAINER_IDLE] = max(0.0, 1.0 - learner_busy / timing[metric_names.TIMING_STEP])
        if generated:  # the engines waited for the ranks after generating the batches ahead
            timing[metric_names.TIMING_ROLLOUT_IDLE] = (t_trained - t_overlap) / timing[metric_names.TIMING_STEP]
        num_tokens = sum(c.num_model_tokens for g in result.groups for c in g.group.completions)  # sampled tokens
        record = {
            **result.metrics,
            **staleness_metrics(result.groups, learner_version=step - 1),
            metric_names.ASYNC_DROPPED_STALE: float(dropped),
            metric_names.ASYNC_BATCHES_AHEAD: float(generated),
            **{k: v for k, v in train_metrics.items() if k != "consecutive_nonfinite"},
            **timing,
            metric_names.TOKENS_PER_S: num_tokens / max(timing[metric_names.TIMING_ROLLOUT], 1e-9),
            metric_names.SAMPLES_PER_S: len(batch.advantages) / timing[metric_names.TIMING_STEP],
            metric_names.WEIGHTS_VERSION: float(step),
            "rollout/sampling_rounds": float(sampled.rounds),
            "data/epoch": float(sampled.epoch),
            **{f"faults/{k}": float(v) for k, v in self.engines.fault_stats.items()},
            **{f"faults/reward_{k}": float(v) for k, v in self.rewards.fault_stats().items()},
        }
        if cfg.logging.log_rollouts:
            from grpo_dist.rollout_log import rollout_rows, write_rollouts

            write_rollouts(self.run_dir, step, rollout_rows(step, result.groups, result.advantages.tolist()))
        return record

    def _sample_ahead(self, pending: PendingTrain, ahead: deque[SampledBatch]) -> int:
        """While ``pending`` (the update of its step) runs, generate into ``ahead`` every later batch the
        schedule admits (``grpo_dist.async_schedule``); returns how many. ``sync`` mode (bound 0) and a
        checkpoint step admit none. In a partial rollout an update that landed is published before each
        batch and at each segment boundary."""
        step, bound = pending.step, self._max_staleness()
        horizon = generation_horizon(step, max_staleness=bound, barrier=self._next_barrier(step))
        generated = 0
        while (target := step + len(ahead) + 1) <= horizon:
            if segment_tokens(self.cfg) is not None:
                try:
                    self._publish_landed()
                except (ActorFault, TimeoutError):
                    self._finish_before_abort(pending)  # the update landed: the abort must checkpoint it
                    raise
            if not admits(target, engine_version=self._state().weights_version, max_staleness=bound):
                break
            ahead.append(self._sample_during(pending, target))
            generated += 1
        return generated

    def _sample_during(self, pending: PendingTrain, step: int) -> SampledBatch:
        """``step``'s batch, generated while the ranks run ``pending`` (an earlier step's update). A fault
        the pools cannot repair waits for the update, so that the abort checkpoint holds the weights it
        names."""
        try:
            return replace(self.sample_batch(step), prefetched=True)
        except (ActorFault, TimeoutError):
            self._finish_before_abort(pending)
            raise

    def _finish_before_abort(self, pending: PendingTrain) -> None:
        """The update in flight lands before the run stops: the abort then checkpoints it."""
        state = self._state()
        train_metrics = pending.result()
        state.consecutive_nonfinite = int(train_metrics.get("consecutive_nonfinite", 0))
        trained = state.in_flight[0]
        assert trained.step == pending.step
        state.trained(trained)

    def _pad_token_id(self) -> int:
        tokenizer = self.inputs.tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # ---------------------------------------------------------------------------------------------- phases

    def _generate_and_score(
        self, ticket: BatchTicket, prompts: list[Prompt], stream: str
    ) -> tuple[list[ScoredGroup], float, float]:
        """Rollout with rewards scored as groups arrive; returns groups in prompt order and phase times."""
        from grpo_dist.rollout.specs import train_spec

        r, step, t0 = self.cfg.rollout, ticket.step, time.perf_counter()
        for item in self.engines.generate(
            prompts,
            train_spec(self.cfg),
            step=step,
            stream=stream,
            min_version=ticket.min_version,
            chunks_per_engine=r.chunks_per_engine,
            segment_tokens=segment_tokens(self.cfg),
        ):
            self._take(item)
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

    def _sample(self, ticket: BatchTicket, prompts: list[Prompt]) -> tuple[list[ScoredGroup], dict[str, float], int]:
        """One rollout round, or with DAPO dynamic sampling as many as needed (bounded) to fill the batch
        with groups whose rewards differ."""
        a = self.cfg.algo
        groups, t_rollout, t_reward = self._generate_and_score(ticket, prompts, "train")
        rounds = 1
        if a.dynamic_sampling:
            keep, dropped = split_by_signal(groups)
            train_prompts = self.inputs.train_prompts
            while len(keep) < len(prompts) and rounds < a.max_sampling_rounds:
                extra = [train_prompts[i] for i in self._state().cursor.take(len(prompts) - len(keep))]
                more, tr, tw = self._generate_and_score(ticket, extra, f"train-round{rounds}")
                t_rollout, t_reward, rounds = t_rollout + tr, t_reward + tw, rounds + 1
                more_keep, more_dropped = split_by_signal(more)
                keep += more_keep
                dropped += more_dropped
            # still short after the last round: fill with zero-signal groups (advantage 0, no gradient)
            groups = (keep + dropped)[: len(prompts)]
        return groups, {metric_names.TIMING_ROLLOUT: t_rollout, metric_names.TIMING_REWARD: t_reward}, rounds

    # ------------------------------------------------------------------------------------------------ eval

    def evaluate(self, step: int, *, log_name: str = "eval_greedy") -> dict[str, float]:
        """pass@1 greedy, pass@1 over samples and pass@k on the held-out prompts, with the engines."""
        from grpo_dist.held_out import evaluate

        def score(prompts: list[Prompt], spec: Any, stream: str) -> list[ScoredGroup]:
            return self._score_all(step, prompts, spec, stream)

        return evaluate(self.cfg, self.run_dir, self.inputs.eval_prompts, score, step=step, log_name=log_name)

    def _score_all(self, step: int, prompts: list[Prompt], spec: Any, stream: str) -> list[ScoredGroup]:
        for item in self.engines.generate(prompts, spec, step=step, stream=stream, min_version=step):
            self._take(item)
        return self._collect_in_order(step, prompts)

    def _take(self, item: Any) -> None:
        """What the engine pool yields: groups go to the reward workers; a replaced engine is recovered; at a
        partial rollout's segment boundary an update that landed is published."""
        from grpo_dist.rollout.partial import SegmentBoundary
        from grpo_dist.rollout.pool import EnginesReplaced

        if isinstance(item, EnginesReplaced):
            self._recover_engines()
        elif isinstance(item, SegmentBoundary):
            self._publish_landed()
        else:
            self.rewards.submit(item)

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
        self._part("metrics").log(step, out)
        return out
