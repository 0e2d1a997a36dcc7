"""The host side of the sandbox for model-written code: ``run_sandboxed`` and what it returns.

``run_sandboxed`` writes the code into a fresh directory, starts the launcher (``sandbox_launcher.py``, run
as a script in isolated mode) in a new session with a clean environment, passes it the limits as a JSON
config and reads its status pipe, stdout and stderr until the run is over or its deadline passes. What is
isolated, how, and what is not: ``docs/sandbox.md``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SANDBOX_GID",
    "SANDBOX_UID",
    "SandboxError",
    "SandboxResult",
    "run_sandboxed",
]

logger = logging.getLogger(__name__)

SANDBOX_UID = 65534
"""The uid model code runs as when the caller is root (``nobody``)."""
SANDBOX_GID = 65534
"""The gid model code runs as when the caller is root (``nogroup``)."""

_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_launcher.py")
"""Started as a script (``python -I -S -B``), not imported: it is standard-library only and reads its
constants (``code_file``, the limits, the uid) from the JSON config it is given."""
_CODE_FILE = "main.py"
_CLEAN_PATH = "/usr/bin:/bin"
_MAX_OPEN_FILES = 64
"""``RLIMIT_NOFILE`` for the code."""
_DRAIN_S = 1.0
"""After the top process exits and the group is killed, how long to wait for the pipes to close."""
_POLL_S = 0.05
"""How often the host looks for the top process's exit while its pipes are still open."""
_STOP_GRACE_S = 2.0
"""How long the launcher has to clean up after the deadline's SIGTERM before its group is SIGKILLed."""
_READ_CHUNK = 65536

_USE_NAMESPACES = True
"""Tests set this to False to exercise the no-namespace fallback on a machine that has namespaces."""


class SandboxError(RuntimeError):
    """The sandbox could not be set up (or the launcher failed), so the code did not run as asked.

    Raised instead of returning a result, because no result would be honest: a reward computed from a run
    that never happened, or that ran with weaker isolation than promised, must not look like a real score.
    """


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did.

    ``returncode`` is the code's exit status, negative for a signal (as in ``subprocess``);
    ``killed_by_signal`` is that signal's number (None when it exited). ``timed_out`` means the wall-clock
    deadline passed and the run was SIGKILLed (``killed_by_signal`` is then 9). ``stdout``/``stderr`` are
    the first ``max_output_bytes`` of each, decoded as UTF-8 with errors replaced; ``output_truncated``
    says more was written and discarded. ``wall_s`` covers start-up, the run and the clean-up kill.

    The rest says which isolation held: ``network_isolated`` (own, empty network namespace),
    ``pid_isolated`` (own PID namespace, so no process outlives the run), ``private_tmp`` (own tmpfs for
    the sandbox directory and the shared temp dirs), ``uid`` (the uid the code ran as; 65534 when the
    caller was root). ``pid`` is the top process's pid on the host, which is also the id of the session
    and process group the sandbox ran in; none of its processes are left when ``run_sandboxed`` returns.
    """

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    killed_by_signal: int | None
    output_truncated: bool
    wall_s: float
    network_isolated: bool
    pid_isolated: bool
    private_tmp: bool
    uid: int
    pid: int

    @property
    def ok(self) -> bool:
        """Exited 0 within the deadline."""
        return self.returncode == 0 and not self.timed_out


def _check_positive_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"run_sandboxed: {name} = {value!r}: expected a positive, finite number")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"run_sandboxed: {name} = {value!r}: expected an integer >= {minimum}")


class _CappedBuffer:
    """Keeps the first ``cap`` bytes written to it and counts the rest, so output cannot exhaust memory."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[: max(room, 0)]
        self.data += chunk

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def _kill_group(pgid: int) -> None:
    """SIGKILL the whole process group (the sandbox's session); fine if it is already gone."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        # The group holds only processes of another uid we may not signal, i.e. none of ours is left.
        logger.debug("sandbox: killpg(%d) not permitted; nothing of ours left in the group", pgid)


def _has_exited(pid: int) -> bool:
    """Whether ``pid`` (our child) has exited, without reaping it.

    Not reaping matters: while the zombie exists its pid, which is also the process group id, cannot be
    reused, so the ``killpg`` that follows cannot hit an unrelated group.
    """
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _remove_tree(path: str) -> None:
    """Delete the sandbox directory; code run as the caller's own uid may have left it unwritable."""
    try:
        shutil.rmtree(path)
        return
    except FileNotFoundError:
        return
    except OSError:
        logger.debug("sandbox: first removal of %s failed; restoring permissions", path)
    # Every sandbox process is dead by now, so nothing can swap a directory for a symlink under us; links
    # are skipped anyway because chmod would follow them out of the tree.
    for root, dirs, _ in os.walk(path):
        for name in dirs:
            child = os.path.join(root, name)
            if not os.path.islink(child):
                os.chmod(child, 0o700)
    try:
        shutil.rmtree(path)
    except OSError as exc:
        logger.warning("sandbox: could not remove %s: %s", path, exc)


