"""The sandbox for model-written code (``run_sandboxed``) and the ``code_exec`` reward built on it.

The escape attempts are real: each runs hostile code and asserts what exactly stopped it. Where the
mechanism that would stop it is not available on this machine (not root, no namespaces), the test skips
with that reason instead of asserting something the machine does not do. A summary of attempts, contained
and skipped ones is written to ``tests/.records/sandbox.json`` when the module finishes.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from grpo_dist.config import RewardConfig, RewardFunctionConfig
from grpo_dist.reward import RewardScorer, sandbox
from grpo_dist.reward.builtins import BUILTINS, FunctionSpec, resolve
from grpo_dist.reward.code_exec import code_exec, extract_code, parse_test_cases
from grpo_dist.reward.sandbox import SANDBOX_UID, SandboxError, SandboxResult, run_sandboxed
from grpo_dist.types import Completion, Prompt, RolloutGroup

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

IS_ROOT = os.geteuid() == 0
RECORDS_PATH = Path(__file__).resolve().parents[1] / ".records" / "sandbox.json"
ESCAPES: dict[str, str] = {}
"""Escape-attempt test name -> "attempted", "contained" or "skipped: <reason>"; summarised at module end."""


def without_machine_paths(text: str) -> str:
    """``text`` with this machine's interpreter paths replaced by ``<python>`` and ``<prefix>``.

    Skip reasons quote the interpreter (e.g. one the sandbox uid cannot read); the committed record must
    not name a path of the machine that wrote it. Longest first: the interpreter lies under the prefix.
    """
    replacements = {
        os.path.realpath(sys.executable): "<python>",
        sys.executable: "<python>",
        os.path.realpath(sys.base_prefix): "<prefix>",
        sys.base_prefix: "<prefix>",
    }
    for path in sorted(replacements, key=len, reverse=True):
        if path:
            text = text.replace(path, replacements[path])
    return text


@pytest.fixture(scope="module", autouse=True)
def _write_records() -> Iterator[None]:
    yield
    skipped = [
        {"test": name, "reason": without_machine_paths(status[len("skipped: ") :])}
        for name, status in ESCAPES.items()
        if status.startswith("skipped")
    ]
    record = {
        "escape_attempts": sum(not status.startswith("skipped") for status in ESCAPES.values()),
        "contained": sum(status == "contained" for status in ESCAPES.values()),
        "skipped": skipped,
    }
    try:
        RECORDS_PATH.parent.mkdir(parents=True, exist_ok=True)
        RECORDS_PATH.write_text(json.dumps(record, indent=2) + "\n")
    except OSError as exc:  # a read-only checkout (tests run as another user) must not fail the suite
        warnings.warn(f"could not write {RECORDS_PATH}: {exc}", stacklevel=1)


class Escape:
    """Bookkeeping for one escape attempt: ``contained()`` after its assertions, ``skip(reason)`` instead."""

    def __init__(self, name: str) -> None:
        self.name = name
        ESCAPES[name] = "attempted"

    def contained(self) -> None:
        ESCAPES[self.name] = "contained"

    def skip(self, reason: str) -> None:
        ESCAPES[self.name] = f"skipped: {reason}"
        pytest.skip(reason)


@pytest.fixture
def escape(request: pytest.FixtureRequest) -> Escape:
    return Escape(request.node.name)


@pytest.fixture
def base_dir() -> Iterator[Path]:
    """A fresh base directory with a unique path, so leftover sandbox processes can be found by it.

    Under the system temp dir and traversable (0755) rather than pytest's ``tmp_path``, whose parents are
    private to the user running the tests and so not enterable by the sandbox uid without namespaces.
    """
    path = Path(tempfile.mkdtemp(prefix="sandbox-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


_PLAIN_PROBE: list[str | None] = []


def plain_mode_unavailable() -> str | None:
    """Why the no-namespace fallback cannot run here (None when it can); probed once."""
    if not _PLAIN_PROBE:
        base = tempfile.mkdtemp(prefix="sandbox-probe-")
        os.chmod(base, 0o755)
        try:
            run_sandboxed("pass", base_dir=base)
            _PLAIN_PROBE.append(None)
        except SandboxError as exc:
            _PLAIN_PROBE.append(f"the no-namespace fallback refuses to run here, as documented: {exc}")
        finally:
            shutil.rmtree(base)
    return _PLAIN_PROBE[0]


@pytest.fixture
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, escape: Escape) -> str:
    """``namespaces``: whatever the machine allows; ``plain``: the fallback without any namespace."""
    if request.param == "plain":
        monkeypatch.setattr(sandbox, "_USE_NAMESPACES", False)
        reason = plain_mode_unavailable()
        if reason is not None:
            escape.skip(reason)
    return str(request.param)


both_modes = pytest.mark.parametrize("mode", ["namespaces", "plain"], indirect=True)


def run(code: str, base: Path, **kwargs: object) -> SandboxResult:
    return run_sandboxed(code, base_dir=str(base), **kwargs)  # type: ignore[arg-type]


def processes_mentioning(marker: str) -> list[int]:
    """Pids of processes whose environment mentions ``marker`` (a sandbox's HOME is under its base dir).

    Processes we may not read (another user's, without root) cannot be sandbox processes of ours.
    """
    needle = marker.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if needle in environ:
            found.append(int(entry.name))
    return found


def assert_nothing_left(result: SandboxResult, base: Path) -> None:
    """No process of the run remains: neither in its process group nor anywhere with its HOME."""
    with pytest.raises(ProcessLookupError):
        os.killpg(result.pid, 0)
    assert processes_mentioning(str(base)) == []
    assert list(base.iterdir()) == [], "the sandbox directory was not removed"


# ----------------------------------------------------------------------------------------------------------
# Ordinary runs
# ----------------------------------------------------------------------------------------------------------


def test_runs_code_with_stdin_and_reports_isolation(base_dir: Path) -> None:
    result = run(
        "import sys\nprint(sys.stdin.read().upper(), end='')\nprint('err', file=sys.stderr)", base_dir, stdin="héllo\n"
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "HÉLLO\n", "err\n")
    assert result.ok and not result.timed_out and result.killed_by_signal is None and not result.output_truncated
    assert 0 < result.wall_s < 5
    if IS_ROOT:
        assert result.uid == SANDBOX_UID
    else:
        assert result.uid == os.getuid()
    assert list(base_dir.iterdir()) == []


def test_isolated_interpreter_and_clean_environment(base_dir: Path) -> None:
    code = (
        "import os, sys\n"
        "print(sorted(os.environ.items()))\n"
        "print(sys.flags.isolated, sys.flags.no_site, sys.flags.dont_write_bytecode)\n"
        "print(os.getcwd() == os.environ['HOME'])"
    )
    result = run(code, base_dir)
    assert result.ok, result.stderr
    env_line, flags_line, cwd_line = result.stdout.splitlines()
    env = dict(ast.literal_eval(env_line))
    assert set(env) == {"PATH", "HOME", "LANG", "PYTHONDONTWRITEBYTECODE"}
    assert env["PATH"] == "/usr/bin:/bin" and env["LANG"] == "C.UTF-8" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"].startswith(f"{base_dir}/grpo-sandbox-")  # the sandbox dir: a fresh child of base_dir
    assert flags_line == "1 1 1"
    assert cwd_line == "True"


def test_nonzero_exit_and_exception_are_reported(base_dir: Path) -> None:
    assert run("raise SystemExit(3)", base_dir).returncode == 3
    result = run("1/0", base_dir)
    assert result.returncode == 1 and "ZeroDivisionError" in result.stderr and not result.ok


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": float("nan")}, "timeout_s"),
        ({"cpu_time_s": 0}, "cpu_time_s"),
        ({"memory_mb": 8}, "memory_mb"),
        ({"max_processes": 0}, "max_processes"),
        ({"max_output_bytes": -1}, "max_output_bytes"),
        ({"max_file_mb": True}, "max_file_mb"),
    ],
)
def test_rejects_bad_limits(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_sandboxed("pass", **kwargs)  # type: ignore[arg-type]


def test_fallback_without_namespaces(base_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without namespaces the result says so; as root with an interpreter uid 65534 cannot read, it refuses."""
    monkeypatch.setattr(sandbox, "_USE_NAMESPACES", False)
    if plain_mode_unavailable() is not None:
        assert IS_ROOT  # the documented fail-closed case: never run model code as root
        with pytest.raises(SandboxError, match="refusing to run model code as root"):
            run("print('ran')", base_dir)
        return
    result = run("print('ran')", base_dir)
    assert result.stdout == "ran\n"
    assert not result.network_isolated and not result.pid_isolated and not result.private_tmp
    assert result.uid == (SANDBOX_UID if IS_ROOT else os.getuid())


# ----------------------------------------------------------------------------------------------------------
# Escape attempts
# ----------------------------------------------------------------------------------------------------------


@both_modes
def test_escape_infinite_loop_killed_at_wall_clock_timeout(base_dir: Path, escape: Escape, mode: str) -> None:
    start = time.monotonic()
    result = run("while True:\n    pass", base_dir, timeout_s=1.5, cpu_time_s=30)
    elapsed = time.monotonic() - start
    assert result.timed_out and result.killed_by_signal == signal.SIGKILL and result.returncode == -signal.SIGKILL
    assert 1.5 <= elapsed < 1.5 + 2
    assert_nothing_left(result, base_dir)
    escape.contained()


@both_modes
def test_escape_sleeping_forever_killed_at_timeout(base_dir: Path, escape: Escape, mode: str) -> None:
    # No CPU use, so RLIMIT_CPU never fires: only the wall clock stops it.
    result = run("import time\ntime.sleep(3600)", base_dir, timeout_s=1.0)
    assert result.timed_out and result.killed_by_signal == signal.SIGKILL and result.wall_s < 1.0 + 2
    assert_nothing_left(result, base_dir)
    escape.contained()


@both_modes
def test_escape_cpu_burn_stopped_by_rlimit_cpu(base_dir: Path, escape: Escape, mode: str) -> None:
    result = run("while True:\n    pass", base_dir, timeout_s=20, cpu_time_s=1)
    assert not result.timed_out
    assert result.killed_by_signal in (signal.SIGXCPU, signal.SIGKILL)  # soft limit, or hard limit 1 s later
    assert result.wall_s < 5
    escape.contained()


@both_modes
def test_escape_fork_bomb(base_dir: Path, escape: Escape, mode: str) -> None:
    start = time.monotonic()
    result = run("import os\nwhile True: os.fork()", base_dir, timeout_s=3, max_processes=16)
    assert time.monotonic() - start < 3 + 2
    # RLIMIT_NPROC makes fork fail (BlockingIOError), or the group is killed at the deadline.
    assert result.timed_out or "BlockingIOError" in result.stderr
    assert result.returncode != 0
    assert_nothing_left(result, base_dir)
    escape.contained()


@both_modes
def test_escape_persistent_fork_bomb(base_dir: Path, escape: Escape, mode: str) -> None:
    """A bomb that survives EAGAIN keeps every slot busy until the deadline; then all of it must die."""
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    start = time.monotonic()
    result = run(code, base_dir, timeout_s=2, max_processes=16)
    assert time.monotonic() - start < 2 + 2
    assert result.timed_out and result.killed_by_signal == signal.SIGKILL
    assert_nothing_left(result, base_dir)
    escape.contained()


@both_modes
def test_escape_background_child_outliving_main(base_dir: Path, escape: Escape, mode: str) -> None:
    code = "import os, time\nif os.fork() == 0:\n    time.sleep(3600)\n    os._exit(0)\nprint('main done')"
    result = run(code, base_dir, timeout_s=10)
    assert result.ok and result.stdout == "main done\n"
    assert result.wall_s < 3  # not held open by the child until the deadline
    assert_nothing_left(result, base_dir)
    escape.contained()


@both_modes
def test_escape_setsid_child(base_dir: Path, escape: Escape, mode: str) -> None:
    """A child in a session of its own is out of killpg's reach: the PID namespace, or the subreaper, gets it."""
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(3600)\n"
        "    os._exit(0)\n"
        "time.sleep(0.2)\n"
        "print('main done')"
    )
    result = run(code, base_dir, timeout_s=10)
    assert result.ok and result.stdout == "main done\n" and result.wall_s < 3
    assert_nothing_left(result, base_dir)
    escape.contained()


@both_modes
def test_escape_huge_allocation(base_dir: Path, escape: Escape, mode: str) -> None:
    result = run("x = bytearray(10**10)\nprint('allocated')", base_dir, memory_mb=256)
    assert result.returncode == 1 and "MemoryError" in result.stderr and "allocated" not in result.stdout
    assert not result.timed_out
    assert run("print('host fine')", base_dir).stdout == "host fine\n"
    escape.contained()


def test_escape_write_to_shared_tmp_dir(base_dir: Path, escape: Escape) -> None:
    """A world-writable directory in /tmp: any uid may write there, so only the private /tmp stops it."""
    target_dir = Path(tempfile.gettempdir()) / f"sandbox-escape-{uuid.uuid4().hex}"
    target_dir.mkdir()
    target_dir.chmod(0o1777)
    target = target_dir / "escape.txt"
    try:
        probe = run("pass", base_dir)
        if not probe.private_tmp:
            escape.skip(
                "no mount namespace: /tmp is shared and world-writable directories there are writable (documented)"
            )
        result = run(f"open({str(target)!r}, 'w').write('escaped')", base_dir)
        assert result.returncode == 1 and "FileNotFoundError" in result.stderr  # the dir does not exist in there
        assert not target.exists()
        assert list(target_dir.iterdir()) == []
    finally:
        shutil.rmtree(target_dir)
    escape.contained()


def test_escape_write_to_host_home(base_dir: Path, escape: Escape) -> None:
    if not IS_ROOT:
        escape.skip("not root: the code runs as the caller's uid and may write to that user's home (documented)")
    home = Path(os.path.expanduser("~"))
    target = home / f"sandbox-escape-{uuid.uuid4().hex}.txt"
    try:
        result = run(f"open({str(target)!r}, 'w').write('escaped')", base_dir)
        assert result.returncode == 1 and "PermissionError" in result.stderr
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)
    escape.contained()


