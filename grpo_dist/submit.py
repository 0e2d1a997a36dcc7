"""``grpo-dist submit`` and ``grpo-dist jobs``: run training on an existing Ray cluster via its Jobs API.

The config is validated here, then checked against what the cluster can hold (its nodes, read through
the cluster's state API) before anything is sent; a job that could never be placed is refused, saying
why. The job's runtime environment carries the project's package (``py_modules``) and the resolved config,
so the cluster runs exactly what was validated.

Token authentication (on by default in Ray 2.60): the token comes from ``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, looked up in that order as Ray does. Every client here is
given it as an explicit ``Authorization: Bearer`` header, so nothing depends on ``RAY_AUTH_MODE``: Ray's
own clients add the header only when ``RAY_AUTH_MODE=token`` was in the environment when Ray was first
imported (it caches its config then), which a user's shell usually does not hold. The token is never sent
over plain http to a non-loopback address (reach a remote dashboard through an SSH tunnel or port-forward,
or use https) unless ``--allow-insecure-token`` says so.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from grpo_dist.config import Config
from grpo_dist.placement import fit_problems, reward_cpus, role_specs

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

logger = logging.getLogger(__name__)

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
AGENT_WAIT_S = 60.0
PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent


class SubmitError(ValueError):
    pass


def read_token() -> str | None:
    """The Ray auth token, from where Ray itself looks and in its order: ``RAY_AUTH_TOKEN``, the file named
    by ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``; ``None`` when there is none."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if named:
        path = Path(named).expanduser()
        token = path.read_text().strip() if path.is_file() else ""
        if not token:  # as Ray: a path that is set but holds no token is an error, not "no token"
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={named}: no such file, or it is empty")
        return token
    path = Path.home() / ".ray" / "auth_token"
    return (path.read_text().strip() or None) if path.is_file() else None


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_headers(address: str, *, allow_insecure_token: bool) -> dict[str, str]:
    """The HTTP headers that present the token to the dashboard at ``address``: empty when there is no token
    (or ``RAY_AUTH_MODE=disabled``). Refuses to send the token in clear text to another machine."""
    url = urlparse(address)
    if url.scheme not in ("http", "https"):
        raise SubmitError(f"--address {address!r}: expected http://HOST:PORT or https://HOST:PORT of the dashboard")
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = read_token()
    if token is None:
        return {}
    if url.scheme == "http" and not _is_loopback(url.hostname or "") and not allow_insecure_token:
        raise SubmitError(
            f"refusing to send the Ray auth token over plain http to {url.hostname}: use an SSH tunnel or "
            "port-forward to 127.0.0.1, or https, or pass --allow-insecure-token if the network is trusted"
        )
    return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def _auth_errors(address: str) -> Iterator[None]:
    """A token the cluster refuses (or one it needs and did not get) as a ``SubmitError``, not a traceback."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        raise SubmitError(f"{address}: {exc}") from exc


def _job_client(address: str, headers: dict[str, str]) -> JobSubmissionClient:
    """A Jobs API client for the dashboard at ``address`` that sends ``headers`` (from ``auth_headers``)."""
    from ray.job_submission import JobSubmissionClient

    with _auth_errors(address):
        return JobSubmissionClient(address, headers=headers)


def cluster_nodes(address: str, *, headers: dict[str, str]) -> list[dict[str, float]]:
    """Total resources of each alive node, from the cluster's state API."""
    from ray.util.state import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    with _auth_errors(address):
        client = StateApiClient(address=address, headers={"Content-Type": "application/json", **headers})
        nodes = client.list(
            StateResource.NODES, options=ListApiOptions(detail=True, timeout=30), raise_on_missing_output=False
        )
    return [dict(n.resources_total) for n in nodes if n.state == "ALIVE"]


def check_fits(cfg: Config, nodes: list[dict[str, float]]) -> None:
    device = cfg.cluster.device
    if device == "auto":
        device = "cuda" if any(n.get("GPU", 0) for n in nodes) else "cpu"
    problems = fit_problems(role_specs(cfg, device), nodes, extra_cpus=reward_cpus(cfg))
    if problems:
        raise SubmitError("this job could never be placed on the cluster:\n  " + "\n  ".join(problems))


JOB_CONFIG_ENV = "GRPO_DIST_JOB_CONFIG"


def job_runtime_env(cfg: Config) -> dict[str, Any]:
    """The job's runtime environment: the package as a ``py_modules`` upload and the resolved config as
    YAML in an environment variable.

    Not a ``working_dir``: Ray re-extracts a working_dir when actors with their own runtime environment
    start, which deletes the directory the driver is running in.
    """
    return {
        "py_modules": [str(PACKAGE_DIR)],
        "env_vars": {"PYTHONUNBUFFERED": "1", JOB_CONFIG_ENV: cfg.to_yaml()},
    }


def submit(
    cfg: Config,
    *,
    address: str,
    allow_insecure_token: bool = False,
    submission_id: str | None = None,
    check_cluster: bool = True,
) -> str:
    headers = auth_headers(address, allow_insecure_token=allow_insecure_token)
    if cfg.cluster.address == "local":  # a job runs on the cluster it was submitted to
        cfg = cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={"address": "auto"})})
    if check_cluster:
        check_fits(cfg, cluster_nodes(address, headers=headers))
    client = _job_client(address, headers)
    # a freshly started cluster answers "No available agent" until its job agent is up: retry that, and
    # nothing else, until a deadline
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            with _auth_errors(address):
                job_id = client.submit_job(
                    entrypoint=f"python -m grpo_dist.cli train env:{JOB_CONFIG_ENV}",
                    submission_id=submission_id,
                    runtime_env=job_runtime_env(cfg),
                    metadata={"grpo_dist_output_dir": cfg.trainer.output_dir},
                )
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2.0)
    return job_id


def wait(
    address: str, job_id: str, *, timeout_s: float, follow: bool = True, allow_insecure_token: bool = False
) -> str:
    """Stream the job's logs (when ``follow``) until it ends; returns its final status. Never waits past
    ``timeout_s``."""
    import asyncio

    client = _job_client(address, auth_headers(address, allow_insecure_token=allow_insecure_token))
    deadline = time.monotonic() + timeout_s

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    with _auth_errors(address):
        if follow:
            with contextlib.suppress(TimeoutError):
                asyncio.run(asyncio.wait_for(tail(), timeout=timeout_s))
        while True:
            status = client.get_job_status(job_id).value
            if status in TERMINAL:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {status} after {timeout_s:g} s")
            time.sleep(1.0)


def job_command(action: str, address: str, job_id: str, *, allow_insecure_token: bool) -> Any:
    if action not in ("status", "logs", "stop"):
        raise ValueError(f"jobs {action!r}: expected status, logs or stop")
    client = _job_client(address, auth_headers(address, allow_insecure_token=allow_insecure_token))
    with _auth_errors(address):
        if action == "status":
            info = client.get_job_info(job_id)
            return {
                "job_id": job_id,
                "status": str(info.status.value),
                "message": info.message,
                "entrypoint": info.entrypoint,
            }
        if action == "logs":
            return client.get_job_logs(job_id)
        return client.stop_job(job_id)
