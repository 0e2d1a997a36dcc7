"""Run untrusted, model-written Python in a throwaway sandbox, and the ``code_exec`` reward built on it.

Why a second layer. The scorer already runs reward functions in a child process with a per-sample
deadline, but that child is trusted code running as the trainer's user, with its environment (API keys,
cluster tokens), its network and its file system. A completion is code written by the policy being trained,
and RL is very good at finding whatever a reward leaves open. ``run_sandboxed`` therefore runs it in a fresh
process tree with no inherited state, hard resource limits and, where the kernel allows, its own namespaces.

How. ``run_sandboxed`` starts this very file as a small *launcher* (``python -I -S -B sandbox.py CONFIG``)
in a new session, with a clean environment, in a fresh temporary directory. The launcher is trusted code:
it sets up the isolation below, forks, and the child execs ``python -I -S -B main.py`` (the host's
own interpreter, ``sys.executable`` resolved) on the model's code. A launcher rather than ``preexec_fn``
because the set-up needs forks (PID namespace) and must not run in a fork of a multi-threaded caller.

The launcher stays as the supervisor the host waits for, so that "it exited" means "nothing is left": it
kills and reaps everything the code started (see ``_supervise``) before it exits, at the deadline (the host
sends it SIGTERM, and SIGKILLs the whole process group only if it does not exit 2 s later), and when the
host process dies (``PR_SET_PDEATHSIG``), which is what happens when the scorer kills a reward call that
ran past its own deadline. It does not leave orphans to the machine's PID 1, which in some containers
never reaps them.

Isolation, in order of what it needs (``SandboxResult`` says which parts held for a run):

* Always: a clean environment (only ``PATH=/usr/bin:/bin``, ``HOME`` = the sandbox directory,
  ``LANG=C.UTF-8``, ``PYTHONDONTWRITEBYTECODE=1``); Python's isolated mode (no ``PYTHON*`` variables, no
  site-packages, no user site, the script's directory not on ``sys.path``); resource limits set just
  before ``exec``: ``RLIMIT_CPU`` (then SIGKILL one second later), ``RLIMIT_AS``, ``RLIMIT_FSIZE`` (Python
  ignores SIGXFSZ, so a bigger write fails with EFBIG), ``RLIMIT_NPROC``, ``RLIMIT_NOFILE`` (64),
  ``RLIMIT_CORE`` = 0; stdout and stderr read as they come and capped; the code in a process group of its
  own under a launcher that is a child subreaper, so even a descendant that called ``setsid`` is
  re-parented to it and killed.
* Run as root: the code runs as ``nobody`` (uid/gid 65534, ``SANDBOX_UID``) with no supplementary groups.
  That is what makes ``RLIMIT_NPROC`` effective (the kernel ignores it for root) and what stops writes
  anywhere the unprivileged user may not write (the sandbox directory is given to that uid). If the
  privileges cannot be dropped (the interpreter is not readable by uid 65534 and no mount namespace can
  expose it), ``run_sandboxed`` raises ``SandboxError`` rather than run model code as root.
  ``RLIMIT_NPROC`` counts every process of uid 65534 on the machine, so concurrent sandboxes share the
  ``max_processes`` budget: a fork bomb in one can make ``fork`` fail in another while it lasts (at most
  its timeout); the limit is applied after the uid switch, so it never stops a sandbox from starting.
* Namespaces (root, or any user where unprivileged user namespaces are enabled; as a non-root user the
  code keeps that user's uid inside a user namespace):

  - network: a new, empty network namespace (not even loopback is up) unless ``network=True``;
  - PID: the code runs under a tiny init of its own PID namespace; when that init exits or is killed, the
    kernel kills every process left in the namespace; ``/proc`` is remounted and shows only the
    sandbox's processes (so no other process's ``/proc/<pid>/environ`` is in reach);
  - mount: private tmpfs mounts over ``/tmp``, ``/var/tmp``, ``/dev/shm`` and the sandbox directory itself
    (each ``max(2 * max_file_mb, 16)`` MiB), so what the code writes is bounded in total, invisible to
    other processes, and gone with the namespace. When the interpreter lies under a directory uid 65534
    cannot enter (pyenv in ``/root``), that directory is covered by an empty tmpfs and only the
    interpreter's prefix is bind-mounted back, read-only, at its original path.

  Without them (no privileges, or a container that forbids ``unshare``): ``network_isolated``,
  ``pid_isolated`` and ``private_tmp`` are False, the network is the host's, and the code writes to the
  sandbox directory on disk (each file bounded by ``RLIMIT_FSIZE``, the total not) and to ``/tmp``.

What is NOT isolated. The file system stays readable wherever the sandbox user may read (``/etc``, the
project checkout, world-readable files): a sandbox is about writes, resources, network and the host's
secrets in memory and environment, so keep secrets in files only their owner can read. Run as a non-root
user, the code keeps that user's write access to its own files (home directory, checkout) outside the
private tmpfs mounts, ``RLIMIT_NPROC`` counts all of that user's processes (threads included), and without
a PID namespace it can read ``/proc/<pid>/environ`` of that user's other processes. There is no seccomp
filter and no cgroup: CPU and memory are bounded per process (``RLIMIT_CPU``/``RLIMIT_AS``) and by
``max_processes``. If the host process is killed mid-run, its sandbox directory (only the code, with a
private tmpfs) is left in the temp dir.

Running this module as a script is the launcher; ``main()`` refuses to run unless started by
``run_sandboxed`` (it needs the status pipe that call passes).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import os
import re
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SANDBOX_GID",
    "SANDBOX_UID",
    "CodeCase",
    "SandboxError",
    "SandboxResult",
    "code_exec",
    "extract_code",
    "parse_test_cases",
    "run_sandboxed",
]

logger = logging.getLogger(__name__)

SANDBOX_UID = 65534
"""The uid model code runs as when the caller is root (``nobody``)."""
SANDBOX_GID = 65534
"""The gid model code runs as when the caller is root (``nogroup``)."""

_LAUNCHER = os.path.abspath(__file__)
_CODE_FILE = "main.py"
_CLEAN_PATH = "/usr/bin:/bin"
_MAX_OPEN_FILES = 64
_DRAIN_S = 1.0
"""After the top process exits and the group is killed, how long to wait for the pipes to close."""
_POLL_S = 0.05
"""How often the host looks for the top process's exit while its pipes are still open."""
_STOP_GRACE_S = 2.0
"""How long the launcher has to clean up after the deadline's SIGTERM before its group is SIGKILLed."""
_READ_CHUNK = 65536