@both_modes
def test_escape_huge_file(base_dir: Path, escape: Escape, mode: str) -> None:
    code = (
        "with open('big.bin', 'wb') as f:\n"
        "    for _ in range(100):\n"
        "        f.write(b'x' * (1 << 20))\n"
        "print('wrote 100 MiB')"
    )
    result = run(code, base_dir, max_file_mb=4)
    # Python ignores SIGXFSZ, so the write past RLIMIT_FSIZE fails with EFBIG; another program would get the signal.
    assert result.returncode != 0 and "wrote 100 MiB" not in result.stdout
    assert "File too large" in result.stderr or result.killed_by_signal == signal.SIGXFSZ
    assert list(base_dir.iterdir()) == []
    escape.contained()


def test_escape_many_files_fill_disk(base_dir: Path, escape: Escape) -> None:
    """RLIMIT_FSIZE bounds one file; the total is bounded by the private tmpfs the sandbox writes to."""
    probe = run("pass", base_dir)
    if not probe.private_tmp:
        escape.skip("no mount namespace: the total written to the sandbox dir is not bounded (documented)")
    code = (
        "import itertools\n"
        "for i in itertools.count():\n"
        "    with open(f'f{i}', 'wb') as f:\n"
        "        f.write(b'x' * (1 << 20))"
    )
    result = run(code, base_dir, max_file_mb=2, timeout_s=10)  # a private tmpfs of 16 MiB
    assert result.returncode == 1 and "No space left on device" in result.stderr and not result.timed_out
    assert list(base_dir.iterdir()) == []
    escape.contained()


