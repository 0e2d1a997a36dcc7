"""`grpo-dist submit` against a real Ray head (dashboard on 127.0.0.1, token authentication on) plus a second
worker node process: the tiny config runs 2 steps as a job, followed to SUCCEEDED, and its metrics exist.
Only the processes this test started are stopped, by PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _ray_start(args: list[str], env: dict[str, str], groups: list[int]) -> None:
    """``ray start`` in a new session: every daemon it leaves behind shares the process group recorded in
    ``groups`` (Ray renames its processes, so their command lines do not say whose they are)."""
    proc = subprocess.Popen(
        [_ray_bin(), "start", *args], env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    groups.append(proc.pid)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    temp_dir = tempfile.mkdtemp(prefix="gd-submit-", dir="/tmp")
    home = tmp_path / "home"
    home.mkdir()
    # the cluster's nodes run the project's environment, as an installed image would: its python first on PATH
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    # RAY_AUTH_MODE=token: worker nodes and clients must present the token this HOME will hold
    env = os.environ | {"HOME": str(home), "PYTHONPATH": str(Path.cwd()), "RAY_AUTH_MODE": "token", "PATH": path}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard = _free_port(), _free_port()
    groups: list[int] = []
    try:
        # a token in this HOME turns Ray's token authentication on for the cluster started below
        subprocess.run(
            [_ray_bin(), "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60
        )
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
            env,
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
            env,
            groups,
        )
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


def test_submit_runs_the_job_to_success(
    ray_head: tuple[str, dict[str, str]], tiny_assets: dict[str, str], tmp_path: Path
) -> None:
    address, env = ray_head
    assert (Path(env["HOME"]) / ".ray" / "auth_token").is_file()  # token authentication is on
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "grpo_dist.cli",
        "submit",
        "configs/tiny.yaml",
        f"model.path={tiny_assets['model']}",
        f"data.train_files=[{tiny_assets['train']}]",
        f"data.eval_files=[{tiny_assets['eval']}]",
        f"trainer.output_dir={out}",
        "trainer.total_steps=2",
        "rollout.kv_cache_gib=0.25",
        "eval.max_prompts=4",
        "logging.progress=plain",
        "--address",
        address,
        "--wait",
        "--timeout",
        "600",
    ]
    start = time.monotonic()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=700)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SUCCEEDED" in result.stdout
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {1, 2} <= set(steps)
    assert time.monotonic() - start < 600


def test_submit_refuses_a_job_the_cluster_cannot_hold(ray_head: tuple[str, dict[str, str]]) -> None:
    address, env = ray_head
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpo_dist.cli",
            "submit",
            "configs/tiny.yaml",
            "rollout.num_engines=20",
            "--address",
            address,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "could never be placed" in result.stderr
    assert "CPUs: asked" in result.stderr
