"""Fault injection from inside a run: a reward function that SIGKILLs a process once, mid-step.

``kill_after(..., trigger_file=PATH, after_calls=N)``: every call appends one byte to ``PATH.calls``; the
call that finds N bytes there (the first sample of the step after N samples were scored) reads the PID
written in ``PATH`` and SIGKILLs it, once (renaming ``PATH`` makes the firing exactly-once across
workers). It always returns 0.0; give it weight 0.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any


def kill_after(
    data_source: str | None,
    solution_str: str,
    ground_truth: str | None,
    extra_info: Any,
    *,
    trigger_file: str,
    after_calls: int,
) -> float:
    trigger = Path(trigger_file)
    fd = os.open(f"{trigger_file}.calls", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b".")
        calls = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if calls > after_calls and trigger.exists():
        fired = trigger.with_suffix(".fired")
        try:
            os.rename(trigger, fired)  # exactly one caller wins
        except FileNotFoundError:
            return 0.0
        os.kill(int(fired.read_text()), signal.SIGKILL)
    return 0.0
