"""The engine pool: N ``RolloutEngine`` actors, data-parallel over prompts.

A prompt's whole group goes to one engine (its G requests share the prompt's KV blocks through prefix
caching). Prompts are balanced across engines by estimated work (prompt + response tokens x G), and
results stream back per chunk as engines finish, so reward scoring starts before the slowest engine
is done.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from grpo_dist import cluster
from grpo_dist.cluster import wait_all
from grpo_dist.config import Config
from grpo_dist.faults import ActorFault, ActorId
from grpo_dist.placement import RolePlacement
from grpo_dist.rollout.engine import SamplingSpec, create_engine_actor, engine_env
from grpo_dist.rollout.partial import PartialGroups, SegmentBoundary, SegmentRequest, Segments
from grpo_dist.rollout.seeds import occurrences
from grpo_dist.supervisor import ActorSlots
from grpo_dist.types import Prompt, RolloutGroup

logger = logging.getLogger(__name__)


class EngineError(ActorFault):
    """An engine failed, missed its deadline or spent its restart budget; names it (role ``rollout``)."""


@dataclass(frozen=True)
class EnginesReplaced:
    """What ``EnginePool.generate`` yields when an engine died and was replaced (or dropped): the caller must
    bring every engine to the current weights before asking for the next item, when the pool resubmits the
    dead engine's prompts. The recovery is the caller's step, not the pool's."""

    actors: list[ActorId]
    """The engines that died."""