def test_escape_socket_to_host_listener(base_dir: Path, escape: Escape) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        code = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'leak')\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print('blocked', exc.errno)"
        )
        result = run(code, base_dir)
        if not result.network_isolated:
            escape.skip("the kernel refused a network namespace (not root and no user namespaces)")
        assert result.ok and result.stdout.startswith("blocked"), result.stdout
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing arrived
        # Control: the same code with network=True does reach the listener, so the check above can fail.
        allowed = run(code, base_dir, network=True)
        assert allowed.stdout == "connected\n"
        conn, _ = listener.accept()
        conn.close()
    escape.contained()


@both_modes
def test_escape_read_host_environment(
    base_dir: Path, escape: Escape, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("GRPO_SANDBOX_TEST_SECRET", secret)
    result = run("import os\nprint(dict(os.environ))", base_dir)
    assert result.ok and "HOME" in result.stdout
    assert secret not in result.stdout and "GRPO_SANDBOX_TEST_SECRET" not in result.stdout
    escape.contained()


def test_escape_read_other_processes_environment(
    base_dir: Path, escape: Escape, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every /proc/<pid>/environ the code can see: the host's are hidden (own /proc) or not readable (uid)."""
    probe = run("pass", base_dir)
    if not (probe.pid_isolated or IS_ROOT):
        escape.skip("no PID namespace and not root: the code may read /proc/<pid>/environ of its own user (documented)")
    secret = f"secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("GRPO_SANDBOX_TEST_SECRET", secret)
    code = (
        "import os\n"
        "for pid in os.listdir('/proc'):\n"
        "    try:\n"
        "        print(pid, open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except (OSError, ValueError):\n"
        "        pass"
    )
    result = run(code, base_dir)
    assert result.ok, result.stderr
    assert secret not in result.stdout
    escape.contained()


HOST_SCRIPT = """
import sys
from grpo_dist.config import RewardFunctionConfig
from grpo_dist.reward import RewardScorer, sandbox
sandbox._USE_NAMESPACES = sys.argv[2] == "namespaces"
sandbox.run_sandboxed("import time\\ntime.sleep(3600)", timeout_s=60, base_dir=sys.argv[1])
"""


@both_modes
def test_escape_outliving_a_killed_host(base_dir: Path, escape: Escape, mode: str) -> None:
    """The scorer SIGKILLs its child when a reward call runs past the scorer's deadline: the sandbox must go too."""
    host = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT, str(base_dir), mode])
    try:
        deadline = time.monotonic() + 10
        while not processes_mentioning(str(base_dir)):
            assert time.monotonic() < deadline, "the sandbox did not start"
            assert host.poll() is None, "the host process exited early"
            time.sleep(0.02)
        time.sleep(0.3)  # past set-up, into the code's sleep
    finally:
        host.kill()
        host.wait()
    deadline = time.monotonic() + 5
    while processes_mentioning(str(base_dir)):
        assert time.monotonic() < deadline, (
            f"sandbox processes survived their host: {processes_mentioning(str(base_dir))}"
        )
        time.sleep(0.02)
    escape.contained()