# Linux constants (<sched.h>, <sys/mount.h>, <sys/prctl.h>); the launcher runs on Linux only.
_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY = 0x1
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MS_REMOUNT = 0x20
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")

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


# --------------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------------


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
    """The launcher's JSON-lines status messages (see ``_report``), skipping a torn last line."""
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
    """Run the Python program ``code`` with ``stdin`` in a throwaway sandbox (see the module docstring).

    Limits: ``timeout_s`` of wall-clock time for the whole run (start-up included), ``cpu_time_s`` of CPU
    time per process, ``memory_mb`` of address space per process, ``max_file_mb`` per written file,
    ``max_processes`` processes of the sandbox user, ``max_output_bytes`` kept of stdout and of stderr each.
    ``network=True`` keeps the host's network. The sandbox directory is created under ``base_dir`` (default
    ``tempfile.gettempdir()``) and removed afterwards, also on a timeout.

    Raises ``SandboxError`` when the sandbox cannot be set up as described (never runs the code with less
    isolation than the module docstring promises for the caller's privileges), ValueError for bad limits.
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
    sandbox itself (see ``_supervise``); only if it has not exited ``_STOP_GRACE_S`` later is the whole
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


# --------------------------------------------------------------------------------------------------------
# Launcher side: runs as ``python -I -S -B sandbox.py CONFIG`` in the sandbox directory (trusted code).
# --------------------------------------------------------------------------------------------------------


class _Libc:
    """The few libc calls Python's ``os`` lacks before 3.12 (``unshare``, ``mount``, ``prctl``)."""

    def __init__(self) -> None:
        self._lib: Any = None
        try:
            self._lib = ctypes.CDLL(None, use_errno=True)
        except OSError as exc:
            logger.debug("sandbox: libc not loadable: %s", exc)

    def _call(self, name: str, *args: Any) -> int:
        """0 on success, else the errno."""
        fn = getattr(self._lib, name, None) if self._lib is not None else None
        if fn is None:
            return 38  # ENOSYS
        return 0 if fn(*args) == 0 else ctypes.get_errno()

    def unshare(self, flags: int) -> int:
        return self._call("unshare", ctypes.c_int(flags))

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> int:
        def arg(s: str | None) -> bytes | None:
            return None if s is None else os.fsencode(s)

        return self._call("mount", arg(source), arg(target), arg(fstype), ctypes.c_ulong(flags), arg(data))

    def set_pdeathsig(self, sig: int) -> int:
        return self._call("prctl", ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(sig), 0, 0, 0)

    def set_child_subreaper(self) -> int:
        return self._call("prctl", ctypes.c_int(_PR_SET_CHILD_SUBREAPER), ctypes.c_ulong(1), 0, 0, 0)


