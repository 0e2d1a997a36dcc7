"""The reward child process: imports the reward functions once and evaluates requests from its scorer.

Reward functions are arbitrary user code; running them in a child the scorer owns is what lets a call that
hangs be killed (SIGKILL) and a call that crashes the interpreter (segfault, ``os._exit``) be survived.
Outputs are validated here, at the boundary with user code, so only plain floats and strings ever travel
back over the pipe (a numpy scalar or an unpicklable object never has to).

Protocol (tuples over a ``multiprocessing`` Pipe):

parent -> child
    ``("samples", request_id, function_index, items)``: items = [(args, context)]; one reply per item, in
    order, each sent as soon as that item is done (so the parent can give each sample its own deadline).
    ``("batch", request_id, function_index, args, context)``: one call with lists; one reply.
    ``("stop",)``: exit.
child -> parent
    ``("ready", pid, [context parameter names per function])`` or ``("init_error", message)`` once at start.
    ``("result", request_id, item_index, outcome)``: outcome is ``("ok", float)``,
    ``("exception", message)`` or ``("invalid", message)``; for a batch ``("ok", [per-sample outcome])``.

Standard library only (plus ``builtins``), so starting a fresh child after a kill stays cheap.
"""

from __future__ import annotations

import ctypes
import logging
import math
import numbers
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from grpo_dist.reward.builtins import FunctionSpec, context_parameters, resolve

logger = logging.getLogger(__name__)

Outcome = tuple[str, Any]
"""``("ok", value)``, ``("exception", message)`` or ``("invalid", message)``."""

_MAX_MESSAGE_CHARS = 2000
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux).

    The parent is a Ray actor that ``ray.kill`` may SIGKILL, leaving no chance to stop its child; a child
    stuck in a hung reward call would otherwise live on as an orphan burning a CPU. Elsewhere the child
    still exits when it next reads from the closed pipe.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError) as exc:
            logger.debug("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _describe(exc: BaseException) -> str:
    """``Type: message`` plus the innermost frames: enough to find the line in the user's function."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = "; ".join(f"{f.filename}:{f.lineno} in {f.name}" for f in frames)
    text = f"{type(exc).__name__}: {exc}" + (f" (at {where})" if where else "")
    return text[:_MAX_MESSAGE_CHARS]


def check_value(value: Any) -> Outcome:
    """Accept a real, finite number (int, float, numpy scalar, Fraction) as a float; reject the rest.

    ``bool`` is rejected although it is an int: a function returning ``answer == truth`` almost always
    meant a float reward, and saying so is better than guessing. Tensors and arrays are rejected with a
    hint, so ``.item()`` is an explicit choice.
    """
    numpy = sys.modules.get("numpy")  # only a function that imported numpy can return a numpy bool
    if isinstance(value, bool) or (numpy is not None and isinstance(value, numpy.bool_)):
        return "invalid", f"returned a bool ({value!r}); return a float, e.g. float({value!r})"
    if not isinstance(value, numbers.Real):
        hint = "; call .item() on a one-element tensor/array" if hasattr(value, "item") else ""
        return "invalid", f"returned {type(value).__name__} {_short_repr(value)}, expected a real number{hint}"
    as_float = float(value)
    if not math.isfinite(as_float):
        return "invalid", f"returned a non-finite value ({as_float})"
    return "ok", as_float


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _as_list(values: Any) -> list[Any] | None:
    """A list/tuple, or a 1-D numpy array (when numpy is loaded at all), as a list; None for anything else."""
    if isinstance(values, (list, tuple)):
        return list(values)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(values, numpy.ndarray) and values.ndim == 1:
        return list(values.tolist())
    return None


def check_batch(values: Any, expected: int) -> Outcome:
    """A batched function must return one real number per sample; each is then checked on its own."""
    items = _as_list(values)
    if items is None:
        return "invalid", f"returned {type(values).__name__} {_short_repr(values)}, expected a list of floats"
    if len(items) != expected:
        return "invalid", f"returned {len(items)} values for a batch of {expected} samples"
    return "ok", [check_value(v) for v in items]


def _call(fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any], context: dict[str, Any]) -> Any:
    return fn(*args, **kwargs, **context)


def child_main(
    conn: Connection,
    specs: list[FunctionSpec],
    extra_sys_path: list[str],
    max_response_length: int,
    parent_pid: int,
) -> None:
    """Entry point of the child process (the target of ``multiprocessing``'s spawn context)."""
    _die_with_parent(parent_pid)
    sys.path[0:0] = [p for p in extra_sys_path if p not in sys.path]
    try:
        functions = [resolve(spec, index=i, max_response_length=max_response_length) for i, spec in enumerate(specs)]
    except ValueError as exc:
        conn.send(("init_error", str(exc)))
        return
    conn.send(("ready", os.getpid(), [sorted(context_parameters(fn)) for fn in functions]))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent closed the pipe or died
        kind = message[0]
        if kind == "stop":
            return
        if kind == "samples":
            _, request_id, index, items = message
            fn, kwargs = functions[index], dict(specs[index].kwargs)
            for k, (args, context) in enumerate(items):
                try:
                    outcome = check_value(_call(fn, args, kwargs, context))
                except Exception as exc:  # user code: every error becomes this sample's failure
                    outcome = ("exception", _describe(exc))
                conn.send(("result", request_id, k, outcome))
        elif kind == "batch":
            _, request_id, index, args, context = message
            fn, kwargs = functions[index], dict(specs[index].kwargs)
            try:
                outcome = check_batch(_call(fn, args, kwargs, context), len(args[1]))
            except Exception as exc:  # user code: the whole batch fails
                outcome = ("exception", _describe(exc))
            conn.send(("result", request_id, 0, outcome))
        else:
            raise AssertionError(f"reward child: unknown request {kind!r}")
