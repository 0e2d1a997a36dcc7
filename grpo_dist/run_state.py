"""``RunState``: where a run stands between steps, in one place, and what a checkpoint's ``controller.json``
holds (with the config it was written under).

A step's batch is drawn with a ``BatchTicket`` (its step, the cursor before the draw, the version floor of
its requests); the ticket is *in flight* until the learner has trained on the batch. With
``trainer.async_mode = one_step_off`` two tickets can be in flight (the batch being trained on and the
next one being generated), in ``async`` up to ``sync.max_staleness + 1``. Whatever is in flight at a
fault or a checkpoint is put back: the cursor a checkpoint records, and the one ``rewind`` restores, is
the one before the oldest ticket in flight, so a resumed run draws those prompts again, none skipped or
repeated.

A step changes the state in one order: ``draw`` when the batch is drawn, ``trained`` when the learner
holds the step's update, ``weights_version`` when every engine holds those weights (in the overlapping
modes an engine replaced during the update gets those weights as soon as it lands, before ``trained`` is
recorded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpo_dist.async_schedule import version_floor
from grpo_dist.data.cursor import PromptCursor

CONTROLLER_STATE = "controller.json"
"""The file of a checkpoint that holds the run state."""


@dataclass(frozen=True)
class BatchTicket:
    """A batch in flight: the step that will train on it, the cursor before its prompts were drawn, and
    the lowest weights version its samples may be generated with."""

    step: int
    cursor_at_draw: dict[str, Any]
    min_version: int


@dataclass
class RunState:
    cursor: PromptCursor
    """The order in which training draws prompts, and how far it has got."""
    trained_step: int = 0
    """The last step whose update the learner holds (0: none yet)."""
    weights_version: int = 0
    """The version every engine holds: the last step whose weights were synced (0: the initial model)."""
    consecutive_nonfinite: int = 0
    """Steps in a row whose update was skipped for a non-finite loss or gradient."""
    in_flight: list[BatchTicket] = field(default_factory=list)
    """Tickets of the batches drawn and not yet trained on, oldest first."""

    @property
    def next_step(self) -> int:
        return self.trained_step + 1

    def draw(self, step: int, *, max_staleness: int) -> BatchTicket:
        """A ticket for ``step``'s batch, taken before its prompts are drawn from ``cursor``.

        Its floor lets a sample be generated with weights up to ``max_staleness`` versions older than the
        learner's when it trains on them (the learner then holds version ``step - 1``)."""
        ticket = BatchTicket(step, self.cursor.state_dict(), version_floor(step, max_staleness))
        self.in_flight.append(ticket)
        return ticket

    def trained(self, ticket: BatchTicket) -> None:
        """The learner holds ``ticket``'s update: it is no longer in flight."""
        assert self.in_flight and self.in_flight[0] == ticket, "batches are trained on in the order drawn"
        self.in_flight.pop(0)
        self.trained_step = ticket.step

    def rewind(self) -> None:
        """Put back every batch in flight: the cursor returns to before the oldest one was drawn."""
        if self.in_flight:
            self.cursor.load_state_dict(self.in_flight[0].cursor_at_draw)
            self.in_flight.clear()

    def cursor_to_resume(self) -> dict[str, Any]:
        """The cursor a resumed run starts from: before the oldest batch in flight, if any."""
        return self.in_flight[0].cursor_at_draw if self.in_flight else self.cursor.state_dict()

    def to_json(self, config: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint's record of this state (keys as written since the first checkpoint format)."""
        return {
            "step": self.trained_step,
            "weights_version": self.trained_step,  # a checkpoint's weights are those of its step
            "cursor": self.cursor_to_resume(),
            "consecutive_nonfinite": self.consecutive_nonfinite,
            "config": config,
        }

    def load(self, checkpoint: Path) -> None:
        """Continue from a checkpoint directory's ``controller.json``."""
        data = json.loads((checkpoint / CONTROLLER_STATE).read_text())
        self.cursor.load_state_dict(data["cursor"])
        self.trained_step = int(data["step"])
        self.weights_version = int(data["weights_version"])
        self.consecutive_nonfinite = int(data["consecutive_nonfinite"])
        self.in_flight.clear()