def _report(fd: int, **message: Any) -> None:
    """One status line to the host: ``report`` (isolation, just before exec), ``exit``, or ``error``.

    A host that is gone (EPIPE) is no reason to stop: the clean-up after the code must still run.
    """
    with contextlib.suppress(BrokenPipeError):
        os.write(fd, (json.dumps(message) + "\n").encode())


def _enter_namespaces(libc: _Libc, root: bool, want_net: bool) -> dict[str, bool]:
    """Unshare the strongest set of namespaces the kernel grants; what was obtained.

    Mount and PID namespaces go together (the PID namespace needs its own ``/proc``). A non-root caller
    needs a user namespace for any of them; its uid is mapped to itself, so the code keeps no capability.
    """
    net = _CLONE_NEWNET if want_net else 0
    if root:
        attempts = [(_CLONE_NEWNS | _CLONE_NEWPID | net, True)]
        if net:
            attempts.append((net, False))
    else:
        attempts = [(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWPID | net, True)]
        if net:
            attempts.append((_CLONE_NEWUSER | net, False))
    uid, gid = os.getuid(), os.getgid()
    for flags, full in attempts:
        if libc.unshare(flags) != 0:
            continue
        if flags & _CLONE_NEWUSER:
            # Identity maps: files the code creates keep the caller's uid, and exec drops the capabilities.
            for path, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{path}", "w") as f:
                    f.write(text)
        return {"net": bool(flags & _CLONE_NEWNET), "pid": full, "mount": full}
    return {"net": False, "pid": False, "mount": False}


def _access_as(uid: int, gid: int, checks: Sequence[tuple[str, int]]) -> bool:
    """Whether ``uid``/``gid`` (no supplementary groups) passes every ``os.access`` check; root only.

    Switches the effective ids for the probe and back, which a process with real uid 0 may do.
    """
    os.setegid(gid)
    os.seteuid(uid)
    try:
        return all(os.access(path, mode, effective_ids=True) for path, mode in checks)
    finally:
        os.seteuid(0)
        os.setegid(0)


def _interpreter_checks(executable: str) -> list[tuple[str, int]]:
    stdlib = os.path.dirname(os.__file__)
    return [
        (executable, os.X_OK),
        (os.path.join(stdlib, "os.py"), os.R_OK),
        (os.path.join(stdlib, "lib-dynload"), os.X_OK),
    ]


def _reachable(config: dict[str, Any], root: bool, checks: Sequence[tuple[str, int]]) -> bool:
    """Whether the uid the code will run as passes ``checks`` (the caller's own uid when not root)."""
    if root:
        return _access_as(config["uid"], config["gid"], checks)
    return all(os.access(path, mode) for path, mode in checks)


