"""Reward scoring on Ray: ``RewardWorker`` actors and the driver-side ``RewardPool`` that feeds them.

Scoring is CPU work that should overlap with generation: the controller ``submit``s each batch of groups
as soon as an engine returns it, and ``collect``s the scores when the learner needs them. The pool sends
every submission to its least-loaded worker at once, so workers score while engines are still sampling.

Ray is imported inside the functions that need it, and ``ray.remote`` is applied in ``reward_worker_class``
rather than at import time: importing this module (the reward package is also imported by the scorer's
child process) must neither need a running Ray nor pay for importing it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from grpo_dist.reward.scorer import RewardFunctionError, RewardScorer
from grpo_dist.types import RewardFailure, RolloutGroup, ScoredGroup

if TYPE_CHECKING:
    from grpo_dist.config import RewardConfig, RewardFunctionConfig

__all__ = ["RewardPool", "RewardWorker", "reward_worker_class"]

logger = logging.getLogger(__name__)


class RewardWorker:
    """Body of the reward actor: a ``RewardScorer`` plus the bookkeeping the pool reads.

    A configuration error found while the child imports the functions (bad ``path``, bad ``kwargs``) is
    kept and raised by ``ready()`` instead of killing the actor in its constructor: Ray reports a method's
    exception with its original type, but a constructor's only as a generic "actor died".
    """

    def __init__(
        self,
        functions: Sequence[RewardFunctionConfig],
        failure_policy: str,
        max_response_length: int,
        extra_sys_path: Sequence[str] = (),
        startup_timeout_s: float = 120.0,
    ) -> None:
        self._error: Exception | None = None
        self._scorer: RewardScorer | None = None
        self._groups_scored = 0
        try:
            self._scorer = RewardScorer(
                functions,
                failure_policy=failure_policy,
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

    ``max_restarts=0``: a worker that dies is reported, not silently replaced with a fresh one that would
    have lost the work submitted to the old one.
    """
    import ray

    if num_cpus < 0:
        raise ValueError(f"cluster.num_cpus_per_reward_worker = {num_cpus!r}: expected >= 0")
    return ray.remote(num_cpus=num_cpus, max_restarts=0, max_concurrency=1)(RewardWorker)


def _driver_sys_path() -> list[str]:
    """The driver's working directory and ``sys.path``: where ``my_pkg.rewards:score`` resolves for the user."""
    out: list[str] = []
    for entry in [os.getcwd(), *sys.path]:
        path = os.path.abspath(entry) if entry else os.getcwd()
        if path not in out:
            out.append(path)
    return out


@dataclass(frozen=True)
class _Submission:
    ref: Any  # ray.ObjectRef
    worker: int
    num_groups: int
    num_samples: int


