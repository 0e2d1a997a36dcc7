"""How far the rollout may run ahead of the learner, and what is too old to train on: pure functions.

Versions count updates: the engines generate with version ``v`` once the weights of step ``v`` were
synced to them (0: the initial model), and step ``s`` trains on its batch holding version ``s - 1``. A
sample generated with version ``v`` and trained on at step ``s`` is ``s - 1 - v`` versions *stale*; the
run's bound (``sync.max_staleness``, ``K``) caps that.

The controller generates batches in step order, ahead of the learner, under two rules:

* **admission**: batch ``t`` is generated only by engines holding at least ``version_floor(t, K)``
  (the same floor every request carries, so an engine below it also refuses on its own);
* **horizon**: while step ``s`` trains, the batches up to ``generation_horizon(s, K, barrier)`` may be
  generated, ``barrier`` being the next step that writes a checkpoint (nothing is in flight after it).

Under both, every batch is generated at a version fixed by the schedule (never "whatever the engines
held when a timer fired"; the exceptions are an engine replaced during an update, which gets that
update's newer weights, and partial rollouts, which publish an update as soon as it lands and so
continue samples under it: ``grpo_dist.rollout.partial``), so a run is reproducible, and one resumed
from a barrier continues it exactly;
and nothing is generated that the bound would then throw away. ``drop_stale`` is the hard stop behind them: a group
older than the bound (which the schedule does not produce) is masked out of the loss and counted.
"""

from __future__ import annotations

from dataclasses import replace

from grpo_dist.types import ScoredGroup

__all__ = ["admits", "drop_stale", "generation_horizon", "staleness", "version_floor"]


def version_floor(step: int, max_staleness: int) -> int:
    """The oldest weights version ``step``'s batch may be generated with (the learner trains on it holding
    ``step - 1``)."""
    return max(0, step - 1 - max_staleness)


def admits(step: int, *, engine_version: int, max_staleness: int) -> bool:
    """Engines holding ``engine_version`` may generate ``step``'s batch."""
    return engine_version >= version_floor(step, max_staleness)


def generation_horizon(step: int, *, max_staleness: int, barrier: int) -> int:
    """The last step whose batch may be generated while ``step``'s update runs: ``max_staleness`` steps
    ahead, and never past ``barrier`` (the first step at or after ``step`` that writes a checkpoint), so
    that the checkpoint's step leaves nothing in flight. Equal to ``step``: generate nothing ahead."""
    assert barrier >= step, (barrier, step)
    return min(step + max_staleness, barrier)


def staleness(group: ScoredGroup, *, step: int) -> int:
    """How many versions behind the learner that trains on it at ``step`` the group was generated."""
    return step - 1 - group.group.weights_version


def drop_stale(groups: list[ScoredGroup], *, step: int, max_staleness: int) -> tuple[list[ScoredGroup], int]:
    """``groups`` with every group staler than the bound masked out of the loss (its samples invalid: no
    gradient, no reward statistics), and how many groups that was."""
    out, dropped = [], 0
    for g in groups:
        if staleness(g, step=step) > max_staleness:
            out.append(replace(g, valid=[False] * len(g.valid)))
            dropped += 1
        else:
            out.append(g)
    return out, dropped
