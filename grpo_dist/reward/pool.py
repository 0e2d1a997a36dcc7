"""``RewardPool``: the driver's side of reward scoring, feeding ``reward.num_workers`` ``RewardWorker`` actors.

Scoring is CPU work that should overlap with generation: the controller ``submit``s each batch of groups
as soon as an engine returns it, and ``collect``s the scores when the learner needs them. The pool sends
every submission to its least-loaded worker at once, so workers score while engines are still sampling.
A worker that dies or hangs is replaced and its unfinished work resent (``RewardPool``'s docstring says how).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from grpo_dist.faults import ActorDiedError, ActorFault, ActorId
from grpo_dist.reward.scorer import RewardFunctionError
from grpo_dist.reward.worker import reward_worker_class
from grpo_dist.supervisor import ActorSlots
from grpo_dist.types import RewardFailure, RolloutGroup, ScoredGroup

if TYPE_CHECKING:
    from grpo_dist.config import RewardConfig

__all__ = ["FAULT_STATS_KEYS", "RewardPool"]

logger = logging.getLogger(__name__)


def _driver_sys_path() -> list[str]:
    """The driver's working directory and ``sys.path``: where ``my_pkg.rewards:score`` resolves for the user."""
    out: list[str] = []
    for entry in [os.getcwd(), *sys.path]:
        path = os.path.abspath(entry) if entry else os.getcwd()
        if path not in out:
            out.append(path)
    return out


FAULT_STATS_KEYS: tuple[str, ...] = (
    "workers_restarted",
    "dead_workers",
    "hung_workers_killed",
    "batches_reassigned",
    "groups_reassigned",
)
"""The counters of ``RewardPool.fault_stats()``; all cumulative over the pool's life."""


def _first_line(exc: BaseException) -> str:
    """An exception's first line: Ray's actor-death messages run to a screenful of troubleshooting advice."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


@dataclass
class _Submission:
    """One ``submit`` call. Its groups stay on the driver until collected, so that a worker fault can resend
    them; only the current attempt's ``ref`` is ever read, so a batch is scored into the result once."""

    groups: list[RolloutGroup]
    num_samples: int
    worker: int = -1  # slot of the current attempt; -1 while (re)assigning
    ref: Any = None  # ray.ObjectRef of the current attempt
    result: tuple[list[ScoredGroup], list[RewardFailure]] | None = None
    error: BaseException | None = None  # a scoring error (not a worker fault), raised by collect

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None


@dataclass
class _Slot:
    """What the pool tracks of a worker position (the actor itself is in ``RewardPool._actors``). After a
    fault its actor is replaced; the slot (and its index) stays."""

    pid: int | None  # known once the actor answered ready()
    ready_ref: Any  # a replacement's ready() call while it starts, else None
    clock: float
    """``time.monotonic()`` from which the slot's oldest unfinished call (or its start-up) is timed. It is the
    time the driver *saw* that call become able to run, never earlier than it really did, so a late poll can
    only make the hang deadline more lenient, never kill a worker early."""