def balance(costs: list[int], num_bins: int) -> list[list[int]]:
    """Indices of ``costs`` split into ``num_bins`` lists of near-equal total cost (longest first, each to
    the least-loaded bin); each bin keeps its indices in ascending order."""
    bins: list[list[int]] = [[] for _ in range(num_bins)]
    heap = [(0, b) for b in range(num_bins)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, b = heapq.heappop(heap)
        bins[b].append(i)
        heapq.heappush(heap, (load + costs[i], b))
    return [sorted(b) for b in bins]


def serves_adapters(cfg: Config) -> bool:
    """The engines serve the base with a LoRA adapter (else they hold whole weights, merged or trained)."""
    return cfg.model.lora.enabled and cfg.model.lora.sync == "adapter"


def multi_turn_settings(cfg: Config) -> dict[str, Any] | None:
    """The engines' ``rollout.multi_turn`` settings (None: one answer per sample)."""
    import dataclasses

    from grpo_dist.rollout.multi_turn import MultiTurnSettings

    mt = cfg.rollout.multi_turn
    if not mt.enabled:
        return None
    return {f.name: getattr(mt, f.name) for f in dataclasses.fields(MultiTurnSettings)}


def chunk(items: list[Any], num_chunks: int) -> list[list[Any]]:
    size = -(-len(items) // max(1, num_chunks))
    return [items[i : i + size] for i in range(0, len(items), size)] if items else []


class EnginePool:
    def __init__(
        self,
        cfg: Config,
        *,
        placement: RolePlacement,
        model_path: str,
        device: str,
        max_model_len: int,
        initial_version: int = 0,
        initial_adapter: str | None = None,
    ) -> None:
        """Start the engine actors in their placement group (without waiting: see ``wait_ready``). With
        ``model.lora.sync: adapter`` they serve the base ``model_path`` with a LoRA adapter (``initial_adapter``:
        a resumed run's)."""
        self.cfg = cfg
        r = cfg.rollout
        self.placement = placement
        self._device = device
        self._engine_kwargs: dict[str, Any] = {
            "model_path": model_path,
            "dtype": engine_dtype(cfg.model.dtype, device),
            "device": device,
            "max_model_len": max_model_len,
            "seed": cfg.trainer.seed,
            "tensor_parallel_size": r.tensor_parallel_size,
            "kv_cache_gib": r.kv_cache_gib,
            "gpu_memory_utilization": r.gpu_memory_utilization,
            "enforce_eager": r.enforce_eager,
            "initial_version": initial_version,
            "lora_rank": cfg.model.lora.rank if serves_adapters(cfg) else 0,
            "initial_adapter": initial_adapter,
            "multi_turn": multi_turn_settings(cfg),
        }
        # slot i is bundle i of the placement group; a restarted engine takes its predecessor's slot
        self.supervisor = ActorSlots(
            "rollout",
            label="engine",
            count=r.num_engines,
            start=self._start,
            max_restarts=r.max_engine_restarts,
            budget="slot",
            budget_field="rollout.max_engine_restarts",
        )
        self.fault_stats = {"engines_restarted": 0, "engines_removed": 0, "chunks_resubmitted": 0}

    def _start(self, slot: int) -> Any:
        cpus = self.placement.spec.actor_cpus
        cpu_ids = cluster.cpu_ids_for(slot, cpus) if self._device == "cpu" else None
        return create_engine_actor(
            options=self.placement.options(slot),
            env=engine_env(device=self._device, cpu_ids=cpu_ids),
            engine_index=slot,
            **self._engine_kwargs,
        )

    @property
    def actors(self) -> list[Any]:
        """The live engine actors, by position (``WeightSync`` addresses them this way)."""
        return self.supervisor.actors

    @property
    def ids(self) -> list[ActorId]:
        return self.supervisor.ids

    @property
    def names(self) -> list[str]:
        return self.supervisor.names

    @property
    def num_engines(self) -> int:
        return len(self.supervisor)

    @property
    def dtype(self) -> str:
        """What the engines compute in (a torch dtype name)."""
        return self._engine_kwargs["dtype"]

    def wait_ready(self) -> list[dict[str, Any]]:
        return self.call_all("info", timeout_s=self.cfg.rollout.request_timeout_s, what="engine start-up")

    def refs(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """``method`` called on every engine without waiting; the refs are in the order of ``ids``."""
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def init_weight_sync_refs(self, *, plan: Any, **common: Any) -> list[Any]:
        """Every engine joins the weight-sync group as rank 1 + its position (learner rank 0 is the root)."""
        return [a.init_weight_sync.remote(plan=plan, rank=1 + i, **common) for i, a in enumerate(self.actors)]

    def call_all(self, method: str, *args: Any, timeout_s: float, what: str, **kwargs: Any) -> list[Any]:
        return wait_all(self.refs(method, *args, **kwargs), timeout_s=timeout_s, what=what, actors=self.ids)

    def replace_failed(self, position: int, *, step: int, reason: str) -> None:
        """An engine died: restart it in its slot (``rollout.on_engine_failure: restart``, within
        ``rollout.max_engine_restarts``) or drop it from the pool (``shrink``); the supervisor's ``ActorFault``
        when neither is possible. The caller must then bring the engines' weights back to the current version."""
        context = f"step {step}: "
        if self.cfg.rollout.on_engine_failure == "shrink":
            self.supervisor.remove(position, why=reason, context=context)
            self.fault_stats["engines_removed"] += 1
            return
        actor = self.supervisor.replace(position, why=reason, context=context)
        self.fault_stats["engines_restarted"] += 1
        actor_id = self.supervisor.actor_id(position)
        wait_all(
            [actor.info.remote()],
            timeout_s=self.cfg.rollout.request_timeout_s,
            what=f"restart of {actor_id}",
            actors=[actor_id],
        )

    def generate(
        self,
        prompts: list[Prompt],
        spec: SamplingSpec,
        *,
        step: int,
        stream: str,
        min_version: int,
        chunks_per_engine: int = 1,
        segment_tokens: int | None = None,
    ) -> Iterator[list[RolloutGroup] | EnginesReplaced | SegmentBoundary]:
        """Yield lists of groups as engines finish them; every prompt's group arrives exactly once.

        When an engine dies it is replaced (or, after a shrink, dropped) and ``EnginesReplaced`` is yielded;
        the dead engine's unfinished prompts are resubmitted when the caller, having brought every engine
        to the current weights, asks for the next item. Seeds depend on the prompt and sample, not on the
        engine, so the result equals a fault-free one.

        ``segment_tokens`` (a partial rollout, ``grpo_dist.rollout.partial``): each engine call generates at
        most that many tokens per sample; after each call a ``SegmentBoundary`` is yielded, and its
        unfinished samples go back to the same engine, as prompt + tokens so far, when the caller (which may
        have published newer weights meanwhile) asks for the next item.
        """
        if segment_tokens is not None:
            yield from self._generate_in_segments(
                prompts, spec, step=step, stream=stream, min_version=min_version,
                chunks_per_engine=chunks_per_engine, segment_tokens=segment_tokens,
            )  # fmt: skip
            return
        costs = [(len(p.token_ids) + spec.max_tokens) * spec.n for p in prompts]
        repeats = occurrences(p.prompt_id for p in prompts)
        pending: dict[Any, tuple[Any, list[int]]] = {}  # ref -> (actor, indices of prompts)

        def send(actor: Any, part: list[int]) -> None:
            ref = actor.generate.remote(
                [prompts[i] for i in part],
                spec,
                run_seed=self.cfg.trainer.seed,
                stream=stream,
                step=step,
                min_version=min_version,
                batch_indices=part,
                occurrences=[repeats[i] for i in part],
            )
            pending[ref] = (actor, part)

        def resubmit(indices: list[int]) -> None:
            indices = sorted(indices)
            self._submit(indices, costs=[costs[i] for i in indices], send=send, chunks_per_engine=chunks_per_engine)

        def on_result(actor: Any, part: list[int], groups: list[RolloutGroup]) -> Iterator[list[RolloutGroup]]:
            yield groups

        resubmit(list(range(len(prompts))))
        yield from self._stream(pending, resubmit, on_result, step=step)

    def _generate_in_segments(
        self,
        prompts: list[Prompt],
        spec: SamplingSpec,
        *,
        step: int,
        stream: str,
        min_version: int,
        chunks_per_engine: int,
        segment_tokens: int,
    ) -> Iterator[list[RolloutGroup] | EnginesReplaced | SegmentBoundary]:
        """``generate`` for a partial rollout: one engine call per segment of each sample."""
        samples = PartialGroups(
            prompts, n=spec.n, max_tokens=spec.max_tokens, occurrences=occurrences(p.prompt_id for p in prompts)
        )
        pending: dict[Any, tuple[Any, list[SegmentRequest]]] = {}  # ref -> (actor, its requests)

        def send(actor: Any, requests: list[SegmentRequest]) -> None:
            ref = actor.generate_segments.remote(
                requests,
                spec,
                run_seed=self.cfg.trainer.seed,
                stream=stream,
                step=step,
                min_version=min_version,
                segment_tokens=segment_tokens,
            )
            pending[ref] = (actor, requests)

        def resubmit(requests: list[SegmentRequest]) -> None:
            # a group's samples stay together on one engine: they share the prompt's KV blocks
            by_group: dict[int, list[SegmentRequest]] = {}
            for r in sorted(requests, key=lambda r: r.key):
                by_group.setdefault(r.batch_index, []).append(r)
            groups = list(by_group.values())
            costs = [sum(samples.cost(r) for r in g) for g in groups]

            def send_groups(actor: Any, part: list[list[SegmentRequest]]) -> None:
                send(actor, [r for g in part for r in g])

            self._submit(groups, costs=costs, send=send_groups, chunks_per_engine=chunks_per_engine)

        def on_result(
            actor: Any, requests: list[SegmentRequest], answer: Segments
        ) -> Iterator[list[RolloutGroup] | SegmentBoundary]:
            whole, more = samples.add(requests, answer)
            if whole:
                yield whole
            if more:
                yield SegmentBoundary(answer.engine_index)
                if self.supervisor.position_of(actor) is None:  # replaced meanwhile (it died in a sync)
                    resubmit(more)
                else:
                    send(actor, more)  # the same engine: its prefix cache holds the samples unless weights changed

        resubmit(samples.first_requests())
        yield from self._stream(pending, resubmit, on_result, step=step)

    def _submit(
        self, work: list[Any], *, costs: list[int], send: Callable[[Any, list[Any]], None], chunks_per_engine: int
    ) -> None:
        """``work`` (prompt indices, or segment requests) balanced over the engines by ``costs``, each engine's
        share sent as ``chunks_per_engine`` calls."""
        for position, share in enumerate(balance(costs, self.num_engines)):
            for part in chunk([work[i] for i in share], chunks_per_engine):
                send(self.actors[position], part)

    def generate_all(self, prompts: list[Prompt], spec: SamplingSpec, **kwargs: Any) -> list[RolloutGroup]:
        """Every group of ``generate``, for a caller that has no newer weights to give a replaced engine
        (benchmarks, the conformance matrix): an engine's death is an ``EngineError`` there."""
        groups: list[RolloutGroup] = []
        for item in self.generate(prompts, spec, **kwargs):
            if isinstance(item, EnginesReplaced):
                raise EngineError(f"{', '.join(map(str, item.actors))} died during the rollout", actors=item.actors)
            if not isinstance(item, SegmentBoundary):
                groups += item
        return groups

    def _stream(
        self,
        pending: dict[Any, tuple[Any, list[Any]]],
        resubmit: Callable[[list[Any]], None],
        on_result: Callable[[Any, list[Any], Any], Iterator[Any]],
        *,
        step: int,
    ) -> Iterator[Any]:
        """``generate``'s loop over the calls in ``pending`` (ref -> (actor, its work); it empties it): each
        result goes through ``on_result``, which yields what the caller gets (and may send more calls); what
        a dead engine held goes back through ``resubmit``. Whatever is pending is cancelled if the caller stops
        early (an error in its recovery, an abort)."""
        import ray

        try:
            deadline = time.monotonic() + self.cfg.rollout.request_timeout_s  # for the whole rollout
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
                if not ready:
                    late = {self._id_of(a) for a, _ in pending.values()}
                    raise EngineError(
                        f"rollout of step {step}: no result within {self.cfg.rollout.request_timeout_s:g} s from "
                        f"{', '.join(sorted(a.name for a in late))}",
                        actors=sorted(late, key=lambda a: a.name),
                    )
                ref = ready[0]
                actor, work = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError:
                    lost = work + [w for a, ws in list(pending.values()) if a is actor for w in ws]
                    for other in [r for r, (a, _) in pending.items() if a is actor]:
                        del pending[other]
                    position = self.supervisor.position_of(actor)
                    if position is not None:  # (a sync in the caller's boundary step may have replaced it already)
                        dead = self._id_of(actor)
                        self.replace_failed(position, step=step, reason="died during the rollout")
                        yield EnginesReplaced([dead])
                    self.fault_stats["chunks_resubmitted"] += 1
                    resubmit(lost)
                    # the resubmitted work gets a whole deadline: the recovery may have waited (for an update in flight)
                    deadline = time.monotonic() + self.cfg.rollout.request_timeout_s
                    continue
                except ray.exceptions.RayTaskError as exc:
                    actor_id = self._id_of(actor)
                    raise EngineError(f"rollout of step {step}: {actor_id} failed: {exc}", actors=[actor_id]) from exc
                yield from on_result(actor, work, result)
        finally:
            for ref in pending:
                ray.cancel(ref)

    def _id_of(self, actor: Any) -> ActorId:
        position = self.supervisor.position_of(actor)
        return self.supervisor.actor_id(position) if position is not None else ActorId("rollout", "a replaced engine")

    def shutdown(self) -> None:
        self.supervisor.kill_all()
        self.placement.remove()


def engine_dtype(name: str, device: str) -> str:
    """The torch dtype name engines compute in for ``model.dtype = name`` on ``device`` (``auto``: bfloat16
    on GPUs, float32 on CPUs)."""
    if name == "auto":
        return "bfloat16" if device == "cuda" else "float32"
    return name