def _expose_interpreter(libc: _Libc, config: dict[str, Any], root: bool, prefix: str, handle: int) -> None:
    """Make ``prefix`` reachable by the code's uid at its own path (binaries embed absolute paths).

    The first directory on the way that the uid cannot enter is covered by an empty tmpfs; the path down to
    ``prefix`` is recreated there (or inside a private tmpfs that hid it) and ``prefix`` bind-mounted back,
    read-only, from ``handle``: an ``O_PATH`` descriptor taken in this mount namespace before anything was
    covered.
    """
    current = "/"
    for part in prefix.strip("/").split("/")[:-1]:
        current = os.path.join(current, part)
        if not os.path.isdir(current):
            os.mkdir(current, 0o755)  # only inside a tmpfs of ours: prefix itself exists on the host
        elif not _reachable(config, root, [(current, os.X_OK)]):
            _mount_or_raise(libc, "tmpfs", current, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=755,size=1m")
    if not os.path.isdir(prefix):
        os.mkdir(prefix, 0o755)
    _mount_or_raise(libc, f"/proc/self/fd/{handle}", prefix, None, _MS_BIND | _MS_REC, None)
    _mount_or_raise(libc, None, prefix, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, None)


def _mount_or_raise(
    libc: _Libc, source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    err = libc.mount(source, target, fstype, flags, data)
    if err:
        raise OSError(err, f"mount {fstype or 'bind'} on {target}: {os.strerror(err)}")


def _private_mounts(libc: _Libc, config: dict[str, Any], root: bool, executable: str) -> bool:
    """Inside the new mount + PID namespaces: own ``/proc``, private tmpfs scratch space, the interpreter.

    Returns whether the private tmpfs mounts are in place. Called by the namespace's init, before the
    code's process is forked, with the sandbox directory as the working directory.
    """
    _mount_or_raise(libc, None, "/", None, _MS_REC | _MS_PRIVATE, None)  # nothing propagates to the host
    if libc.mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None):
        logger.debug("sandbox: could not mount a private /proc; the host's stays visible")
    workdir = os.getcwd()
    with open(_CODE_FILE, "rb") as f:
        code = f.read()
    prefix = os.path.realpath(sys.base_prefix)
    handle = os.open(prefix, os.O_PATH | os.O_DIRECTORY)  # before a tmpfs may hide it
    try:
        tmpfs = f"size={config['tmpfs_mb']}m"
        flags = _MS_NOSUID | _MS_NODEV
        for path in _PRIVATE_TMP_DIRS:
            if os.path.isdir(path) and not os.path.islink(path):
                _mount_or_raise(libc, "tmpfs", path, "tmpfs", flags, f"{tmpfs},mode=1777")
        checks = _interpreter_checks(executable)
        if not _reachable(config, root, checks):
            if not executable.startswith(prefix + os.sep):
                raise OSError(f"the interpreter {executable} is not reachable by the sandbox uid, nor under {prefix}")
            _expose_interpreter(libc, config, root, prefix, handle)
            if not _reachable(config, root, checks):
                raise OSError(f"the interpreter under {prefix} is not readable by the sandbox uid (its permissions)")
    finally:
        os.close(handle)
    # The sandbox directory becomes a tmpfs of its own at the same path, holding a copy of the code.
    os.makedirs(workdir, mode=0o700, exist_ok=True)
    owner = f",uid={config['uid']},gid={config['gid']}" if root else ""
    _mount_or_raise(libc, "tmpfs", workdir, "tmpfs", flags, f"{tmpfs},mode=700{owner}")
    os.chdir(workdir)
    with open(_CODE_FILE, "wb") as f:
        f.write(code)
    os.chmod(_CODE_FILE, 0o644)
    return True


def _limit(which: int, soft: int, hard: int | None = None) -> None:
    """Set a limit, never above the inherited hard limit (which a non-root process cannot raise)."""
    _, current_hard = resource.getrlimit(which)
    hard = soft if hard is None else hard
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    resource.setrlimit(which, (soft, hard))


def _exec_code(libc: _Libc, config: dict[str, Any], state: dict[str, Any], executable: str, parent: int) -> None:
    """Drop privileges, apply the limits, report, exec the code. Never returns."""
    status_fd = config["status_fd"]
    if state["root"]:
        os.setgroups([])
        os.setgid(config["gid"])
        os.setuid(config["uid"])
        if os.getuid() != config["uid"] or os.geteuid() != config["uid"] or os.getgid() != config["gid"]:
            raise OSError("privileges were not dropped")
    # Limits after the uid switch: RLIMIT_NPROC checked at setuid would make exec fail whenever other
    # sandboxes of the same uid are busy; applied now, it only bounds this sandbox's own forks.
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_CPU, config["cpu_time_s"], config["cpu_time_s"] + 1)
    _limit(resource.RLIMIT_AS, config["memory_bytes"])
    _limit(resource.RLIMIT_FSIZE, config["max_file_bytes"])
    _limit(resource.RLIMIT_NOFILE, _MAX_OPEN_FILES)
    _limit(resource.RLIMIT_NPROC, config["max_processes"])
    # Set after setuid, which clears it; kept across exec. Then make sure the parent did not die first.
    libc.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    # Python ignores these; exec keeps an ignored signal ignored, so give the code the defaults (as subprocess does).
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    report = {
        "net": state["net"],
        "pid": state["pid"],
        "private_tmp": state["private_tmp"],
        "uid": os.getuid(),
    }
    _report(status_fd, report=report)
    os.set_inheritable(status_fd, False)  # closed by exec; an exec failure can still be reported
    os.execv(executable, [executable, "-I", "-S", "-B", _CODE_FILE])


