"""The reward actor: ``RewardWorker``, a thin Ray shell over ``RewardScorer`` (the driver's side is
``grpo_dist.reward.pool.RewardPool``).

Ray is imported inside the functions that need it, and ``ray.remote`` is applied in ``reward_worker_class``
rather than at import time: importing this module (the reward package is also imported by the scorer's
child process) must neither need a running Ray nor pay for importing it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from grpo_dist.reward.scorer import RewardScorer
from grpo_dist.types import RewardFailure, RolloutGroup, ScoredGroup

if TYPE_CHECKING:
    from grpo_dist.config import RewardConfig

__all__ = ["RewardWorker", "reward_worker_class"]

logger = logging.getLogger(__name__)


class RewardWorker:
    """Body of the reward actor: a ``RewardScorer`` plus the bookkeeping the pool reads.

    A configuration error found while the child imports the functions (bad ``path``, bad ``kwargs``) is
    kept and raised by ``ready()`` instead of killing the actor in its constructor: Ray reports a method's
    exception with its original type, but a constructor's only as a generic "actor died".
    """

    def __init__(
        self,
        config: RewardConfig,
        max_response_length: int,
        extra_sys_path: Sequence[str] = (),
        startup_timeout_s: float = 120.0,
    ) -> None:
        self._error: Exception | None = None
        self._scorer: RewardScorer | None = None
        self._groups_scored = 0
        try:
            self._scorer = RewardScorer(
                config,
                max_response_length=max_response_length,
                extra_sys_path=extra_sys_path,
                startup_timeout_s=startup_timeout_s,
            )
        except (ValueError, TimeoutError, RuntimeError) as exc:
            self._error = exc

    def _live_scorer(self) -> RewardScorer:
        if self._error is not None:
            raise self._error
        if self._scorer is None:
            raise RuntimeError("reward worker is closed")
        return self._scorer

    def ready(self) -> int:
        """The actor's PID once its scorer's child has imported the functions; raises the start-up error."""
        self._live_scorer()
        return os.getpid()

    def score(self, groups: list[RolloutGroup]) -> list[ScoredGroup]:
        scored = self._live_scorer().score(groups)
        self._groups_scored += len(scored)
        return scored

    def score_and_drain(self, groups: list[RolloutGroup]) -> tuple[list[ScoredGroup], list[RewardFailure]]:
        """``score`` plus the failure records it produced, so the pool needs no second round trip."""
        scored = self.score(groups)
        return scored, self._live_scorer().drain_failures()

    def drain_failures(self) -> list[RewardFailure]:
        return self._live_scorer().drain_failures()

    def stats(self) -> dict[str, Any]:
        """PIDs of the actor and its child, and how many groups it has scored (for tests and diagnostics)."""
        return {
            "pid": os.getpid(),
            "child_pid": self._scorer.child_pid if self._scorer is not None else None,
            "groups_scored": self._groups_scored,
        }

    def close(self) -> None:
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None


def reward_worker_class(num_cpus: float = 0.0) -> Any:
    """``RewardWorker`` as a Ray actor class reserving ``num_cpus`` (0: reward work is light and shares).

    ``max_restarts=0``: Ray's own restart would bring the actor back without the work submitted to it;
    ``RewardPool`` replaces a dead worker itself and resends that work.
    """
    import ray

    return ray.remote(num_cpus=num_cpus, max_restarts=0, max_concurrency=1)(RewardWorker)
