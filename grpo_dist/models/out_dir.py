"""A model directory the user names on the command line: refused when it would clobber something, written
whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


class OutDirError(ValueError):
    """An output directory that cannot be written; the message names it and the fix."""


def check_out_dir(out_dir: Path, *, force: bool) -> None:
    """Refuse an ``out_dir`` that exists (unless ``force``), or that ``force`` would replace although it is
    not a model directory."""
    if out_dir.exists() and not force:
        raise OutDirError(f"{out_dir}: already exists; remove it, choose another directory or pass --force")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutDirError(f"{out_dir}: exists and is not a directory")
    # --force replaces a model directory, never some other directory given by mistake
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file():
        raise OutDirError(f"{out_dir}: exists and is not a model directory (no config.json); not replacing it")


def write_model_dir(out_dir: Path, build: Callable[[Path], None]) -> Path:
    """``build(tmp)`` fills a temporary directory beside ``out_dir`` that then replaces it whole: an
    interrupted build leaves the old directory (or none) behind, never half a model."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make the user's directory private
        build(tmp)
        if out_dir.exists():  # force: replace only once the new directory is complete
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
