"""``WeightSync``: publish the learner's weights to every engine, versioned, verified, with a deadline.

After each training step the learner's weights become version ``step``. A sync moves them bucket by
bucket over the configured transport; each engine reports a checksum per bucket, which must equal the
learner's, and only then does its version advance. A sync that does not finish within
``sync.timeout_s`` fails with an error that names the engines that did not answer (and which of them no
longer respond at all), never a hang.

Checksums prove what an engine received, not what it computes: every ``sync.probe_every``-th sync the
engines also score a small fixed probe and their logprobs must equal the learner's within the dtype's
tolerance (``grpo_dist.sync.probe``); otherwise the sync fails naming the engine and the worst token.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from grpo_dist.cluster import wait_all
from grpo_dist.config import Config
from grpo_dist.faults import ActorFault, ActorTimeoutError
from grpo_dist.learner.group import LearnerGroup
from grpo_dist.rollout.pool import EnginePool
from grpo_dist.sync.probe import ProbeDiff, compare, default_tolerance

logger = logging.getLogger(__name__)


class WeightSyncError(ActorFault):
    """A sync failed or an engine does not compute with the weights it was sent; names the engines at fault
    (all of them when none can be singled out)."""


class WeightSync:
    def __init__(
        self,
        cfg: Config,
        learners: LearnerGroup,
        engines: EnginePool,
        *,
        device: str,
        probe: list[list[int]] | None = None,
        dtype: str = "float32",
    ) -> None:
        """``probe``: the token sequences of the behavioural check (None disables it); ``dtype``: what
        the engines compute in, which sets the check's default tolerance."""
        self.cfg = cfg
        self.learners = learners
        self.engines = engines
        self.probe = probe if cfg.sync.probe_every > 0 else None
        self.tolerance = cfg.sync.probe_tolerance or default_tolerance(dtype)
        self.num_syncs = 0
        self.transport = cfg.sync.transport
        self.plan = learners.weight_plan()
        self.adapter_config = learners.adapter_config()  # None unless syncs carry LoRA adapters
        if cfg.model.lora.enabled and self.adapter_config is None and dtype != "float32":
            logger.warning(
                "model.lora.sync = 'merged' with engines in %s: each merged weight W0 + s * B @ A is rounded to %s, "
                "so an adapter update smaller than half a rounding step of W0 does not reach the engines (the "
                "rollout_corr/* metrics show the gap); model.lora.sync = 'adapter' applies it exactly",
                dtype,
                dtype,
            )
        self.num_bytes = sum(b.nbytes for b in self.plan)
        self.backend = "nccl" if device == "cuda" else "gloo"
        self.connect()
        what = "LoRA adapter" if self.adapter_config is not None else "weights"
        logger.info(
            "weight sync (%s): %s, %d buckets, %.2f MB", what, self.transport, len(self.plan), self.num_bytes / 1e6
        )

    def connect(self) -> None:
        """(Re)build the sync group over the current engines: at start, and after an engine was replaced
        (a collective group has a fixed membership, so a new engine needs a new group, on a new port)."""
        timeout = self.cfg.sync.timeout_s
        common: dict[str, Any] = {"transport": self.transport, "timeout_s": timeout, "backend": self.backend}
        if self.transport == "broadcast":
            host, port = self.learners.address()
            common |= {"host": host, "port": port, "world_size": 1 + self.engines.num_engines}
        refs = self.learners.init_weight_sync_refs(**common)
        refs += self.engines.init_weight_sync_refs(plan=self.plan, adapter_config=self.adapter_config, **common)
        wait_all(refs, timeout_s=timeout, what="weight-sync group set-up", actors=self.learners.ids + self.engines.ids)

    def sync(self, version: int) -> dict[str, float]:
        """Publish the learner's current weights as ``version``; returns timing metrics."""
        import ray

        verify = self.cfg.sync.verify
        timeout = self.cfg.sync.timeout_s
        start = time.perf_counter()
        deadline = start + timeout
        what = f"weight sync to version {version}"
        actors = self.learners.ids + self.engines.ids
        probing = self.probe is not None and self.num_syncs % self.cfg.sync.probe_every == 0
        self.num_syncs += 1
        learner_probe: list[Any] | None = None
        try:
            publish = self.learners.publish_refs(verify)
            if probing:  # the learner's side of the probe queues behind its publication, beside the reloads
                learner_probe = self.learners.sequence_token_logprobs_refs(self.probe)
            if self.transport == "broadcast":
                receive = self.engines.refs("receive_weights", version, None, verify)
                results = wait_all(publish + receive, timeout_s=timeout, what=what, actors=actors)
                sent = results[0][0]
                received = results[len(publish) :]
            else:
                published = wait_all(publish, timeout_s=timeout, what=what, actors=self.learners.ids)
                sent, handle = published[0]
                receive = self.engines.refs("receive_weights", version, handle, verify)
                received = wait_all(
                    receive, timeout_s=max(1.0, deadline - time.perf_counter()), what=what, actors=self.engines.ids
                )
        except TimeoutError as exc:
            raise self._missed_deadline(exc) from None
        except ray.exceptions.RayTaskError as exc:  # e.g. the learner's broadcast lost a peer that died
            raise self._stalled(f"{what}: {exc}") from exc
        if verify:
            for engine, sums in zip(self.engines.ids, received):
                if sums != sent:
                    bad = [i for i, (a, b) in enumerate(zip(sums, sent)) if a != b]
                    raise WeightSyncError(
                        f"{what}: {engine} received buckets {bad or 'of a different count'} whose checksums differ "
                        f"from the learner's; its weights are not the learner's",
                        actors=[engine],
                    )
        seconds = time.perf_counter() - start
        out = {
            "timing/sync_s": seconds,
            "sync/gb_per_s": self.num_bytes / max(seconds, 1e-9) / 1e9,
            "sync/bytes": float(self.num_bytes),
        }
        if learner_probe is not None:
            t0 = time.perf_counter()
            worst = self.check_behaviour(version, learner_refs=learner_probe)
            out["sync/probe_max_diff"] = worst.max_abs
            out["sync/probe_mean_diff"] = worst.mean_abs
            out["timing/sync_probe_s"] = time.perf_counter() - t0
        return out

    def check_behaviour(self, version: int, *, learner_refs: list[Any] | None = None) -> ProbeDiff:
        """Every engine scores the probe and must agree with the learner within the tolerance; returns the
        worst difference over the engines, or raises ``WeightSyncError`` naming the engine.
        ``learner_refs``: the learner's probe call, when it was started earlier."""
        assert self.probe is not None
        timeout = self.cfg.sync.timeout_s
        what = f"behavioural check of weights version {version}"
        learner_refs = learner_refs or self.learners.sequence_token_logprobs_refs(self.probe)
        refs = self.engines.refs("sequence_token_logprobs", self.probe)
        try:
            scored = wait_all(
                learner_refs + refs, timeout_s=timeout, what=what, actors=self.learners.ids + self.engines.ids
            )
        except TimeoutError as exc:
            raise self._missed_deadline(exc) from None
        learner, scored = scored[0], scored[len(learner_refs) :]
        worst: ProbeDiff | None = None
        for engine, logprobs in zip(self.engines.ids, scored):
            diff = compare(self.probe, logprobs, learner)
            if not diff.max_abs <= self.tolerance:
                raise WeightSyncError(
                    f"weight sync to version {version}: {engine} does not compute with the learner's weights: "
                    f"{diff.describe()}, above the tolerance {self.tolerance:g} (sync.probe_tolerance)",
                    actors=[engine],
                )
            worst = diff if worst is None or diff.max_abs > worst.max_abs else worst
        assert worst is not None
        return worst

    def _missed_deadline(self, exc: TimeoutError) -> Exception:
        """What a sync or probe past its deadline raises: the late ranks' own ``ActorTimeoutError`` when only
        learner ranks are late (they are still inside their call, and the controller must not queue a
        checkpoint behind them), else the stall, naming the engines (a stalled engine keeps the ranks
        waiting too, and is the one to name)."""
        if isinstance(exc, ActorTimeoutError) and exc.roles == {"learner"}:
            return exc
        return self._stalled(str(exc))

    def _stalled(self, message: str) -> WeightSyncError:
        """The error for a sync that did not finish: it names the engines that do not even answer a ping
        (stalled or dead), or, when every engine answers, all the sync's actors."""
        import ray

        pings = self.engines.refs("info")
        ready, _ = ray.wait(pings, num_returns=len(pings), timeout=2.0)
        silent = [a for a, p in zip(self.engines.ids, pings) if p not in ready]
        if silent:
            note = f"; not responding at all: {', '.join(a.name for a in silent)}"
            return WeightSyncError(message + note, actors=silent)
        return WeightSyncError(message, actors=self.learners.ids + self.engines.ids)
