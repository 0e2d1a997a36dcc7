"""The submit path's token handling: the token is found where Ray looks for it and sent as an explicit header
(whatever ``RAY_AUTH_MODE`` holds), and never in clear text to another machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from grpo_dist.submit import SubmitError, auth_headers, read_token

BEARER = {"Authorization": "Bearer secret"}


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A HOME without a token, and none of Ray's auth variables set."""
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def _write_token(home: Path, token: str) -> None:
    (home / ".ray").mkdir(exist_ok=True)
    (home / ".ray" / "auth_token").write_text(token)


def test_token_never_sent_over_plain_http_to_another_host(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    with pytest.raises(SubmitError, match=r"refusing to send the Ray auth token over plain http to ray-head\.example"):
        auth_headers("http://ray-head.example:8265", allow_insecure_token=False)
    assert auth_headers("http://127.0.0.1:8265", allow_insecure_token=False) == BEARER
    assert auth_headers("http://localhost:8265", allow_insecure_token=False) == BEARER
    assert auth_headers("http://[::1]:8265", allow_insecure_token=False) == BEARER
    assert auth_headers("https://ray-head.example:8265", allow_insecure_token=False) == BEARER
    assert auth_headers("http://ray-head.example:8265", allow_insecure_token=True) == BEARER
    assert "RAY_AUTH_MODE" not in os.environ  # the process's environment is left as it was


def test_token_from_the_places_ray_looks_in_its_order(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert read_token() is None
    _write_token(home, "from-home\n")
    assert read_token() == "from-home"
    named = home / "named_token"
    named.write_text("  from-path \n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    assert read_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert read_token() == "from-env"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "")  # empty: not a token, the next place is read
    assert read_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(home / "missing"))
    with pytest.raises(SubmitError, match=r"RAY_AUTH_TOKEN_PATH=.*missing: no such file"):
        read_token()


def test_no_token_no_header_and_bad_addresses(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert auth_headers("http://ray-head.example:8265", allow_insecure_token=False) == {}
    _write_token(home, "secret")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_headers("http://ray-head.example:8265", allow_insecure_token=False) == {}
    with pytest.raises(SubmitError, match="expected http://HOST:PORT"):
        auth_headers("ray-head.example:8265", allow_insecure_token=False)


class _Dashboard(BaseHTTPRequestHandler):
    """The two Jobs API answers ``grpo-dist jobs logs`` needs, behind token authentication as Ray's dashboard
    answers it (401 without a token, 403 with a wrong one)."""

    token = "secret"

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization")
        if auth != f"Bearer {self.token}":
            self._reply(401 if auth is None else 403, {"error": "missing" if auth is None else "invalid"})
        elif self.path == "/api/version":
            self._reply(200, {"version": "4", "ray_version": "2.60.0", "ray_commit": "0", "session_name": "s"})
        elif self.path == "/api/jobs/job-1/logs":
            self._reply(200, {"logs": "hello from job-1\n"})
        else:
            self._reply(404, {"error": self.path})

    def _reply(self, code: int, body: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def dashboard() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Dashboard)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_cli_sends_the_token_from_home_without_ray_auth_mode(dashboard: str, tmp_path: Path) -> None:
    """The user's case: a token in ~/.ray/auth_token and no Ray variable in the environment. Ray's own
    clients would send nothing (RAY_AUTH_MODE is read once, when Ray is first imported)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "grpo_dist.cli", "jobs", "logs", "job-1", "--address", dashboard]
    _write_token(tmp_path, "secret\n")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "hello from job-1\n\n"

    _write_token(tmp_path, "wrong")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Authentication failed" in result.stderr
