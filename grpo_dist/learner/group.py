"""``LearnerGroup``: the DeepSpeed ranks as Ray actors in one placement group.

Starts ``learner.num_ranks`` actors packed into a placement group, runs their rendezvous together
(every rank must enter ``init_distributed`` at the same time), shards each step's batch across them
and fans calls out with a deadline. A rank that dies or stalls surfaces as an error naming it.
"""

from __future__ import annotations

import logging
from typing import Any

from grpo_dist.cluster import wait_all
from grpo_dist.config import Config
from grpo_dist.learner.batch import TrainBatch
from grpo_dist.learner.worker import LearnerWorker, learner_env
from grpo_dist.placement import RolePlacement
from grpo_dist.sync.plan import Bucket

logger = logging.getLogger(__name__)


class LearnerGroup:
    def __init__(self, cfg: Config, *, placement: RolePlacement, model_path: str, device: str) -> None:
        import ray

        self.cfg = cfg
        self.world_size = cfg.learner.num_ranks
        self.names = [f"learner rank {r}" for r in range(self.world_size)]
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

    # -------------------------------------------------------------------------------------------- fan-out

    def _call_one(self, rank: int, method: str, *args: Any, timeout_s: float, **kwargs: Any) -> Any:
        ref = getattr(self.actors[rank], method).remote(*args, **kwargs)
        return wait_all([ref], timeout_s=timeout_s, what=method, names=[self.names[rank]])[0]

    def _refs(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def _call_all(self, method: str, *args: Any, timeout_s: float, what: str, **kwargs: Any) -> list[Any]:
        return wait_all(self._refs(method, *args, **kwargs), timeout_s=timeout_s, what=what, names=self.names)

    def _sharded(self, method: str, batch: TrainBatch, *args: Any, what: str, **kwargs: Any) -> list[Any]:
        refs = [
            getattr(a, method).remote(batch.shard(r, self.world_size), *args, **kwargs)
            for r, a in enumerate(self.actors)
        ]
        return wait_all(refs, timeout_s=self.cfg.learner.step_timeout_s, what=what, names=self.names)

    # ----------------------------------------------------------------------------------------------- steps

    def compute_logprobs(self, batch: TrainBatch, *, reference: bool = False) -> Any:
        import torch

        parts = self._sharded("compute_logprobs", batch, reference=reference, what="logprob pass")
        return torch.cat(parts)

    def train(self, batch: TrainBatch, step: int) -> dict[str, float]:
        per_rank = self._sharded("train", batch, step, what=f"train step {step}")
        # every rank reports its shard's averages; the group's figure is their mean
        keys = set().union(*per_rank)
        return {k: sum(m.get(k, 0.0) for m in per_rank) / len(per_rank) for k in sorted(keys)}

    def sequence_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        return self._call_all(
            "sequence_logprobs", sequences, timeout_s=self.cfg.learner.step_timeout_s, what="sequence logprobs"
        )[0]

    def sequence_logprobs_refs(self, sequences: list[list[int]]) -> list[Any]:
        """``sequence_logprobs`` without waiting (every rank takes part: ZeRO-3 gathers); rank 0's result
        is the first ref's."""
        return self._refs("sequence_logprobs", sequences)

    def weight_plan(self) -> list[Bucket]:
        return self._call_one(0, "weight_plan", timeout_s=60.0)

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
