"""``LearnerGroup``: the DeepSpeed ranks as Ray actors in one placement group.

Starts ``learner.num_ranks`` actors packed into a placement group, runs their rendezvous together
(every rank must enter ``init_distributed`` at the same time), cuts each step's batch into every rank's
work (``learner.work``: sequences balanced by tokens, the same micro-batches for every pass of a step)
and fans calls out with a deadline. A rank that dies or stalls surfaces as an error naming it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from grpo_dist.cluster import wait_all
from grpo_dist.config import Config
from grpo_dist.faults import ActorDiedError, ActorId
from grpo_dist.learner.batch import TrainBatch
from grpo_dist.learner.work import MicroBatching, RankWork, merge_rows, plan_padding, split_step
from grpo_dist.learner.worker import CONSECUTIVE_NONFINITE, LOSS_TOKENS, LearnerWorker, learner_env
from grpo_dist.metric_names import (
    LEARNER_GRAD_NORM,
    LEARNER_LOSS,
    LEARNER_LR,
    LEARNER_MICRO_BATCHES_PER_RANK,
    LEARNER_NUM_SKIPPED_UPDATES,
    LEARNER_PADDING_FRACTION,
    LEARNER_PADDING_SAVED_FRACTION,
)
from grpo_dist.placement import RolePlacement
from grpo_dist.sync.plan import Bucket

logger = logging.getLogger(__name__)


class LearnerGroup:
    def __init__(self, cfg: Config, *, placement: RolePlacement, model_path: str, device: str) -> None:
        import ray

        self.cfg = cfg
        self.world_size = cfg.learner.num_ranks
        self.ids = [ActorId("learner", f"learner rank {r}") for r in range(self.world_size)]
        self.names = [a.name for a in self.ids]
        self.placement = placement
        actor_cls = ray.remote(LearnerWorker)
        self.actors = [
            actor_cls.options(
                **placement.options(r), runtime_env={"env_vars": learner_env(device)}, max_restarts=0
            ).remote(cfg=cfg, rank=r, world_size=self.world_size, model_path=model_path, device=device)
            for r in range(self.world_size)
        ]
        timeout = cfg.learner.step_timeout_s
        addr, port = self._call_one(0, "address", timeout_s=timeout)
        infos = self._call_all("setup", addr, port, timeout_s=timeout, what="learner setup")
        logger.info("learner group up: %s", infos)
        self.packing = bool(infos[0]["packing"])
        lc = cfg.learner
        cut = (
            f"at most {lc.max_tokens_per_micro_batch} tokens (learner.micro_batch_size is not used)"
            if lc.max_tokens_per_micro_batch
            else f"{lc.micro_batch_size} sequences"
        )
        logger.info("learner micro-batches: %s per rank and pass, %s", cut, "packed" if self.packing else "padded")

    # -------------------------------------------------------------------------------------------- fan-out

    def _call_one(self, rank: int, method: str, *args: Any, timeout_s: float, **kwargs: Any) -> Any:
        ref = getattr(self.actors[rank], method).remote(*args, **kwargs)
        return wait_all([ref], timeout_s=timeout_s, what=method, actors=[self.ids[rank]])[0]

    def _refs(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def _call_all(self, method: str, *args: Any, timeout_s: float, what: str, **kwargs: Any) -> list[Any]:
        return wait_all(self._refs(method, *args, **kwargs), timeout_s=timeout_s, what=what, actors=self.ids)

    def split(self, batch: TrainBatch) -> list[RankWork]:
        """Every rank's work for ``batch``: deterministic, so each pass of a step gets the same cut."""
        lc = self.cfg.learner
        cut = MicroBatching(
            max_tokens=lc.max_tokens_per_micro_batch,
            max_sequences=None if lc.max_tokens_per_micro_batch else lc.micro_batch_size,
            padded=not self.packing,
        )
        works = split_step(
            batch,
            num_ranks=self.world_size,
            num_minibatches=self.cfg.data.train_batch_size // lc.mini_batch_size,
            cut=cut,
            loss_agg_mode=self.cfg.algo.loss_agg_mode,
        )
        return works

    def _per_rank(self, method: str, works: list[RankWork], *args: Any, what: str, **kwargs: Any) -> list[Any]:
        refs = [getattr(a, method).remote(w, *args, **kwargs) for a, w in zip(self.actors, works)]
        return self._wait_ranks(refs, what=what)

    def _wait_ranks(self, refs: list[Any], *, what: str, timeout_s: float | None = None) -> list[Any]:
        """The ranks' answers within ``timeout_s`` (default ``learner.step_timeout_s``)."""
        timeout_s = self.cfg.learner.step_timeout_s if timeout_s is None else timeout_s
        try:
            return wait_all(refs, timeout_s=timeout_s, what=what, actors=self.ids)
        except ActorDiedError as exc:
            if not exc.killed_for_memory:
                raise
            raise ActorDiedError(
                f"{exc}. {memory_advice(self.cfg)}", actors=exc.actors, killed_for_memory=exc.killed_for_memory
            ) from exc

    # ----------------------------------------------------------------------------------------------- steps

    def compute_logprobs(self, batch: TrainBatch, *, reference: bool = False) -> Any:
        works = self.split(batch)
        parts = self._per_rank("compute_logprobs", works, reference=reference, what="logprob pass")
        return merge_rows(parts, works, batch.num_sequences, batch.input_ids.shape[1] - 1)

    def train(self, batch: TrainBatch, step: int) -> dict[str, float]:
        return self.start_train(batch, step).result()

    def start_train(self, batch: TrainBatch, step: int) -> PendingTrain:
        """Send the step's update to every rank and return at once; ``result()`` waits for it (with the
        step deadline) and gives the group's metrics. Calls to the ranks made meanwhile queue behind the
        update: a weight publication would send the updated weights."""
        works = self.split(batch)
        refs = [a.train.remote(w, step) for a, w in zip(self.actors, works)]
        return PendingTrain(self, refs, works, batch, step)

    def sequence_token_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        return self._call_all(
            "sequence_token_logprobs",
            sequences,
            timeout_s=self.cfg.learner.step_timeout_s,
            what="sequence token logprobs",
        )[0]

    def sequence_token_logprobs_refs(self, sequences: list[list[int]]) -> list[Any]:
        """``sequence_token_logprobs`` without waiting (every rank takes part: ZeRO-3 gathers); rank 0's result
        is the first ref's."""
        return self._refs("sequence_token_logprobs", sequences)

    def weight_plan(self) -> list[Bucket]:
        return self._call_one(0, "weight_plan", timeout_s=60.0)

    def adapter_config(self) -> dict[str, Any] | None:
        return self._call_one(0, "adapter_config", timeout_s=60.0)

    def address(self) -> tuple[str, int]:
        return self._call_one(0, "address", timeout_s=60.0)

    def init_weight_sync_refs(self, **kwargs: Any) -> list[Any]:
        return self._refs("init_weight_sync", **kwargs)

    def publish_refs(self, verify: bool) -> list[Any]:
        return self._refs("publish_weights", verify)

    def save_checkpoint(self, path: str) -> None:
        self._call_all("save_checkpoint", path, timeout_s=self.cfg.learner.step_timeout_s, what="checkpoint save")

    def load_checkpoint(self, path: str, *, version: int, consecutive_nonfinite: int) -> None:
        self._call_all(
            "load_checkpoint",
            path,
            version,
            consecutive_nonfinite,
            timeout_s=self.cfg.learner.step_timeout_s,
            what="checkpoint load",
        )

    def save_hf(self, path: str) -> str:
        return self._call_all("save_hf", path, timeout_s=self.cfg.learner.step_timeout_s, what="save")[0]

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.placement.remove()