def _init_main(libc: _Libc, config: dict[str, Any], state: dict[str, Any], executable: str) -> int:
    """PID 1 of the sandbox's namespace: set up mounts, fork the code, reap, report its exit status.

    The code does not run as PID 1 itself because the kernel ignores default-action signals sent to a
    namespace's init (SIGXFSZ, SIGXCPU would not stop it) and because orphans must be reaped. When this
    process exits, the kernel kills whatever is left in the namespace.
    """
    status_fd = config["status_fd"]
    state["private_tmp"] = _private_mounts(libc, config, state["root"], executable)
    # The supervisor is gone: so are we, and with us the namespace. Set after the mounts, whose uid probes
    # change the effective ids, which clears it.
    libc.set_pdeathsig(signal.SIGKILL)
    child = os.fork()
    if child == 0:
        try:
            _exec_code(libc, config, state, executable, parent=1)
        except (OSError, ValueError) as exc:  # ValueError: setrlimit
            _report(status_fd, error=f"starting the code: {exc}")
        os._exit(127)
    while True:
        pid, status = os.wait()
        if pid == child:
            break
    _report(status_fd, exit=os.waitstatus_to_exitcode(status))
    return 0


def _children() -> list[int]:
    """Our child processes, alive or zombie (their pids cannot be reused before we reap them).

    Only valid while ``/proc`` is the one of our own PID namespace, i.e. without a private ``/proc``.
    """
    me = os.getpid()
    try:
        with open(f"/proc/self/task/{me}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN: look at every process's parent
        children = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if int(fields[1]) == me:
                children.append(int(entry))
        return children


def _supervise(libc: _Libc, config: dict[str, Any], state: dict[str, Any], executable: str) -> int:
    """The launcher's role once set up: start the code (or the namespace's init), then clean up after it.

    The launcher stays the top process the host waits for, so that "it exited" means "nothing is left":

    * With a PID namespace the child is its init; killing that init empties the namespace, and the init is
      reaped here (not orphaned to the host's PID 1, which in some containers never reaps).
    * Without one the code runs in a process group of its own; this process is a child subreaper, so
      everything the code leaves behind (also a child that ran ``setsid``) is re-parented here, killed
      and reaped.

    SIGTERM (the host's deadline, or ``PR_SET_PDEATHSIG`` when the host dies) kills the child; the normal
    path then finishes the clean-up. The host SIGKILLs the group only if this process does not exit.
    """
    status_fd = config["status_fd"]
    me = os.getpid()
    # Again: any change of the effective ids (the uid probes in main) has cleared it.
    libc.set_pdeathsig(signal.SIGTERM)
    if os.getppid() != config["parent_pid"]:
        return 1  # the host died in the meantime
    libc.set_child_subreaper()
    child: int | None = None
    stop = False

    def kill_child() -> None:
        if child is None:
            return
        with contextlib.suppress(ProcessLookupError):
            if state["pid"]:
                os.kill(child, signal.SIGKILL)  # the init: the kernel kills the rest of the namespace
            else:
                os.killpg(child, signal.SIGKILL)  # the code's process group, at once (a fork bomb included)

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True
        kill_child()

    signal.signal(signal.SIGTERM, on_term)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        code = 127
        try:
            if state["pid"]:
                code = _init_main(libc, config, state, executable)
            else:
                os.setpgid(0, 0)
                _exec_code(libc, config, state, executable, parent=me)
        except (OSError, ValueError) as exc:  # ValueError: setrlimit
            _report(status_fd, error=f"starting the sandbox: {exc}")
        os._exit(code)
    if not state["pid"]:
        with contextlib.suppress(PermissionError, ProcessLookupError):  # the child did it first, or exec'd
            os.setpgid(pid, pid)
    child = pid
    if stop:
        kill_child()
    # Reap adopted orphans until the child exits; leave the child a zombie, which keeps its pid (and process
    # group id) from being reused while the group is killed below.
    while True:
        info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        if info is None or info.si_pid == child:
            break
        os.waitpid(info.si_pid, 0)
    kill_child()
    _, status = os.waitpid(child, 0)
    if not state["pid"]:
        _report(status_fd, exit=os.waitstatus_to_exitcode(status))  # (the init reports it otherwise)
        while True:
            for orphan in _children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(orphan, signal.SIGKILL)
            try:
                os.wait()
            except ChildProcessError:
                break
    return 0


def main(argv: Sequence[str]) -> int:
    """The launcher: ``python -I -S -B sandbox.py CONFIG``, started by ``run_sandboxed`` only."""
    if len(argv) != 2:
        sys.stderr.write("sandbox.py is started by grpo_dist.reward.sandbox.run_sandboxed, not by hand\n")
        return 2
    config = json.loads(argv[1])
    status_fd = config["status_fd"]
    libc = _Libc()
    libc.set_pdeathsig(signal.SIGTERM)  # the host died: clean up (see _supervise)
    if os.getppid() != config["parent_pid"]:
        return 1  # the host is already gone
    executable = os.path.realpath(sys.executable)
    root = os.geteuid() == 0
    os.umask(0o022)
    try:
        if root:
            os.setgroups([])  # the launcher needs none, and the uid probes must not pass through root's groups
        state: dict[str, Any] = {"root": root, "private_tmp": False}
        if config["namespaces"]:
            state.update(_enter_namespaces(libc, root, want_net=not config["network"]))
        else:
            state.update(net=False, pid=False, mount=False)
        if root and not state["mount"]:
            if not _access_as(config["uid"], config["gid"], _interpreter_checks(executable)):
                raise OSError(
                    f"the interpreter {executable} is not readable by uid {config['uid']} and no mount "
                    "namespace is available to expose it; refusing to run model code as root"
                )
            os.chown(".", config["uid"], config["gid"])
            os.chmod(".", 0o700)
        return _supervise(libc, config, state, executable)
    except (OSError, ValueError) as exc:  # ValueError: setrlimit
        _report(status_fd, error=str(exc))
        return 125


# --------------------------------------------------------------------------------------------------------
# The code_exec reward
# --------------------------------------------------------------------------------------------------------

_FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py)\b[^\n]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(text: str) -> str:
    """The body of the last fenced ```` ```python ```` block in ``text`` (also ``py``/``python3``), else all of it.

    The last block, because a model that revises its answer puts the final version last.
    """
    blocks = _FENCE_RE.findall(text)
    return blocks[-1] if blocks else text


