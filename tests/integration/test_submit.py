"""`grpo-dist submit` and `grpo-dist jobs` used as a user uses them, against a real Ray head started with
``ray start --head`` (dashboard on 127.0.0.1) and a second worker node.

The cluster turns token authentication on by itself, because a token is in ``~/.ray/auth_token``; the
``grpo-dist`` commands run as subprocesses whose environment holds nothing a user would not have set (no
``RAY_*`` variable): they must find the token themselves. The tiny config runs 2 steps as a job followed to
SUCCEEDED; a long job is followed with ``jobs status`` and stopped with ``jobs stop``.

The tests share a temporary HOME (where the token lives) and one cluster; only the processes they started
are stopped: the ``ray start`` process groups by PID, and the job drivers Ray starts in sessions of their own
by the marker in the environment they inherited from the cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import MARKER_VAR, TINY_CONFIG, kill_marked_processes, tiny_overrides

pytestmark = pytest.mark.slow

BIN_DIR = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _user_env(home: Path) -> dict[str, str]:
    """What a user's shell holds: this HOME, the project's environment first on PATH, and no ``RAY_*``
    variable (this test process may hold some: ``ray.init`` sets ``RAY_AUTH_MODE`` in its own environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != MARKER_VAR}
    return env | {"HOME": str(home), "PATH": os.pathsep.join([str(BIN_DIR), os.environ.get("PATH", "")])}


def _ray_start(args: list[str], env: dict[str, str], groups: list[int]) -> None:
    """``ray start`` in a new session: every daemon it leaves behind shares the process group recorded in
    ``groups`` (Ray renames its processes, so their command lines do not say whose they are)."""
    proc = subprocess.Popen(
        [str(BIN_DIR / "ray"), "start", *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    groups.append(proc.pid)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]


@dataclass(frozen=True)
class Cluster:
    address: str  # the dashboard, http://127.0.0.1:PORT
    client_env: dict[str, str]  # a user's environment: HOME holds the token, no RAY_* variable


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    temp_dir = tempfile.mkdtemp(prefix="gd-submit-", dir="/tmp")  # Ray's socket paths must stay short
    home = tmp_path_factory.mktemp("home")
    user_env = _user_env(home)
    marker = uuid.uuid4().hex
    # the head is started as a user starts it: no RAY_AUTH_MODE, the token file alone turns authentication on
    head_env = user_env | {"PYTHONPATH": str(Path.cwd()), MARKER_VAR: marker}
    # `ray start --address` does not turn token mode on from the file: a worker node is told, as the
    # deploy recipes tell theirs
    worker_env = head_env | {"RAY_AUTH_MODE": "token"}
    gcs, dashboard = _free_port(), _free_port()
    groups: list[int] = []
    try:
        subprocess.run(
            [str(BIN_DIR / "ray"), "get-auth-token", "--generate"],
            env=user_env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        assert (home / ".ray" / "auth_token").is_file()
        _ray_start(
            [
                "--head",
                f"--port={gcs}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                "--num-cpus=6",
                f"--temp-dir={temp_dir}",
                "--disable-usage-stats",
            ],
            head_env,
            groups,
        )
        # a second node on this machine: its own agent ports, so it does not collide with the head's
        _ray_start(
            [
                f"--address=127.0.0.1:{gcs}",
                "--num-cpus=4",
                "--disable-usage-stats",
                f"--dashboard-agent-listen-port={_free_port()}",
                f"--dashboard-agent-grpc-port={_free_port()}",
                f"--runtime-env-agent-port={_free_port()}",
                f"--metrics-export-port={_free_port()}",
            ],
            worker_env,
            groups,
        )
        yield Cluster(address=f"http://127.0.0.1:{dashboard}", client_env=user_env)
    finally:
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        kill_marked_processes(marker)  # job drivers: Ray starts each in a session of its own
        shutil.rmtree(temp_dir, ignore_errors=True)


def _grpo_dist(cluster: Cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The installed ``grpo-dist`` command, in the user's environment."""
    return subprocess.run(
        [str(BIN_DIR / "grpo-dist"), *args, "--address", cluster.address],
        env=cluster.client_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"rc={result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"


def _job_status(cluster: Cluster, job_id: str) -> str:
    result = _grpo_dist(cluster, "jobs", "status", job_id)
    assert result.returncode == 0, _output(result)
    info = json.loads(result.stdout)
    assert info["job_id"] == job_id
    return str(info["status"])


def _wait_for_status(cluster: Cluster, job_id: str, wanted: set[str], *, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while (status := _job_status(cluster, job_id)) not in wanted:
        assert time.monotonic() < deadline, f"job {job_id} still {status} after {timeout_s:g} s, wanted {wanted}"
        time.sleep(2.0)
    return status


def test_the_cluster_requires_the_token(cluster: Cluster) -> None:
    """Without this, the tests below would pass against an open cluster and prove nothing about the token."""
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{cluster.address}/api/jobs/", timeout=30)
    assert info.value.code == 401


def test_submit_waits_for_the_job_to_succeed(cluster: Cluster, tiny_assets: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    job_id = f"gd-short-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    result = _grpo_dist(
        cluster,
        "submit",
        str(TINY_CONFIG),
        *tiny_overrides(tiny_assets, out),
        "trainer.total_steps=2",
        "logging.progress=plain",
        "--job-id",
        job_id,
        "--wait",
        "--timeout",
        "600",
        timeout=700,
    )
    assert result.returncode == 0, _output(result)
    assert f"submitted job {job_id}" in result.stdout
    assert f"job {job_id}: SUCCEEDED" in result.stdout
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {1, 2} <= set(steps)
    assert time.monotonic() - start < 600

    assert _job_status(cluster, job_id) == "SUCCEEDED"
    logs = _grpo_dist(cluster, "jobs", "logs", job_id)
    assert logs.returncode == 0, _output(logs)
    assert f"run directory: {out}" in logs.stdout  # the last line the job's `grpo-dist train` prints


def test_jobs_stop_a_running_job(cluster: Cluster, tiny_assets: dict[str, str], tmp_path: Path) -> None:
    job_id = f"gd-long-{uuid.uuid4().hex[:8]}"
    result = _grpo_dist(
        cluster,
        "submit",
        str(TINY_CONFIG),
        *tiny_overrides(tiny_assets, tmp_path / "run"),
        "trainer.total_steps=100000",
        "--job-id",
        job_id,
    )
    assert result.returncode == 0, _output(result)
    assert f"submitted job {job_id}" in result.stdout
    assert _wait_for_status(cluster, job_id, {"RUNNING", "FAILED", "SUCCEEDED"}, timeout_s=120) == "RUNNING"

    stop = _grpo_dist(cluster, "jobs", "stop", job_id)
    assert stop.returncode == 0, _output(stop)
    assert stop.stdout.strip() == "true"  # printed as JSON
    assert _wait_for_status(cluster, job_id, {"STOPPED", "FAILED", "SUCCEEDED"}, timeout_s=120) == "STOPPED"


def test_submit_refuses_a_job_the_cluster_cannot_hold(cluster: Cluster) -> None:
    result = _grpo_dist(cluster, "submit", str(TINY_CONFIG), "rollout.num_engines=20")
    assert result.returncode == 2, _output(result)
    assert "could never be placed" in result.stderr
    assert "CPUs: asked" in result.stderr