@both_modes
def test_escape_printing_forever(base_dir: Path, escape: Escape, mode: str) -> None:
    result = run("while True:\n    print('x' * 1000)", base_dir, timeout_s=1.5, max_output_bytes=10_000)
    assert result.timed_out and result.output_truncated
    assert len(result.stdout) == 10_000 and set(result.stdout) <= {"x", "\n"}
    assert result.wall_s < 1.5 + 2
    escape.contained()


def test_host_files_stay_readable(base_dir: Path) -> None:
    """Documented, not a bug: the sandbox restricts writes, not reads of world-readable files."""
    result = run("print(open('/etc/passwd').read().startswith('root:'))", base_dir)
    assert result.stdout == "True\n"


# ----------------------------------------------------------------------------------------------------------
# code_exec
# ----------------------------------------------------------------------------------------------------------

SQUARE_CASES = json.dumps(
    [{"input": "0\n", "output": "0\n"}, {"input": "2\n", "output": "4\n"}, {"input": "3\n", "output": "9\n"}]
)


def ce(solution: str, ground_truth: object, **kwargs: object) -> float:
    return code_exec("unit", solution, ground_truth, None, **kwargs)  # type: ignore[arg-type]


def test_code_exec_correct_wrong_and_partial() -> None:
    correct = "Here you go:\n```python\nn = int(input())\nprint(n * n)   \n\n```\n"
    assert ce(correct, SQUARE_CASES) == 1.0
    assert ce("```python\nprint(int(input()) + 1)\n```", SQUARE_CASES) == 0.0
    # n * 2 equals n * n for 0 and 2 only
    assert ce("```python\nprint(int(input()) * 2)\n```", SQUARE_CASES) == pytest.approx(2 / 3)