@dataclass(frozen=True)
class CodeCase:
    """One test: stdin -> expected stdout (``tests is None``), or assert-style code appended to the solution."""

    stdin: str = ""
    expected: str = ""
    tests: str | None = None


def parse_test_cases(ground_truth: Any) -> list[CodeCase]:
    """The test cases ``code_exec`` runs, from a row's ``ground_truth`` (see ``code_exec`` for the forms).

    A malformed ground truth raises ValueError: it is a dataset bug, and the scorer reports it as a
    failure of the reward function instead of a silent 0 for the model.
    """
    value = ground_truth
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"code_exec: ground_truth is not valid JSON ({exc})") from None
    if isinstance(value, Mapping):
        tests = value.get("tests")
        items = [tests] if isinstance(tests, str) else tests
        if not isinstance(items, list) or not items or not all(isinstance(t, str) and t.strip() for t in items):
            raise ValueError(
                "code_exec: ground_truth {'tests': ...} must hold a non-empty string or a non-empty list of "
                f"non-empty strings, got {tests!r:.200}"
            )
        return [CodeCase(tests=t) for t in items]
    if isinstance(value, list) and value:
        cases = []
        for i, item in enumerate(value):
            if not (
                isinstance(item, Mapping) and isinstance(item.get("input"), str) and isinstance(item.get("output"), str)
            ):
                raise ValueError(
                    f"code_exec: ground_truth[{i}] = {item!r:.200}: expected {{'input': str, 'output': str}}"
                )
            cases.append(CodeCase(stdin=item["input"], expected=item["output"]))
        return cases
    raise ValueError(
        "code_exec: ground_truth must be a JSON list of {'input', 'output'} cases or an object "
        f"{{'tests': ...}}, got {ground_truth!r:.200}"
    )


