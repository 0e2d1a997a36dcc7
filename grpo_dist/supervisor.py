"""One supervisor for a role's actor slots: start, name, replace within a restart budget, remove, kill.

A slot is a place in a pool (bundle ``i`` of the engines' placement group, worker position ``i`` of the
reward pool) that outlives the actor in it: a replacement takes its predecessor's slot, name and
resources. The pools decide *when* an actor is faulty (an engine's call raised ``RayActorError``, a reward
worker left a call unanswered too long); this class decides what happens next, the same way for every
role: the old actor is killed (a hung actor must not come back), and a new one starts in the slot while
the budget lasts. Past the budget, or when a pool would lose its last actor, it raises ``ActorFault``
naming the role, the actor and the config field that sets the budget, which the controller turns into a
resumable stop.

Budgets are per slot (engines: ``rollout.max_engine_restarts`` each) or per role (reward workers:
``reward.max_worker_restarts`` in all), as the config fields say.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from grpo_dist.faults import ActorFault, ActorId

logger = logging.getLogger(__name__)

__all__ = ["ActorSlots", "kill_actor"]


def kill_actor(actor: Any) -> None:
    """``ray.kill`` without Ray's restart; an actor that is already gone is fine."""
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except ValueError as exc:  # not an actor handle any more / already gone
        logger.debug("ray.kill: %s", exc)


class ActorSlots:
    """The actors of one role, one per slot, started by ``start(slot)`` (which must not block)."""

    def __init__(
        self,
        role: str,
        *,
        label: str,
        count: int,
        start: Callable[[int], Any],
        max_restarts: int,
        budget: Literal["slot", "role"],
        budget_field: str,
    ) -> None:
        self.role = role
        self.label = label
        self._start = start
        self.max_restarts = max_restarts
        self.budget = budget
        self.budget_field = budget_field
        self.slots = list(range(count))
        """The slot of each live actor, by position; a removed actor's slot is gone from the list."""
        self.actors = [start(slot) for slot in self.slots]
        self.restarts = dict.fromkeys(self.slots, 0)
        """Replacements started per slot."""

    def __len__(self) -> int:
        return len(self.actors)

    def actor_id(self, position: int) -> ActorId:
        return ActorId(self.role, f"{self.label} {self.slots[position]}")

    @property
    def ids(self) -> list[ActorId]:
        return [self.actor_id(i) for i in range(len(self.actors))]

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.ids]

    @property
    def restarts_used(self) -> int:
        return sum(self.restarts.values())

    def position_of(self, actor: Any) -> int | None:
        """Where ``actor`` is now, or None once it has been replaced or removed."""
        for i, a in enumerate(self.actors):
            if a is actor:
                return i
        return None

    def _spent(self, slot: int) -> tuple[bool, int]:
        used = self.restarts[slot] if self.budget == "slot" else self.restarts_used
        return used >= self.max_restarts, used

    def replace(self, position: int, *, why: str, context: str = "") -> Any:
        """Kill the actor at ``position`` and start a new one in its slot; returns the new handle.

        Raises ``ActorFault`` (naming the actor, why, and the budget's config field) when the budget is spent;
        the old actor is killed either way. ``context`` prefixes the messages (``step 3: ``).
        """
        slot, actor_id = self.slots[position], self.actor_id(position)
        kill_actor(self.actors[position])
        spent, used = self._spent(slot)
        if spent:
            scope = "its restart budget" if self.budget == "slot" else f"the {self.role} role's restart budget"
            raise ActorFault(
                f"{context}{actor_id} {why}; not replaced: {scope} is spent ({self.budget_field} = "
                f"{self.max_restarts}, {used} used)",
                actors=[actor_id],
            )
        self.restarts[slot] += 1
        logger.warning(
            "%s%s %s; starting a replacement (restart %d of %d%s)",
            context,
            actor_id,
            why,
            used + 1,
            self.max_restarts,
            "" if self.budget == "slot" else f" for all {self.label}s",
        )
        self.actors[position] = self._start(slot)
        return self.actors[position]

    def remove(self, position: int, *, why: str, context: str = "") -> None:
        """Kill the actor at ``position`` and give up its slot; the last actor of a role cannot go."""
        actor_id = self.actor_id(position)
        kill_actor(self.actors[position])
        if len(self.actors) == 1:
            raise ActorFault(f"{context}{actor_id} {why} and it was the last {self.label}", actors=[actor_id])
        logger.warning("%s%s %s; continuing with %d %ss", context, actor_id, why, len(self.actors) - 1, self.label)
        del self.actors[position], self.slots[position]

    def kill_all(self) -> None:
        for actor in self.actors:
            kill_actor(actor)