class RewardPool:
    """``reward.num_workers`` reward actors fed from the driver; needs ``ray.init`` to have been called.

    ``submit(groups)`` returns at once; ``collect(timeout_s)`` returns every submitted group scored, in
    submission order. ``extra_sys_path`` defaults to the driver's working directory and ``sys.path``, so
    user reward modules importable on the driver are importable in the workers' children too.
    Waits for the workers to start (their children import the functions) before returning, so a bad
    ``reward.functions`` entry raises ValueError here.
    """

    def __init__(
        self,
        config: RewardConfig,
        *,
        max_response_length: int,
        num_cpus_per_worker: float = 0.0,
        extra_sys_path: Sequence[str] | None = None,
        startup_timeout_s: float = 120.0,
    ) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("RewardPool needs a running Ray: call ray.init() before creating it")
        if config.num_workers < 1:
            raise ValueError(f"reward.num_workers = {config.num_workers!r}: expected >= 1")
        actor_class = reward_worker_class(num_cpus_per_worker)
        path = list(extra_sys_path) if extra_sys_path is not None else _driver_sys_path()
        self._workers: list[Any] = [
            actor_class.remote(
                list(config.functions), config.failure_policy, max_response_length, path, startup_timeout_s
            )
            for _ in range(config.num_workers)
        ]
        self._pending: list[_Submission] = []
        self._finished: set[Any] = set()
        self._submitted = [0] * len(self._workers)
        self._failures: list[RewardFailure] = []
        self.worker_pids: list[int] = []
        try:
            # Each worker starts its child and imports the functions; allow for slow scheduling on top.
            self.worker_pids = self._get_all(
                [w.ready.remote() for w in self._workers], startup_timeout_s + 60.0, "start"
            )
        except BaseException:
            self.shutdown()
            raise

    @property
    def num_workers(self) -> int:
        return len(self._workers)

    @property
    def submitted_per_worker(self) -> list[int]:
        """How many ``submit`` calls went to each worker (the dispatch decisions, for metrics and tests)."""
        return list(self._submitted)

    def _get_all(self, refs: list[Any], timeout_s: float, what: str) -> list[Any]:
        """``ray.get`` with a deadline; a worker's exception is re-raised as itself (ValueError,
        RewardFunctionError), a dead worker as RuntimeError naming it."""
        import ray

        _, not_done = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if not_done:
            missing = set(not_done)
            late = [i for i, r in enumerate(refs) if r in missing]
            raise TimeoutError(f"reward worker(s) {late} did not {what} within {timeout_s:g} s")
        return [self._unwrap(ref, i) for i, ref in enumerate(refs)]

    @staticmethod
    def _unwrap(ref: Any, worker: int) -> Any:
        import ray

        try:
            return ray.get(ref, timeout=60.0)  # already done (ray.wait said so); the timeout is a safety net
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, (RewardFunctionError, ValueError, TimeoutError)):
                raise cause from None
            raise RuntimeError(f"reward worker {worker} raised: {exc}") from None
        except ray.exceptions.RayActorError as exc:
            raise RuntimeError(f"reward worker {worker} died: {exc}") from None

    def _outstanding(self) -> list[int]:
        """Samples submitted and not yet scored, per worker (polls Ray without waiting)."""
        import ray

        unfinished = [s.ref for s in self._pending if s.ref not in self._finished]
        if unfinished:
            done, _ = ray.wait(unfinished, num_returns=len(unfinished), timeout=0)
            self._finished.update(done)
        load = [0] * len(self._workers)
        for s in self._pending:
            if s.ref not in self._finished:
                load[s.worker] += s.num_samples
        return load

    def submit(self, groups: Sequence[RolloutGroup]) -> None:
        """Send ``groups`` to the worker with the fewest samples outstanding (ties: fewest submissions)."""
        if not self._workers:
            raise RuntimeError("RewardPool.submit after shutdown()")
        if not groups:
            return
        load = self._outstanding()
        worker = min(range(len(self._workers)), key=lambda j: (load[j], self._submitted[j], j))
        ref = self._workers[worker].score_and_drain.remote(list(groups))
        self._submitted[worker] += 1
        num_samples = sum(len(g.completions) for g in groups)
        self._pending.append(_Submission(ref=ref, worker=worker, num_groups=len(groups), num_samples=num_samples))

    @property
    def num_pending(self) -> int:
        """Submissions not yet collected."""
        return len(self._pending)

    def collect(self, timeout_s: float) -> list[ScoredGroup]:
        """Every group submitted since the last collect, scored, in submission order.

        Raises TimeoutError naming the workers still busy after ``timeout_s`` (the submissions stay
        pending, so a later ``collect`` can still get them); RewardFunctionError under policy ``fail``;
        RuntimeError if a worker died (the pool is then unusable: ``shutdown`` it).
        """
        import ray

        if not self._pending:
            return []
        refs = [s.ref for s in self._pending]
        _, not_done = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if not_done:
            late = set(not_done)
            busy = Counter(s.worker for s in self._pending if s.ref in late)
            detail = ", ".join(
                f"worker {w} (pid {self.worker_pids[w] if w < len(self.worker_pids) else '?'}): {n} batch(es)"
                for w, n in sorted(busy.items())
            )
            raise TimeoutError(
                f"RewardPool.collect: {len(not_done)} of {len(refs)} submitted batches not scored within "
                f"{timeout_s:g} s; still busy: {detail}"
            )
        pending, self._pending, self._finished = self._pending, [], set()
        scored: list[ScoredGroup] = []
        error: BaseException | None = None
        for s in pending:
            try:
                groups, failures = self._unwrap(s.ref, s.worker)
            except (RewardFunctionError, ValueError, TimeoutError, RuntimeError) as exc:
                error = error or exc  # keep going: the other results are consumed either way
                continue
            assert len(groups) == s.num_groups, (len(groups), s.num_groups)
            scored.extend(groups)
            self._failures.extend(failures)
        if error is not None:
            raise error
        return scored

    def drain_failures(self) -> list[RewardFailure]:
        """Failure records of the collected batches since the last drain."""
        out, self._failures = self._failures, []
        return out

    def worker_stats(self, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """``RewardWorker.stats()`` of every worker (queued behind their scoring work)."""
        return self._get_all([w.stats.remote() for w in self._workers], timeout_s, "report stats")

    def shutdown(self, grace_s: float = 2.0) -> None:
        """Stop the workers' children (politely for ``grace_s``), then ``ray.kill`` the actors.

        A child whose actor is killed mid-call dies with it (the child asks the kernel for that), so
        nothing outlives the pool. Idempotent.
        """
        import ray

        workers, self._workers = self._workers, []
        self._pending, self._finished = [], set()
        if not workers:
            return
        closing = [w.close.remote() for w in workers]
        ray.wait(closing, num_returns=len(closing), timeout=grace_s)
        for w in workers:
            try:
                ray.kill(w, no_restart=True)
            except ValueError as exc:  # not an actor handle any more / already gone
                logger.debug("ray.kill on a reward worker: %s", exc)
