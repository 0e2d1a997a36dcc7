"""The submit path's token handling: the Ray auth token is never sent in clear text to another machine."""

from __future__ import annotations

import pytest

from grpo_dist.submit import SubmitError, prepare_auth


def test_token_never_sent_over_plain_http_to_another_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with pytest.raises(SubmitError, match=r"refusing to send the Ray auth token over plain http to ray-head\.example"):
        prepare_auth("http://ray-head.example:8265", allow_insecure_token=False)
    assert prepare_auth("http://127.0.0.1:8265", allow_insecure_token=False) is True
    assert prepare_auth("http://localhost:8265", allow_insecure_token=False) is True
    assert prepare_auth("https://ray-head.example:8265", allow_insecure_token=False) is True
    assert prepare_auth("http://ray-head.example:8265", allow_insecure_token=True) is True


def test_no_token_no_auth_and_bad_addresses(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    assert prepare_auth("http://ray-head.example:8265", allow_insecure_token=False) is False
    with pytest.raises(SubmitError, match="expected http://HOST:PORT"):
        prepare_auth("ray-head.example:8265", allow_insecure_token=False)
