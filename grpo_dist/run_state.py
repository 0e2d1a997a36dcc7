"""``RunState``: where a run stands between steps, in one place, and what a checkpoint's ``controller.json``
holds (with the config it was written under).

A step changes it in one order: the cursor advances when the step draws its prompts; ``trained_step``
when the learner holds the step's update; ``weights_version`` when every engine holds those weights. A
fault between the first two puts the cursor back (``rewind``), so a resumed run draws the same prompts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpo_dist.data.cursor import PromptCursor

CONTROLLER_STATE = "controller.json"
"""The file of a checkpoint that holds the run state."""


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
    _cursor_at_step_start: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def next_step(self) -> int:
        return self.trained_step + 1

    def begin_step(self) -> None:
        """Remember the cursor before the step draws prompts, so that a fault can put them back."""
        self._cursor_at_step_start = self.cursor.state_dict()

    def rewind(self) -> None:
        """The step's prompts were drawn but not trained on: draw them again after a resume."""
        if self._cursor_at_step_start is not None:
            self.cursor.load_state_dict(self._cursor_at_step_start)

    def to_json(self, config: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint's record of this state (keys as written since the first checkpoint format)."""
        return {
            "step": self.trained_step,
            "weights_version": self.trained_step,  # a checkpoint's weights are those of its step
            "cursor": self.cursor.state_dict(),
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