def _normalise_output(text: str) -> list[str]:
    """Lines with trailing whitespace and trailing blank lines dropped, as most judges compare."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _passes(code: str, case: CodeCase, timeout_s: float, memory_mb: int) -> bool:
    cpu_time_s = max(1, math.ceil(timeout_s))
    if case.tests is None:
        result = run_sandboxed(code, stdin=case.stdin, timeout_s=timeout_s, cpu_time_s=cpu_time_s, memory_mb=memory_mb)
        return (
            result.ok
            and not result.output_truncated
            and (_normalise_output(result.stdout) == _normalise_output(case.expected))
        )
    # Exit status 0 alone would also reward a solution that calls sys.exit(0) before the asserts run; the
    # marker printed after them proves they all did.
    marker = f"grpo-dist-tests-passed-{secrets.token_hex(16)}"
    program = f"{code}\n\n{case.tests}\n\nprint({marker!r})\n"
    result = run_sandboxed(program, timeout_s=timeout_s, cpu_time_s=cpu_time_s, memory_mb=memory_mb)
    lines = _normalise_output(result.stdout)
    return result.ok and not result.output_truncated and bool(lines) and lines[-1] == marker


def code_exec(
    data_source: str | None,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    language: str = "python",
) -> float:
    """The fraction (0.0..1.0) of test cases that the code in ``solution_str`` passes, each run sandboxed.

    The code is the last ```` ```python ```` block of the completion, else the whole completion
    (``extract_code``). ``ground_truth`` is a JSON string (or the already-parsed value) in one of two forms:

    * ``[{"input": "1 2\\n", "output": "3\\n"}, ...]``: the program reads ``input`` on stdin; a case passes
      when it exits 0 within ``timeout_s`` and its stdout equals ``output`` up to trailing whitespace on
      each line and trailing blank lines.
    * ``{"tests": "assert f(1) == 2\\nassert f(2) == 3"}``: the test code is appended after the solution and
      the case passes when the whole program runs to the end (exit 0, all asserts hold) within ``timeout_s``.
      ``"tests"`` may also be a list of such strings, each a separate case (partial credit). Test code runs
      in the same interpreter as the solution, so a deliberately adversarial solution could defeat it (an
      object whose ``__eq__`` is always true); stdin/stdout cases do not have that weakness.

    Every case is a separate ``run_sandboxed`` call with ``timeout_s`` of wall-clock time, as much CPU time
    (rounded up) and ``memory_mb`` of address space. Time: a sample can take up to about
    ``len(cases) * (timeout_s + 0.5)`` seconds, so this function's entry in ``reward.functions`` needs a
    (per-sample) ``timeout_s`` larger than that, or the scorer kills the call and counts a timeout failure
    instead of the score. A sandbox that cannot be set up raises ``SandboxError`` (a failure, not a 0).
    """
    del data_source, extra_info
    if language != "python":
        raise ValueError(f"code_exec: language = {language!r}; only 'python' is supported")
    if not isinstance(solution_str, str):
        raise ValueError(f"code_exec: solution_str must be a string, got {type(solution_str).__name__}")
    cases = parse_test_cases(ground_truth)
    code = extract_code(solution_str)
    passed = sum(_passes(code, case, float(timeout_s), int(memory_mb)) for case in cases)
    return passed / len(cases)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
