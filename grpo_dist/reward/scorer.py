"""RewardScorer: turns RolloutGroups into ScoredGroups by running the configured reward functions.

The functions run in a child process the scorer owns (``_child.py``), never in the scorer's own process:
a reward function is arbitrary user code, and the only way to stop a call that hangs past its deadline is
to kill the process it runs in. A killed or crashed child is replaced by a fresh one on the next call.

Failures. A call that raises, runs past its deadline, returns something other than a finite real number
(or, batched, the wrong number of them), or takes the child down with it is a *failure* of that
(function, sample). ``failure_policy`` decides what happens:

* ``fail``: raise ``RewardFunctionError`` naming the function, prompt_id, sample, kind and message.
* ``mask_sample``: that completion gets ``valid[i] = False``.
* ``mask_group``: every completion of its group gets ``valid[i] = False``.

A failure never becomes a silent 0: the failed component is NaN in ``components[name][i]``, and the total
``rewards[i]`` is NaN for every completion with ``valid[i] = False`` (so ``valid[i] == isfinite(rewards[i])``
always holds and a masked sample cannot be mistaken for a real zero reward). Failures are counted per
function in ``ScoredGroup.failures`` and kept as ``RewardFailure`` records until ``drain_failures()``.
Every function still runs on every sample under the masking policies, so the counts are complete.

Deadlines. Per-sample functions get ``timeout_s`` per sample: a group is sent to the child as one request
and the child answers sample by sample, each answer due ``timeout_s`` after the previous one. A batched
function (``batched: true``) is called once per group with a deadline of ``timeout_s * len(group)``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import multiprocessing.util
import os
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, Literal

from grpo_dist.reward._child import Outcome, child_main
from grpo_dist.reward.builtins import FunctionSpec
from grpo_dist.types import RewardFailure, RolloutGroup, ScoredGroup

if TYPE_CHECKING:
    from grpo_dist.config import RewardConfig

__all__ = ["FAILURE_POLICIES", "RewardFunctionError", "RewardScorer"]

logger = logging.getLogger(__name__)

FAILURE_POLICIES: tuple[str, ...] = ("fail", "mask_sample", "mask_group")

FailureKind = Literal["exception", "timeout", "invalid"]

_MAX_KEPT_FAILURES = 10_000
"""RewardFailure records kept between drains; more are counted (``ScoredGroup.failures``) but not kept, so a
caller that never drains cannot exhaust memory."""


class RewardFunctionError(RuntimeError):
    """A reward function failed under ``reward.failure_policy = 'fail'``; ``failure`` says where and how."""

    def __init__(self, failure: RewardFailure) -> None:
        self.failure = failure
        super().__init__(
            f"reward function {failure.function!r} failed on prompt_id={failure.prompt_id}, sample "
            f"{failure.sample_index} ({failure.kind}): {failure.message} [reward.failure_policy = 'fail'; "
            "'mask_sample' or 'mask_group' would mask such samples and continue]"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Crosses Ray's actor boundary: rebuild from the record, not from the formatted message.
        return (type(self), (self.failure,))


@dataclass(frozen=True)
class _Function:
    """What the parent needs per function; the child holds the callable itself."""

    spec: FunctionSpec
    weight: float
    timeout_s: float


def _stop_process(process: BaseProcess, conn: Connection) -> None:
    """SIGKILL and reap a child. Also registered to run at interpreter exit, ahead of multiprocessing's
    own exit hook, which would otherwise wait forever for a child blocked reading its pipe."""
    conn.close()
    if process.is_alive():
        process.kill()
    process.join(timeout=5.0)


def _exit_description(exitcode: int | None) -> str:
    if exitcode is None:
        return "no exit status yet"
    if exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class _Child:
    """One spawned child process and its pipe."""

    def __init__(
        self,
        specs: list[FunctionSpec],
        extra_sys_path: list[str],
        max_response_length: int,
        startup_timeout_s: float,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe(duplex=True)
        # Not daemonic: a user's reward function may itself use multiprocessing, which daemons may not.
        self.process = ctx.Process(
            target=child_main,
            args=(child_conn, specs, extra_sys_path, max_response_length, os.getpid()),
            name="grpo-dist-reward-child",
            daemon=False,
        )
        self.process.start()
        child_conn.close()
        self._finalizer = multiprocessing.util.Finalize(
            self, _stop_process, args=(self.process, self.conn), exitpriority=10
        )
        if not self.conn.poll(startup_timeout_s):
            self.kill()
            raise TimeoutError(
                f"the reward child process did not import its reward functions within {startup_timeout_s:g} s "
                "(startup_timeout_s); does a reward module do slow work at import time?"
            )
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            self.kill()
            raise RuntimeError(
                "the reward child process died while importing the reward functions "
                f"({_exit_description(self.process.exitcode)})"
            ) from None
        if message[0] == "init_error":
            self.kill()
            raise ValueError(message[1])
        assert message[0] == "ready", message
        self.pid: int = message[1]
        self.context_params: list[list[str]] = message[2]

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        self._finalizer()  # runs _stop_process once and unregisters it

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the child to exit, then make sure it has."""
        if self.process.is_alive():
            with contextlib.suppress(OSError):  # already gone
                self.conn.send(("stop",))
            self.process.join(timeout=timeout_s)
        self.kill()

    def send(self, message: tuple[Any, ...]) -> bool:
        """False when the child is gone (its death is reported by the caller)."""
        try:
            self.conn.send(message)
        except OSError:
            return False
        return True

    def receive(self, request_id: int, deadline: float) -> tuple[int, Outcome] | Literal["timeout", "died"]:
        """The next reply to ``request_id`` before ``deadline`` (``time.monotonic``), or why there is none."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.conn.poll(remaining):
                return "timeout"
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                self.process.join(timeout=1.0)
                return "died"
            if message[0] == "result" and message[1] == request_id:
                return message[2], message[3]
            # A reply to an abandoned request cannot arrive (abandoning kills the child); skip defensively.
            logger.debug("reward scorer: dropped a stale reply %r", message[:3])


class RewardScorer:
    """Scores rollout groups with weighted reward functions run in a child process (see module docstring).

    ``config`` is the validated ``reward`` section (its ``functions`` and ``failure_policy``);
    ``max_response_length`` (``data.max_response_length``) fills the context parameter of that name.
    ``extra_sys_path`` is put at the front of the child's ``sys.path`` so that ``my_pkg.rewards:score`` can be
    imported where the driver's working directory is not on the path (inside Ray actors).
    ``startup_timeout_s`` bounds the child's import of the functions. The child starts here, so a bad
    ``path`` or ``kwargs`` raises ValueError at construction rather than on the first batch.
    One caller at a time (the child serves one request at a time); a ``RewardWorker`` actor runs with
    ``max_concurrency=1`` for that reason.
    """

    def __init__(
        self,
        config: RewardConfig,
        *,
        max_response_length: int,
        extra_sys_path: Sequence[str] = (),
        startup_timeout_s: float = 120.0,
    ) -> None:
        # ``config`` is a validated section (finite weights, positive deadlines, distinct names): not re-checked
        functions, failure_policy = config.functions, config.failure_policy
        self.failure_policy = failure_policy
        self.max_response_length = max_response_length
        self._functions = [
            _Function(
                spec=FunctionSpec(name=f.name, path=f.path, kwargs=dict(f.kwargs), batched=f.batched),
                weight=float(f.weight),
                timeout_s=float(f.timeout_s),
            )
            for f in functions
        ]
        self._extra_sys_path = [str(p) for p in extra_sys_path]
        self._startup_timeout_s = startup_timeout_s
        self._failures: list[RewardFailure] = []
        self._dropped_failures = 0
        self._request_id = 0
        self._closed = False
        self._child: _Child | None = None
        self._context_params: list[list[str]] = []
        self._ensure_child()

    # ---------------------------------------------------------------------------------------------------
    # Child management
    # ---------------------------------------------------------------------------------------------------

    def _ensure_child(self) -> _Child:
        """The running child, starting a fresh one if there is none or it exited between calls."""
        if self._closed:
            raise RuntimeError("RewardScorer.score called after close()")
        if self._child is not None and not self._child.alive():
            logger.info("reward child process (pid %s) exited between calls; starting a new one", self._child.pid)
            self._child.kill()
            self._child = None
        if self._child is None:
            self._child = _Child(
                [f.spec for f in self._functions],
                self._extra_sys_path,
                self.max_response_length,
                self._startup_timeout_s,
            )
            self._context_params = self._child.context_params
        return self._child

    def _discard_child(self) -> None:
        """Kill the child (hung, dead, or left mid-request); the next call starts a fresh one."""
        if self._child is not None:
            self._child.kill()
            self._child = None

    @property
    def child_pid(self) -> int | None:
        """PID of the current child process (None between a kill and the next call)."""
        return self._child.pid if self._child is not None else None

    def close(self) -> None:
        """Stop the child process. Idempotent; the scorer cannot score afterwards."""
        self._closed = True
        if self._child is not None:
            self._child.stop()
            self._child = None

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------------
    # Failures
    # ---------------------------------------------------------------------------------------------------

    def drain_failures(self) -> list[RewardFailure]:
        """The failure records collected since the last drain (oldest first), for the controller to log."""
        out, self._failures = self._failures, []
        if self._dropped_failures:
            logger.warning(
                "reward: %d failure records were not kept (more than %d between drains); counts are complete",
                self._dropped_failures,
                _MAX_KEPT_FAILURES,
            )
            self._dropped_failures = 0
        return out

    def _record(self, failure: RewardFailure) -> None:
        logger.debug("reward failure: %s", failure)
        if self.failure_policy == "fail":
            raise RewardFunctionError(failure)
        if len(self._failures) < _MAX_KEPT_FAILURES:
            self._failures.append(failure)
        else:
            self._dropped_failures += 1

    # ---------------------------------------------------------------------------------------------------
    # Scoring
    # ---------------------------------------------------------------------------------------------------

    def score(self, groups: Sequence[RolloutGroup]) -> list[ScoredGroup]:
        """Score each group (in order). Raises RewardFunctionError on a failure under policy ``fail``."""
        try:
            scored = [self._score_group(group) for group in groups]
        except BaseException:
            # Whatever interrupted us (RewardFunctionError, KeyboardInterrupt), the child may still be
            # working on an abandoned request: start the next call from a fresh one.
            self._discard_child()
            raise
        counts = Counter({name: n for g in scored for name, n in g.failures.items()})
        if counts:
            logger.warning(
                "reward: %d failed reward calls in %d groups (%s); policy %s",
                sum(counts.values()),
                len(groups),
                ", ".join(f"{name}: {n}" for name, n in sorted(counts.items())),
                self.failure_policy,
            )
        return scored

    def _score_group(self, group: RolloutGroup) -> ScoredGroup:
        n = len(group.completions)
        components: dict[str, list[float]] = {}
        failures: dict[str, int] = {}
        failed = [False] * n
        for index, function in enumerate(self._functions):
            values, failed_samples = self._run_function(index, group)
            components[function.spec.name] = values
            if failed_samples:
                failures[function.spec.name] = len(failed_samples)
            for i in failed_samples:
                failed[i] = True
        mask_all = self.failure_policy == "mask_group" and any(failed)
        valid = [False] * n if mask_all else [not f for f in failed]
        rewards = [
            math.fsum(f.weight * components[f.spec.name][i] for f in self._functions) if valid[i] else math.nan
            for i in range(n)
        ]
        return ScoredGroup(group=group, rewards=rewards, components=components, valid=valid, failures=failures)

    def _run_function(self, index: int, group: RolloutGroup) -> tuple[list[float], list[int]]:
        """One function over one group: its values (NaN where failed) and the failed sample indices."""
        if not group.completions:
            return [], []
        if self._functions[index].spec.batched:
            return self._run_batched(index, group)
        return self._run_samples(index, group)

    def _next_request_id(self) -> int:
        self._request_id += 1
        return self._request_id

    def _context(self, index: int, group: RolloutGroup, i: int) -> dict[str, Any]:
        completion = group.completions[i]
        available = {
            # the whole response, as data.max_response_length bounds it (a trajectory's tool tokens included)
            "response_length": completion.response_length,
            "max_response_length": self.max_response_length,
            "finish_reason": completion.finish_reason,
            "prompt": group.prompt.text,
            "trajectory": completion.turns,
        }
        return {name: available[name] for name in self._context_params[index]}

    def _failure(
        self, index: int, group: RolloutGroup, i: int, kind: FailureKind, message: str, values: list[float]
    ) -> None:
        """Record a failure of (function ``index``, sample ``i``); raises under policy ``fail``."""
        values[i] = math.nan
        self._record(
            RewardFailure(
                function=self._functions[index].spec.name,
                prompt_id=group.prompt.prompt_id,
                sample_index=i,
                kind=kind,
                message=message,
            )
        )

    def _lost_child_message(self, what: str, timeout_s: float | None) -> tuple[FailureKind, str]:
        assert self._child is not None
        if timeout_s is not None:
            return "timeout", f"{what} did not return within {timeout_s:g} s; its process was killed"
        self._child.process.join(timeout=1.0)  # reap it, for the exit status
        return "exception", (
            f"the reward child process died during {what} ({_exit_description(self._child.process.exitcode)})"
        )

    def _run_samples(self, index: int, group: RolloutGroup) -> tuple[list[float], list[int]]:
        function = self._functions[index]
        prompt = group.prompt
        n = len(group.completions)
        values = [math.nan] * n
        failed: list[int] = []
        pending = list(range(n))
        while pending:
            child = self._ensure_child()
            request_id = self._next_request_id()
            items = [
                (
                    (prompt.data_source, group.completions[i].text, prompt.ground_truth, prompt.extra_info),
                    self._context(index, group, i),
                )
                for i in pending
            ]
            lost: Literal["timeout", "died"] | None = None
            if not child.send(("samples", request_id, index, items)):
                lost = "died"
            done = 0
            while lost is None and done < len(pending):
                reply = child.receive(request_id, time.monotonic() + function.timeout_s)
                if isinstance(reply, str):
                    lost = reply
                    break
                k, (status, payload) = reply
                assert k == done, (k, done)
                i = pending[done]
                done += 1
                if status == "ok":
                    values[i] = payload
                    continue
                failed.append(i)
                self._failure(index, group, i, status, payload, values)
            if lost is None:
                break
            # The child hung or died on sample pending[done]: fail that sample, kill the child and send the
            # rest of the group to a fresh one.
            i = pending[done]
            kind, message = self._lost_child_message(
                f"{function.spec.name}(sample {i})", function.timeout_s if lost == "timeout" else None
            )
            self._discard_child()
            failed.append(i)
            pending = pending[done + 1 :]
            self._failure(index, group, i, kind, message, values)
        return values, failed

    def _run_batched(self, index: int, group: RolloutGroup) -> tuple[list[float], list[int]]:
        function = self._functions[index]
        prompt = group.prompt
        n = len(group.completions)
        values = [math.nan] * n
        child = self._ensure_child()
        request_id = self._next_request_id()
        args = (
            [prompt.data_source] * n,
            [c.text for c in group.completions],
            [prompt.ground_truth] * n,
            [prompt.extra_info] * n,
        )
        per_sample = [self._context(index, group, i) for i in range(n)]
        context = {
            name: (self.max_response_length if name == "max_response_length" else [c[name] for c in per_sample])
            for name in self._context_params[index]
        }
        timeout_s = function.timeout_s * n
        sent = child.send(("batch", request_id, index, args, context))
        reply = child.receive(request_id, time.monotonic() + timeout_s) if sent else "died"
        outcomes: list[Outcome]
        if isinstance(reply, str):
            kind, message = self._lost_child_message(
                f"batched {function.spec.name}({n} samples)", timeout_s if reply == "timeout" else None
            )
            self._discard_child()
            outcomes = [(kind, message)] * n
        else:
            status, payload = reply[1]
            outcomes = payload if status == "ok" else [(status, payload)] * n
        failed: list[int] = []
        for i, (status, payload) in enumerate(outcomes):
            if status == "ok":
                values[i] = payload
            else:
                failed.append(i)
                self._failure(index, group, i, status, payload, values)
        return values, failed