def test_code_exec_assert_tests() -> None:
    solution = "```python\ndef add(a, b):\n    return a + b\n```"
    assert ce(solution, json.dumps({"tests": "assert add(1, 2) == 3\nassert add(-1, 1) == 0"})) == 1.0
    assert ce(solution, json.dumps({"tests": "assert add(1, 2) == 4"})) == 0.0
    assert ce(solution, {"tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 5"]}) == 0.5
    # Exiting 0 before the asserts run must not count as passing.
    assert ce("def add(a, b):\n    return 0\nimport sys\nsys.exit(0)", {"tests": "assert add(1, 2) == 3"}) == 0.0


def test_code_exec_failures_of_the_program_score_zero() -> None:
    assert ce("```python\nwhile True: pass\n```", json.dumps([{"input": "", "output": "x"}]), timeout_s=0.5) == 0.0
    assert ce("this is not python", SQUARE_CASES) == 0.0
    assert ce("```python\nprint(int(input()) ** 2)\nraise SystemExit(1)\n```", SQUARE_CASES) == 0.0


def test_extract_code_takes_the_last_python_block() -> None:
    text = "```python\nprint(1)\n```\nbetter:\n```py\nprint(2)\n```\n```\nplain\n```"
    assert extract_code(text) == "print(2)\n"
    assert extract_code("print(3)") == "print(3)"
    assert extract_code("```Python3\nx = 1\n```") == "x = 1\n"


