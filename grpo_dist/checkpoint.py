"""Atomic, verified checkpoints.

Layout under ``RUN_DIR/checkpoints/``::

    step_000010/
        manifest.json      every other file's size and sha256 (written last)
        controller.json    step, data cursor, weights version, the config it was written under
        learner/           DeepSpeed state of every rank: model, optimizer, LR scheduler (with LoRA: the
                           adapters and their optimizer state; the frozen base is the run's model.path)
        hf/                the policy in Hugging Face format (safetensors): transformers and vLLM load it
            adapter/       with LoRA: the adapter in peft's format (PeftModel.from_pretrained, vLLM's
                           LoRARequest); hf/ itself holds the merged model
    latest                 the name of the newest complete checkpoint

A checkpoint is written into ``.tmp-step_000010-<pid>/``, every file is fsynced, the manifest is
written and fsynced, and only then is the directory renamed into place and ``latest`` replaced (write
a temporary file, fsync, ``os.replace``, fsync the directory). A crash at any point leaves ``latest``
naming a checkpoint that verifies; leftovers are removed on the next start. Old checkpoints are pruned
only after ``latest`` points at the new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "latest"
FORMAT_VERSION = 1
_NAME = re.compile(r"^step_(\d{6,})$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why and what else is available."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_json_durably(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` through a temporary file, fsynced, then renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    _fsync_file(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class CheckpointManager:
    def __init__(self, root: Path, *, keep_last: int = 2) -> None:
        if keep_last < 1:
            raise ValueError(f"trainer.keep_last = {keep_last}: keep at least one checkpoint")
        self.root = root
        self.keep_last = keep_last
        self.resumed_from: Path | None = None
        """The checkpoint this run started from (``resolve``): never pruned while the run lives, because a
        replaced engine restarts from its export (or its adapter) before it is brought up to date."""

    # ---------------------------------------------------------------------------------------------- write

    def begin(self, step: int) -> Path:
        """A fresh temporary directory to write the checkpoint of ``step`` into."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        return tmp

    def commit(self, tmp: Path, step: int) -> Path:
        """Seal ``tmp`` (fsync + manifest), move it into place, point ``latest`` at it, prune old ones."""
        files = {}
        for path in _files(tmp):
            _fsync_file(path)
            files[str(path.relative_to(tmp))] = {"size": path.stat().st_size, "sha256": _sha256(path)}
        for d in sorted({p.parent for p in _files(tmp)} | {tmp}, key=lambda p: len(p.parts), reverse=True):
            _fsync_dir(d)
        write_json_durably(tmp / MANIFEST, {"format": FORMAT_VERSION, "step": step, "files": files})
        final = self.root / checkpoint_name(step)
        if final.exists():  # a previous attempt at this step (e.g. before a resume): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(self.root)
        latest_tmp = self.root / (LATEST + ".tmp")
        latest_tmp.write_text(final.name + "\n")
        _fsync_file(latest_tmp)
        os.replace(latest_tmp, self.root / LATEST)
        _fsync_dir(self.root)
        self.prune()
        return final

    def prune(self) -> None:
        """Remove all but the newest ``keep_last`` complete checkpoints (never the one ``latest`` names, nor
        the one the run resumed from)."""
        latest = self.latest_name()
        complete = self.list()
        kept = self.resumed_from.resolve() if self.resumed_from is not None else None
        for path in complete[: max(0, len(complete) - self.keep_last)]:
            if path.name != latest and path.resolve() != kept:
                shutil.rmtree(path, ignore_errors=True)

    def cleanup(self) -> list[Path]:
        """Remove what an interrupted save left behind; returns what was removed."""
        if not self.root.is_dir():
            return []
        removed = [p for p in self.root.iterdir() if p.name.startswith(".tmp-") or p.name == LATEST + ".tmp"]
        for p in removed:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        if removed:
            logger.info(
                "removed %d leftovers of an interrupted checkpoint: %s", len(removed), [p.name for p in removed]
            )
        return removed

    # ----------------------------------------------------------------------------------------------- read

    def list(self) -> list[Path]:
        """Checkpoint directories, oldest first (complete or not: ``verify`` tells)."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name)]
        return sorted(found, key=lambda p: int(_NAME.match(p.name)[1]))  # type: ignore[index]

    def latest_name(self) -> str | None:
        path = self.root / LATEST
        return path.read_text().strip() if path.is_file() else None

    def verify(self, path: Path) -> dict[str, Any]:
        """Check every file against the manifest; returns the manifest or raises ``CheckpointError``."""
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise CheckpointError(f"{path}: no {MANIFEST} (the checkpoint was never completed)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{manifest_path}: not valid JSON ({exc})") from None
        if manifest.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT_VERSION}")
        for rel, meta in manifest["files"].items():
            file = path / rel
            if not file.is_file():
                raise CheckpointError(f"{path}: {rel} is missing")
            if file.stat().st_size != meta["size"]:
                raise CheckpointError(
                    f"{path}: {rel} has {file.stat().st_size} bytes, the manifest says {meta['size']}"
                )
            if _sha256(file) != meta["sha256"]:
                raise CheckpointError(f"{path}: {rel} does not match its checksum (corrupted)")
        extra = {str(p.relative_to(path)) for p in _files(path)} - set(manifest["files"])
        if extra:
            raise CheckpointError(f"{path}: files not in the manifest: {sorted(extra)}")
        return manifest

    def resolve(self, resume: str) -> Path | None:
        """The checkpoint to resume from for ``trainer.resume`` (``auto``: latest, or None when there is
        none yet; else a path). A corrupt one is refused, naming the newest one that verifies."""
        if resume == "never":
            return None
        if resume == "auto":
            name = self.latest_name()
            if name is None:
                return None
            path = self.root / name
        else:
            path = Path(resume)
        try:
            self.verify(path)
        except CheckpointError as exc:
            fallback = self._newest_valid(exclude=path)
            hint = (
                f"; the previous checkpoint {fallback} verifies: resume from it with trainer.resume={fallback}"
                if fallback
                else "; no other checkpoint verifies"
            )
            raise CheckpointError(f"cannot resume: {exc}{hint}") from None
        self.resumed_from = path
        return path

    def _newest_valid(self, *, exclude: Path) -> Path | None:
        for path in reversed(self.list()):
            if path.resolve() == exclude.resolve():
                continue
            try:
                self.verify(path)
            except CheckpointError:
                continue
            return path
        return None