def _parse_status(raw: bytes) -> list[dict[str, Any]]:
    """The launcher's JSON-lines status messages (see ``sandbox_launcher._report``), skipping a torn last line."""
    messages = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(message, dict):
            messages.append(message)
    return messages


def run_sandboxed(
    code: str,
    *,
    stdin: str = "",
    timeout_s: float = 5.0,
    cpu_time_s: int = 5,
    memory_mb: int = 512,
    max_file_mb: int = 8,
    max_processes: int = 32,
    max_output_bytes: int = 65536,
    network: bool = False,
    base_dir: str | None = None,
) -> SandboxResult:
    """Run the Python program ``code`` with ``stdin`` in a throwaway sandbox (see docs/sandbox.md).

    Limits: ``timeout_s`` of wall-clock time for the whole run (start-up included), ``cpu_time_s`` of CPU
    time per process, ``memory_mb`` of address space per process, ``max_file_mb`` per written file,
    ``max_processes`` processes of the sandbox user, ``max_output_bytes`` kept of stdout and of stderr each.
    ``network=True`` keeps the host's network. The sandbox directory is created under ``base_dir`` (default
    ``tempfile.gettempdir()``) and removed afterwards, also on a timeout.

    Raises ``SandboxError`` when the sandbox cannot be set up as described (never runs the code with less
    isolation than docs/sandbox.md promises for the caller's privileges), ValueError for bad limits.
    """
    if not isinstance(code, str) or not isinstance(stdin, str):
        raise ValueError("run_sandboxed: code and stdin must be strings")
    _check_positive_number("timeout_s", timeout_s)
    _check_int("cpu_time_s", cpu_time_s, 1)
    _check_int("memory_mb", memory_mb, 16)
    _check_int("max_file_mb", max_file_mb, 0)
    _check_int("max_processes", max_processes, 1)
    _check_int("max_output_bytes", max_output_bytes, 0)
    if not sys.platform.startswith("linux"):
        raise SandboxError(f"run_sandboxed needs Linux (rlimits, namespaces); this is {sys.platform}")
    if not os.path.isfile(_LAUNCHER):
        raise SandboxError(f"run_sandboxed: the launcher {_LAUNCHER} is not a plain file (zipped install?)")

    workdir = tempfile.mkdtemp(prefix="grpo-sandbox-", dir=base_dir or tempfile.gettempdir())
    try:
        code_path = os.path.join(workdir, _CODE_FILE)
        with open(code_path, "w", encoding="utf-8", errors="replace") as f:
            f.write(code)
        os.chmod(code_path, 0o644)  # readable by the sandbox uid whatever the caller's umask
        config = {
            "parent_pid": os.getpid(),
            "status_fd": -1,  # filled below
            "network": bool(network),
            "cpu_time_s": cpu_time_s,
            "memory_bytes": memory_mb << 20,
            "max_file_bytes": max_file_mb << 20,
            "tmpfs_mb": max(2 * max_file_mb, 16),
            "max_processes": max_processes,
            "uid": SANDBOX_UID,
            "gid": SANDBOX_GID,
            "namespaces": _USE_NAMESPACES,
            "code_file": _CODE_FILE,
            "max_open_files": _MAX_OPEN_FILES,
        }
        return _launch(workdir, config, stdin, timeout_s, max_output_bytes)
    finally:
        _remove_tree(workdir)


