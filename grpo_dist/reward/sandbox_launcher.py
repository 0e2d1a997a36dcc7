"""The sandbox launcher: trusted, standard-library-only code that runs inside the sandbox's namespaces.

``run_sandboxed`` (``grpo_dist.reward.sandbox``) starts this file as ``python -I -S -B sandbox_launcher.py
CONFIG`` in the sandbox directory: isolated mode, no site-packages, so it must not import ``grpo_dist`` (or
anything outside the standard library); everything it needs from the host comes in the JSON ``CONFIG``. It
enters the namespaces, sets up the private mounts, forks, drops privileges, applies the limits and execs
the code, then supervises it until nothing of it is left, reporting on the status pipe. ``main()`` refuses
to run unless started by ``run_sandboxed``. What is isolated, how, and what is not: ``docs/sandbox.md``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import resource
import signal
import sys
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

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
    code_file = config["code_file"]
    with open(code_file, "rb") as f:
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
    with open(code_file, "wb") as f:
        f.write(code)
    os.chmod(code_file, 0o644)
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
    _limit(resource.RLIMIT_NOFILE, config["max_open_files"])
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
    os.execv(executable, [executable, "-I", "-S", "-B", config["code_file"]])


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
    """The launcher: ``python -I -S -B sandbox_launcher.py CONFIG``, started by ``run_sandboxed`` only."""
    if len(argv) != 2:
        sys.stderr.write("sandbox_launcher.py is started by grpo_dist.reward.sandbox.run_sandboxed, not by hand\n")
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


if __name__ == "__main__":
    sys.exit(main(sys.argv))