@pytest.mark.parametrize(
    "ground_truth",
    ["not json", "[]", "{}", '{"tests": ""}', '{"tests": [1]}', '[{"input": "1"}]', "42", None],
)
def test_code_exec_rejects_malformed_ground_truth(ground_truth: object) -> None:
    with pytest.raises(ValueError, match="code_exec"):
        parse_test_cases(ground_truth)


def test_code_exec_registered_with_kwarg_checks() -> None:
    assert BUILTINS["code_exec"] == "grpo_dist.reward.code_exec:code_exec"
    assert resolve(FunctionSpec("code_exec", kwargs={"timeout_s": 2, "memory_mb": 256})) is code_exec
    for kwargs, field in [
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": "5"}, "timeout_s"),
        ({"memory_mb": 8}, "memory_mb"),
        ({"memory_mb": 64.0}, "memory_mb"),
        ({"language": "cpp"}, "language"),
    ]:
        with pytest.raises(ValueError, match=field):
            resolve(FunctionSpec("code_exec", kwargs=kwargs))
    with pytest.raises(ValueError, match="language"):
        ce("print(1)", SQUARE_CASES, language="cpp")


def test_code_exec_through_the_reward_scorer() -> None:
    """End to end: the scorer's child process runs code_exec, which runs the sandbox (a third process tree)."""
    texts = ["```python\nprint(int(input()) ** 2)\n```", "```python\nprint(int(input()) * 2)\n```", "while True: pass"]
    prompt = Prompt(
        prompt_id=7, token_ids=[1], text="square n", ground_truth=SQUARE_CASES, data_source="unit", extra_info={}
    )
    group = RolloutGroup(
        prompt=prompt,
        completions=[Completion(token_ids=[1], logprobs=[-0.1], finish_reason="stop", text=t) for t in texts],
        weights_version=0,
        engine_index=0,
    )
    config = RewardFunctionConfig(name="code_exec", timeout_s=10.0, kwargs={"timeout_s": 0.5, "memory_mb": 256})
    with RewardScorer(RewardConfig(functions=[config], failure_policy="fail"), max_response_length=64) as scorer:
        (scored,) = scorer.score([group])
    assert scored.rewards == pytest.approx([1.0, 2 / 3, 0.0])
    assert scored.valid == [True, True, True]