def _launch(workdir: str, config: dict[str, Any], stdin: str, timeout_s: float, max_output_bytes: int) -> SandboxResult:
    env = {"PATH": _CLEAN_PATH, "HOME": workdir, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    status_r, status_w = os.pipe()
    config["status_fd"] = status_w
    # stdin comes from an anonymous file rather than a pipe: the code may read it whenever it likes and the
    # host never blocks writing to it.
    with tempfile.TemporaryFile() as stdin_file:
        stdin_file.write(stdin.encode("utf-8", errors="replace"))
        stdin_file.seek(0)
        start = time.monotonic()
        proc: subprocess.Popen[bytes] | None = None
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", _LAUNCHER, json.dumps(config)],
                cwd=workdir,
                env=env,
                stdin=stdin_file,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(status_w,),
                start_new_session=True,
            )
        finally:
            os.close(status_w)
            if proc is None:
                os.close(status_r)
    assert proc is not None  # Popen returned, or raised out of the block above
    try:
        outputs, status_raw, timed_out = _collect(proc, status_r, start + timeout_s, max_output_bytes)
    finally:
        # Whatever happened (including an exception in the loop above), nothing of the sandbox survives.
        if proc.returncode is None:
            _kill_group(proc.pid)
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        os.close(status_r)
    wall_s = time.monotonic() - start
    messages = _parse_status(status_raw)
    errors = [m["error"] for m in messages if "error" in m]
    reports = [m["report"] for m in messages if "report" in m]
    stdout, stderr = outputs
    if errors:
        raise SandboxError(f"sandbox set-up failed: {errors[0]}")
    if not reports:
        raise SandboxError(
            f"the sandbox launcher exited ({proc.returncode}) before running the code"
            + (" (wall-clock timeout)" if timed_out else "")
            + (f"; its stderr: {stderr.text()[-2000:]}" if stderr.data else "")
        )
    report = reports[0]
    exits = [m["exit"] for m in messages if "exit" in m]
    # The launcher reports the code's exit status; a run stopped at the deadline was SIGKILLed.
    if timed_out:
        returncode = -signal.SIGKILL
    elif exits:
        returncode = int(exits[0])
    else:  # the launcher itself died (SIGKILLed from outside): say how
        returncode = proc.returncode if proc.returncode < 0 else -signal.SIGKILL
    return SandboxResult(
        returncode=returncode,
        stdout=stdout.text(),
        stderr=stderr.text(),
        timed_out=timed_out,
        killed_by_signal=-returncode if returncode < 0 else None,
        output_truncated=stdout.truncated or stderr.truncated,
        wall_s=wall_s,
        network_isolated=bool(report.get("net")),
        pid_isolated=bool(report.get("pid")),
        private_tmp=bool(report.get("private_tmp")),
        uid=int(report.get("uid", -1)),
        pid=proc.pid,
    )


def _collect(
    proc: subprocess.Popen[bytes], status_r: int, deadline: float, max_output_bytes: int
) -> tuple[tuple[_CappedBuffer, _CappedBuffer], bytes, bool]:
    """Read stdout, stderr and the status pipe until the run is over; stop it at the deadline.

    At the deadline the launcher (the top process, trusted code) gets SIGTERM and kills and reaps the
    sandbox itself (see ``sandbox_launcher._supervise``); only if it has not exited ``_STOP_GRACE_S`` later is the whole
    process group SIGKILLed. Once the top process has exited, the group is SIGKILLed too, for anything the
    launcher could not have known about; the pipes are then read until they close, ``_DRAIN_S`` at most.
    """
    assert proc.stdout is not None and proc.stderr is not None
    stdout, stderr = _CappedBuffer(max_output_bytes), _CappedBuffer(max_output_bytes)
    status = bytearray()
    sinks: dict[int, Any] = {proc.stdout.fileno(): stdout, proc.stderr.fileno(): stderr, status_r: status}
    timed_out = False
    terminated_at: float | None = None
    finished_at: float | None = None
    idle_s = 0.001
    with selectors.DefaultSelector() as selector:
        for fd in sinks:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if finished_at is None:
                if _has_exited(proc.pid):
                    _kill_group(proc.pid)  # the leader is an unreaped zombie: its group id is still ours
                    finished_at = now
                elif terminated_at is None and now >= deadline:
                    timed_out = True
                    os.kill(proc.pid, signal.SIGTERM)
                    terminated_at = now
                elif terminated_at is not None and now - terminated_at >= _STOP_GRACE_S:
                    logger.warning("sandbox: launcher %d ignored SIGTERM; killing its process group", proc.pid)
                    _kill_group(proc.pid)
                    finished_at = now
            if finished_at is not None and (not selector.get_map() or now - finished_at > _DRAIN_S):
                break  # done; or a process we cannot reach still holds a pipe: stop reading
            if not selector.get_map():
                # Every pipe is closed but the top process has not exited yet (usually it is about to).
                time.sleep(min(idle_s, max(0.0, deadline - now)) if terminated_at is None else idle_s)
                idle_s = min(2 * idle_s, _POLL_S)
                continue
            wait = _POLL_S
            if finished_at is not None:
                wait = _DRAIN_S - (now - finished_at)
            elif terminated_at is None:
                wait = min(wait, max(0.0, deadline - now))
            for key, _ in selector.select(wait):
                try:
                    chunk = os.read(key.fd, _READ_CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                sink = sinks[key.fd]
                if isinstance(sink, bytearray):
                    if len(sink) < _READ_CHUNK:  # a few short JSON lines; bounded all the same
                        sink += chunk
                else:
                    sink.add(chunk)
    proc.wait()  # the leader has exited or was killed: this only reaps it
    return (stdout, stderr), bytes(status), timed_out