class PendingTrain:
    """A learner update in progress (``LearnerGroup.start_train``); ``result()`` once, or many times."""

    def __init__(self, group: LearnerGroup, refs: list[Any], works: list[RankWork], batch: TrainBatch, step: int):
        self._group, self._refs, self._works, self._batch, self.step = group, refs, works, batch, step
        self._deadline = time.monotonic() + group.cfg.learner.step_timeout_s  # from the start, not the first wait
        self._metrics: dict[str, float] | None = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        """Every rank has answered (or the update already failed): ``result()`` returns without waiting."""
        import ray

        if self._metrics is not None or self._error is not None:
            return True
        ready, _ = ray.wait(self._refs, num_returns=len(self._refs), timeout=0)
        return len(ready) == len(self._refs)

    def result(self) -> dict[str, float]:
        """The group's metrics; a failure (a rank died, the deadline passed) is raised again on every call,
        without waiting a second time."""
        if self._error is not None:
            raise self._error
        if self._metrics is None:
            try:
                per_rank = self._group._wait_ranks(
                    self._refs, what=f"train step {self.step}", timeout_s=max(0.0, self._deadline - time.monotonic())
                )
            except BaseException as exc:
                self._error = exc
                raise
            out = combine_rank_metrics(per_rank)
            # what the padded path would have computed as padding in these micro-batches (packing saves it)
            padding = plan_padding(self._batch, self._works)
            out[LEARNER_PADDING_FRACTION] = padding if not self._group.packing else 0.0
            out[LEARNER_PADDING_SAVED_FRACTION] = padding if self._group.packing else 0.0
            out[LEARNER_MICRO_BATCHES_PER_RANK] = float(self._works[0].num_micro_batches)
            self._metrics = out
        return self._metrics


def memory_advice(cfg: Config) -> str:
    """What to change when a learner rank was killed for memory, with the values the run used."""
    lc = cfg.learner
    if lc.max_tokens_per_micro_batch:
        cut = f"lower learner.max_tokens_per_micro_batch (now {lc.max_tokens_per_micro_batch})"
    else:
        cut = (
            f"lower learner.micro_batch_size (now {lc.micro_batch_size}) or set a token budget, "
            "learner.max_tokens_per_micro_batch"
        )
    extra = "" if lc.gradient_checkpointing else ", or set learner.gradient_checkpointing=true"
    return f"A learner rank ran out of memory: {cut}{extra}"


#: rank metrics that are already the group's figure on every rank, or a per-rank share the mean recombines
_RANK_MEAN_KEYS = (LEARNER_LOSS, LEARNER_GRAD_NORM, LEARNER_LR, LEARNER_NUM_SKIPPED_UPDATES, CONSECUTIVE_NONFINITE)


def combine_rank_metrics(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """The group's metrics from each rank's: token-averaged metrics weighted by each rank's loss tokens
    (ranks hold different numbers of tokens), the others (global already, shares of the loss that sum to
    world_size x the loss, or a rank's seconds in each part of the step) as the mean over ranks."""
    weights = [m.get(LOSS_TOKENS, 0.0) for m in per_rank]
    total = sum(weights)
    keys = set().union(*per_rank) - {LOSS_TOKENS}
    out: dict[str, float] = {}
    for k in sorted(keys):
        values = [m.get(k, 0.0) for m in per_rank]
        if k in _RANK_MEAN_KEYS or k.startswith(("rollout_corr/", "timing/")) or total == 0:
            out[k] = sum(values) / len(values)
        else:
            out[k] = sum(v * w for v, w in zip(values, weights)) / total
    out[LOSS_TOKENS] = total
    return out