class RewardPool:
    """``reward.num_workers`` reward actors fed from the driver; needs ``ray.init`` to have been called.

    ``submit(groups)`` returns at once; ``collect(timeout_s)`` returns every submitted group scored, in
    submission order. ``extra_sys_path`` defaults to the driver's working directory and ``sys.path``, so
    user reward modules importable on the driver are importable in the workers' children too.
    Waits for the workers to start (their children import the functions) before returning, so a bad
    ``reward.functions`` entry raises ValueError here.

    Worker faults. A long run should not die because one reward actor did, so the pool repairs two faults
    itself: an actor that *dies* (Ray reports ``RayActorError`` for its calls, e.g. it was SIGKILLed or
    OOM-killed) and an actor that *hangs* (one of its calls goes unanswered for ``worker_timeout_s``, e.g.
    it was SIGSTOPped; the scorer's per-sample deadlines run inside the actor and cannot fire then). The
    actor is ``ray.kill``ed and a fresh one started in its slot, and every batch it had not returned is
    resent, in submission order, to the least-loaded worker (often the replacement). The driver keeps each
    batch until it is collected and reads only the answer of its latest attempt, so no group is lost or
    counted twice. At most ``reward.max_worker_restarts`` replacements per pool: past that budget the fault
    raises ``ActorFault`` (role ``reward``) naming the worker and the pool refuses further work, since a pool
    that keeps losing workers points at a problem that restarts will not fix. The slots, the budget and the
    kills are ``grpo_dist.supervisor.ActorSlots``'s. ``worker_timeout_s`` must exceed the longest a healthy
    worker may take for one submitted batch (up to the samples times the functions' ``timeout_s`` summed);
    the pool warns once when a batch could take longer. Reward-function failures (``RewardFunctionError``
    under policy ``fail``) and configuration errors (ValueError) are the work's errors, not the worker's:
    they propagate unchanged and cost no restart. ``fault_stats()`` counts what was repaired.
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
        """``config`` is a validated ``reward`` section: its counts, deadlines and budget are not checked again."""
        import ray

        if not ray.is_initialized():
            raise RuntimeError("RewardPool needs a running Ray: call ray.init() before creating it")
        actor_class = reward_worker_class(num_cpus_per_worker)
        path = list(extra_sys_path) if extra_sys_path is not None else _driver_sys_path()
        # what a replacement actor is started with: the same as the original
        args = (config, max_response_length, path, startup_timeout_s)
        self._start_allowance_s = startup_timeout_s + 60.0  # the child imports the functions, plus scheduling
        self._worker_timeout_s = config.worker_timeout_s
        self._timeout_per_sample_s = math.fsum(f.timeout_s for f in config.functions)
        self._warned_slow_batch = False
        self._actors = ActorSlots(
            "reward",
            label="reward worker",
            count=config.num_workers,
            start=lambda slot: actor_class.remote(*args),
            max_restarts=config.max_worker_restarts,
            budget="role",
            budget_field="reward.max_worker_restarts",
        )
        now = time.monotonic()
        self._slots: list[_Slot] = [_Slot(pid=None, ready_ref=None, clock=now) for _ in range(config.num_workers)]
        self._pending: list[_Submission] = []
        self._submitted = [0] * len(self._slots)
        self._failures: list[RewardFailure] = []
        self._faults: dict[str, int] = dict.fromkeys(FAULT_STATS_KEYS, 0)
        self._broken: ActorFault | None = None  # why the pool gave up (restart budget spent); it then refuses work
        self.worker_pids: list[int | None] = []
        """PID of each slot's actor (None while a replacement starts)."""
        try:
            pids = self._get_all([a.ready.remote() for a in self._actors.actors], self._start_allowance_s, "start")
        except BaseException:
            self.shutdown()
            raise
        for slot, pid in zip(self._slots, pids):
            slot.pid = pid
        self.worker_pids = list(pids)

    @property
    def num_workers(self) -> int:
        return len(self._slots)

    @property
    def submitted_per_worker(self) -> list[int]:
        """How many ``submit`` calls went to each worker (the dispatch decisions, for metrics and tests);
        batches resent after a fault are counted in ``fault_stats()`` instead."""
        return list(self._submitted)

    def fault_stats(self) -> dict[str, int]:
        """Worker faults repaired since the pool started (cumulative), for the trainer to log as metrics.

        ``workers_restarted``: replacement actors started (``dead_workers + hung_workers_killed``, the sum
        the ``max_worker_restarts`` budget limits); ``batches_reassigned`` / ``groups_reassigned``: submitted
        work resent after its worker's fault (a batch resent twice counts twice).
        """
        return dict(self._faults)

    def _get_all(self, refs: list[Any], timeout_s: float, what: str) -> list[Any]:
        """``ray.get`` with a deadline; a worker's exception is re-raised as itself (ValueError,
        RewardFunctionError), a dead or silent worker as ``ActorFault`` naming it."""
        import ray

        _, not_done = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if not_done:
            missing = set(not_done)
            late = [self._actors.actor_id(i) for i, r in enumerate(refs) if r in missing]
            raise ActorFault(f"{', '.join(a.name for a in late)} did not {what} within {timeout_s:g} s", actors=late)
        return [self._unwrap(ref, self._actors.actor_id(i)) for i, ref in enumerate(refs)]

    @staticmethod
    def _task_error(exc: Any, worker: ActorId) -> Exception:
        """What a worker's exception (``RayTaskError``) is raised as on the driver: the scorer's own errors
        keep their type, anything else names the worker."""
        cause = exc.cause
        if isinstance(cause, (RewardFunctionError, ValueError, TimeoutError)):
            return cause
        return ActorFault(f"{worker} raised: {exc}", actors=[worker])

    @classmethod
    def _unwrap(cls, ref: Any, worker: ActorId) -> Any:
        import ray

        try:
            return ray.get(ref, timeout=60.0)  # already done (ray.wait said so); the timeout is a safety net
        except ray.exceptions.RayTaskError as exc:
            raise cls._task_error(exc, worker) from None
        except ray.exceptions.RayActorError as exc:
            raise ActorDiedError(f"{worker} died: {_first_line(exc)}", actors=[worker]) from None

    # ---------------------------------------------------------------------------------------------------
    # Fault handling
    # ---------------------------------------------------------------------------------------------------

    def _has_unfinished(self, worker: int) -> bool:
        return any(s.worker == worker and not s.done for s in self._pending)

    def _load(self) -> list[int]:
        """Samples sent and not yet answered, per worker (as of the last harvest)."""
        load = [0] * len(self._slots)
        for s in self._pending:
            if s.worker >= 0 and not s.done:
                load[s.worker] += s.num_samples
        return load

    def _least_loaded(self) -> int:
        """The worker with the fewest samples outstanding (ties: fewest submissions, then lowest index)."""
        load = self._load()
        return min(range(len(self._slots)), key=lambda j: (load[j], self._submitted[j], j))

    def _dispatch(self, submission: _Submission, worker: int) -> None:
        slot = self._slots[worker]
        if slot.ready_ref is None and not self._has_unfinished(worker):
            slot.clock = time.monotonic()  # an idle worker starts on it now
        submission.worker = worker
        submission.ref = self._actors.actors[worker].score_and_drain.remote(submission.groups)

    def _service(self) -> None:
        """Take in what has finished, then repair hung workers: the fault handling behind submit and collect."""
        self._harvest()
        self._replace_hung()

    def _harvest(self) -> None:
        """Record every finished call without waiting: scores, errors, replacements that have started, and
        workers found dead (replaced, their unfinished batches resent)."""
        import ray

        owners: dict[Any, _Submission | int] = {}  # ref -> its submission, or the slot whose start-up it is
        for i, slot in enumerate(self._slots):
            if slot.ready_ref is not None:
                owners[slot.ready_ref] = i
        for s in self._pending:
            if not s.done:
                owners[s.ref] = s
        if not owners:
            return
        refs = list(owners)
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        finished = set(done)
        now = time.monotonic()
        dead: dict[int, str] = {}
        for ref in refs:
            if ref not in finished:
                continue
            owner = owners[ref]
            if isinstance(owner, int):
                self._take_ready(owner, ref, now, dead)
            else:
                self._take_result(owner, ref, now, dead)
        if dead:
            self._faults["dead_workers"] += len(dead)
            self._replace(dead)

    def _take_ready(self, worker: int, ref: Any, now: float, dead: dict[int, str]) -> None:
        import ray

        slot = self._slots[worker]
        try:
            pid = ray.get(ref, timeout=60.0)  # done (ray.wait said so)
        except ray.exceptions.RayActorError as exc:
            dead.setdefault(worker, f"died while starting ({_first_line(exc)})")
            return
        except ray.exceptions.RayTaskError as exc:
            # The original workers started with the same arguments, so this is no passing fault: give up.
            actor_id = self._actors.actor_id(worker)
            self._broken = ActorFault(f"the replacement {actor_id} failed to start: {exc.cause!r}", actors=[actor_id])
            raise self._broken from exc.cause
        slot.pid, slot.ready_ref, slot.clock = pid, None, now
        self.worker_pids[worker] = pid
        logger.info("reward worker slot %d: replacement actor started (pid %d)", worker, pid)

    def _take_result(self, submission: _Submission, ref: Any, now: float, dead: dict[int, str]) -> None:
        import ray

        worker = submission.worker
        try:
            groups, failures = ray.get(ref, timeout=60.0)  # done (ray.wait said so)
        except ray.exceptions.RayActorError as exc:
            dead.setdefault(worker, f"died ({_first_line(exc)})")  # resent by _replace
            return
        except ray.exceptions.RayTaskError as exc:
            submission.error = self._task_error(exc, self._actors.actor_id(worker))
        else:
            if len(groups) != len(submission.groups):
                raise RuntimeError(
                    f"reward worker {worker} returned {len(groups)} scored groups for {len(submission.groups)}"
                )
            submission.result = (groups, failures)
        self._slots[worker].clock = now  # the worker's next queued call can start now

    def _replace_hung(self) -> None:
        now = time.monotonic()
        hung: dict[int, str] = {}
        for i, slot in enumerate(self._slots):
            if slot.ready_ref is not None:
                limit, what = self._start_allowance_s, "start (startup_timeout_s + 60 s)"
            elif self._has_unfinished(i):
                limit, what = self._worker_timeout_s, "answer a call (worker_timeout_s)"
            else:
                continue
            if now - slot.clock > limit:
                hung[i] = f"did not {what} within {limit:g} s: taken for hung and killed"
        if hung:
            self._faults["hung_workers_killed"] += len(hung)
            self._replace(hung)

    def _next_hang_deadline(self) -> float:
        """The earliest ``time.monotonic()`` at which some busy or starting worker would count as hung."""
        deadline = math.inf
        for i, slot in enumerate(self._slots):
            if slot.ready_ref is not None:
                deadline = min(deadline, slot.clock + self._start_allowance_s)
            elif self._has_unfinished(i):
                deadline = min(deadline, slot.clock + self._worker_timeout_s)
        return deadline

    def _replace(self, faults: dict[int, str]) -> None:
        """Kill the faulty workers, start replacements in their slots, and resend their unfinished batches.

        All the replacements start before any batch is resent, so no batch goes to another faulty worker.
        Past the restart budget the supervisor raises ``ActorFault``; the pool then refuses further work.
        """
        now = time.monotonic()
        for worker, why in faults.items():
            slot = self._slots[worker]
            try:
                actor = self._actors.replace(worker, why=f"(pid {slot.pid}) {why}")
            except ActorFault as exc:
                self._broken = exc
                logger.error("%s", exc)
                raise
            self._slots[worker] = _Slot(pid=None, ready_ref=actor.ready.remote(), clock=now)
            self.worker_pids[worker] = None
            self._faults["workers_restarted"] += 1
        orphans = [s for s in self._pending if not s.done and s.worker in faults]
        for s in orphans:
            s.worker, s.ref = -1, None  # the old attempt's answer is never read
        for s in orphans:
            target = self._least_loaded()
            self._dispatch(s, target)
            self._faults["batches_reassigned"] += 1
            self._faults["groups_reassigned"] += len(s.groups)
            logger.info("reward: resent a batch of %d groups to worker slot %d", len(s.groups), target)

    def _warn_if_slow(self, submission: _Submission) -> None:
        """Warn once when a batch may legitimately outlast ``worker_timeout_s`` and so be taken for a hang."""
        bound = submission.num_samples * self._timeout_per_sample_s
        if bound > self._worker_timeout_s and not self._warned_slow_batch:
            self._warned_slow_batch = True
            logger.warning(
                "reward: a batch of %d samples may take up to %g s when its reward calls run to their timeout_s, "
                "longer than worker_timeout_s = %g s, past which its worker counts as hung and is replaced; "
                "raise worker_timeout_s or submit smaller batches",
                submission.num_samples,
                bound,
                self._worker_timeout_s,
            )

    # ---------------------------------------------------------------------------------------------------
    # Work
    # ---------------------------------------------------------------------------------------------------

    def submit(self, groups: Sequence[RolloutGroup]) -> None:
        """Send ``groups`` to the worker with the fewest samples outstanding (ties: fewest submissions).

        Also repairs the faults found so far, so this raises ``ActorFault`` once the restart budget is spent.
        """
        if not self._slots:
            raise RuntimeError("RewardPool.submit after shutdown()")
        self._refuse_if_broken()
        if not groups:
            return
        self._service()
        submission = _Submission(groups=list(groups), num_samples=sum(len(g.completions) for g in groups))
        worker = self._least_loaded()
        self._dispatch(submission, worker)
        self._submitted[worker] += 1
        self._pending.append(submission)
        self._warn_if_slow(submission)

    def _refuse_if_broken(self) -> None:
        if self._broken is not None:
            raise ActorFault(f"the reward pool is out of service: {self._broken}", actors=self._broken.actors)

    @property
    def num_pending(self) -> int:
        """Submissions not yet collected."""
        return len(self._pending)

    def collect(self, timeout_s: float) -> list[ScoredGroup]:
        """Every group submitted since the last collect, scored, in submission order.

        Dead and hung workers are replaced and their batches resent while it waits (see the class
        docstring). Raises TimeoutError naming the workers still busy after ``timeout_s`` (the submissions
        stay pending, so a later ``collect`` can still get them); RewardFunctionError under policy ``fail``;
        ``ActorFault`` when a fault exceeds the restart budget (the pool is then unusable: ``shutdown`` it).
        """
        import ray

        if not self._pending:
            return []
        self._refuse_if_broken()
        deadline = time.monotonic() + timeout_s
        while True:
            self._service()
            unfinished = [s for s in self._pending if not s.done]
            if not unfinished:
                break
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(self._timeout_message(unfinished, timeout_s))
            waiting = [s.ref for s in unfinished] + [x.ready_ref for x in self._slots if x.ready_ref is not None]
            # Wake for the first answer, the next hang deadline (a little past it) or collect's own deadline.
            wake = min(deadline, self._next_hang_deadline() + 0.05)
            ray.wait(waiting, num_returns=1, timeout=max(0.0, wake - now))
        pending, self._pending = self._pending, []
        scored: list[ScoredGroup] = []
        error: BaseException | None = None
        for s in pending:
            if s.error is not None:
                error = error or s.error  # the other results are consumed either way
                continue
            assert s.result is not None
            groups, failures = s.result
            scored.extend(groups)
            self._failures.extend(failures)
        if error is not None:
            raise error
        return scored

    def _timeout_message(self, unfinished: list[_Submission], timeout_s: float) -> str:
        busy = Counter(s.worker for s in unfinished)
        detail = ", ".join(
            f"worker {w} (pid {self.worker_pids[w] if self.worker_pids[w] is not None else 'starting'}): {n} batch(es)"
            for w, n in sorted(busy.items())
        )
        return (
            f"RewardPool.collect: {len(unfinished)} of {len(self._pending)} submitted batches not scored within "
            f"{timeout_s:g} s; still busy: {detail} (a worker that leaves a call unanswered for worker_timeout_s = "
            f"{self._worker_timeout_s:g} s is replaced)"
        )

    def drain_failures(self) -> list[RewardFailure]:
        """Failure records of the collected batches since the last drain."""
        out, self._failures = self._failures, []
        return out

    def worker_stats(self, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """``RewardWorker.stats()`` of every worker (queued behind their scoring work)."""
        return self._get_all([a.stats.remote() for a in self._actors.actors], timeout_s, "report stats")

    def shutdown(self, grace_s: float = 2.0) -> None:
        """Stop the workers' children (politely for ``grace_s``), then ``ray.kill`` the actors.

        A child whose actor is killed mid-call dies with it (the child asks the kernel for that), so
        nothing outlives the pool. Idempotent.
        """
        import ray

        slots, self._slots = self._slots, []
        self._pending = []
        if not slots:
            return
        closing = [a.close.remote() for a in self._actors.actors]
        ray.wait(closing, num_returns=len(closing), timeout=grace_s)
        self._actors.kill_all()
