"""The faults of a run, as types: what failed (the role and the actors) and whether the run can go on.

- ``ActorFault``: an actor of a role (``rollout``, ``reward``, ``learner``) failed in a way its pool could
  not repair: it died, missed a deadline, or its slot spent its restart budget. The controller ends every
  one the same way: a checkpoint of the last trained step where the state allows one, then
  ``TrainingAborted`` saying how to resume.
- ``ActorDiedError``: the ``ActorFault`` of actors found dead while the driver waited on them
  (``grpo_dist.cluster.wait_all``), with the cause Ray gave (a memory kill is said as such).
- ``ActorTimeoutError``: actors that did not answer within a deadline (``wait_all``). A ``TimeoutError``,
  like every deadline of the run, and it names the actors too: late learner ranks are still inside a
  call, so nothing can be asked of them (a checkpoint) until it ends.
- ``TrainingAborted``: the run stopped on a fault; the message ends with how to resume.

Standard library only: the command line imports this to tell a fault from a bug.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ROLES", "ActorDiedError", "ActorFault", "ActorId", "ActorTimeoutError", "TrainingAborted", "at_step"]

ROLES = ("rollout", "reward", "learner")
"""The roles whose actors a run supervises."""


@dataclass(frozen=True)
class ActorId:
    """One actor of a run: its role and its name in messages (``engine 1``, ``reward worker 0``)."""

    role: str
    name: str

    def __post_init__(self) -> None:
        assert self.role in ROLES, self.role

    def __str__(self) -> str:
        return self.name


class NamesActors(Exception):  # noqa: N818 - a base that says what its subclasses carry
    """An error about some of the run's actors: ``actors`` names them with their roles."""

    def __init__(self, message: str, *, actors: Sequence[ActorId]) -> None:
        super().__init__(message)
        self.actors = list(actors)

    @property
    def roles(self) -> set[str]:
        return {a.role for a in self.actors}

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.actors]


class ActorFault(NamesActors, RuntimeError):  # noqa: N818 - names what happened to the run, like TrainingAborted
    """Actors of the run failed beyond what their pool repairs."""


class ActorDiedError(ActorFault):
    """Actors died while the driver waited on them; ``killed_for_memory`` names those that Ray's memory
    monitor killed."""

    def __init__(self, message: str, *, actors: Sequence[ActorId], killed_for_memory: Sequence[str] = ()) -> None:
        super().__init__(message, actors=actors)
        self.killed_for_memory = list(killed_for_memory)

    @property
    def dead(self) -> list[str]:
        """The names of the dead actors."""
        return self.names


class ActorTimeoutError(NamesActors, TimeoutError):
    """Actors did not answer within a deadline (a ``TimeoutError``, like every deadline of the run)."""


class TrainingAborted(RuntimeError):  # noqa: N818 - a state, not a programming error
    """The run stopped on a fault it could not absorb; the message says what and how to resume."""


def at_step(step: int, exc: BaseException) -> str:
    """The fault's message led by the step it happened in, unless it names its own (a later batch's rollout
    in the overlapping modes, a train step)."""
    return str(exc) if re.match(r"(rollout of |train )?step \d+", str(exc)) else f"step {step}: {exc}"
