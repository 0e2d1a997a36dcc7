"""Everything a run checks before it starts an actor, in one pass that ``grpo-dist validate`` runs too.

``parse_config`` checks the config on its own; this module checks it against the world: the model
directory (``config.json``, an architecture this machine can train, the tokenizer, the context length),
the data files (present, well-formed rows, prompts within ``data.max_prompt_length`` under the model's
own tokenizer and chat template), the reward functions (the user's modules import, their kwargs fit
their signatures) and an explicit ``trainer.resume`` path. Every problem is collected before any is
reported, so one ``validate`` shows them all, each naming its config field, file or row; ``train`` fails
with the same message, within seconds and before Ray starts.

What stays for ``train``: whether the cluster can hold the run (that needs Ray) and the full
verification of a checkpoint (it reads every shard).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grpo_dist.config import Config, ConfigError, model_context_length

if TYPE_CHECKING:
    from grpo_dist.data import PromptStats
    from grpo_dist.types import Prompt

__all__ = ["RunInputs", "check_inputs"]


@dataclass
class RunInputs:
    """What the checks loaded, so that ``train`` does not load it twice."""

    model_path: str
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    train_prompts: list[Prompt]
    train_stats: PromptStats
    eval_prompts: list[Prompt] = field(default_factory=list)
    eval_files: list[str] = field(default_factory=list)


def check_inputs(cfg: Config, *, device: str, build_embedded: bool, source: str | None = None) -> RunInputs | None:
    """Check the model, data, reward functions and resume path of ``cfg``; raise ``ConfigError`` listing
    every problem found.

    ``build_embedded=False`` (``validate``): the embedded default model and task data are not built when
    missing (a few minutes of work) and the checks that need them are left to ``train``; the result is
    then None. With ``build_embedded=True`` (``train``) they are built, and the loaded inputs returned.
    """
    errors: list[str] = []
    model_path = _model_path(cfg, build_embedded, errors)
    tokenizer = None
    if model_path is not None:
        tokenizer = _check_model(cfg, model_path, device, errors)
    files = _data_files(cfg, build_embedded)
    loaded: dict[str, tuple[list[Prompt], PromptStats]] = {}
    if files is not None:
        train_files, eval_files = files
        for name, paths in (("train", train_files), ("eval", eval_files)):
            if paths:
                result = _check_data(cfg, name, paths, tokenizer, errors)
                if result is not None:
                    loaded[name] = result
                    errors += _mixed_kinds(cfg, name, result[0])
    errors += _reward_errors(cfg)
    errors += _environment_errors(cfg)
    resume = cfg.trainer.resume
    if resume not in ("never", "auto") and not Path(resume).is_dir():
        errors.append(f"trainer.resume = {resume!r}: no checkpoint directory there")
    if errors:
        raise ConfigError(errors, source)
    if model_path is None or tokenizer is None or files is None:
        return None
    train_prompts, train_stats = loaded["train"]
    eval_prompts = loaded.get("eval", ([], None))[0]
    if cfg.eval.max_prompts:
        eval_prompts = eval_prompts[: cfg.eval.max_prompts]
    return RunInputs(model_path, tokenizer, train_prompts, train_stats, eval_prompts, list(files[1]))


def _model_path(cfg: Config, build_embedded: bool, errors: list[str]) -> str | None:
    path = cfg.model.path
    if path is not None:
        if not Path(path).exists():
            errors.append(f"model.path = {path!r}: no such directory")
            return None
        if not (Path(path) / "config.json").is_file():
            errors.append(f"model.path = {path!r}: no config.json there (a Hugging Face model directory)")
            return None
        return path
    from grpo_dist.embedded import embedded_model_dir

    target = embedded_model_dir()
    if (target / ".complete").exists():
        return str(target)
    if not build_embedded:
        return None  # ours, built and checked by the first train (grpo-dist init-model builds it now)
    from grpo_dist.models.assets import ensure_embedded_model

    return str(ensure_embedded_model())


def _check_model(cfg: Config, model_path: str, device: str, errors: list[str]) -> Any:
    """The model's own checks; returns its tokenizer, or None when it cannot be loaded."""
    from grpo_dist.models.support import unsupported_reason

    where = f"model.path = {model_path!r}" if cfg.model.path is not None else f"the embedded model {model_path}"
    try:
        hf_config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        errors.append(f"{where}: config.json cannot be read ({exc})")
        return None
    reason = unsupported_reason(hf_config, device=device)
    if reason is not None:
        errors.append(f"{where} cannot be trained correctly on {device}: {reason}")
    total = cfg.data.max_prompt_length + cfg.data.max_response_length
    context = model_context_length(cfg.model.model_copy(update={"path": model_path}))
    if cfg.model.path is None and context is not None and total > context:  # a given path: parse_config said so
        errors.append(
            f"data.max_prompt_length + data.max_response_length = {total} exceeds the context of {where} "
            f"({context} tokens)"
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError, KeyError) as exc:
        errors.append(f"{where}: its tokenizer does not load: {type(exc).__name__}: {exc}")
        return None


def _data_files(cfg: Config, build_embedded: bool) -> tuple[list[str], list[str]] | None:
    if cfg.data.train_files or build_embedded:
        from grpo_dist.models.assets import resolve_data_files

        return resolve_data_files(cfg)
    return None  # the embedded task's files: ours, written by the first train


def _check_data(
    cfg: Config, name: str, paths: list[str], tokenizer: Any, errors: list[str]
) -> tuple[list[Prompt], PromptStats] | None:
    """Rows of ``paths`` checked; with a tokenizer, also rendered and measured against the length policy."""
    from grpo_dist.data import DatasetError, load_prompts, load_rows

    field_name = f"data.{name}_files"
    try:
        if tokenizer is None:
            load_rows(paths, skip_invalid=cfg.data.skip_invalid)
            return None
        return load_prompts(paths, tokenizer, cfg.data, source=name)
    except DatasetError as exc:
        errors.append(f"{field_name}: {exc}")
        return None


def _mixed_kinds(cfg: Config, name: str, prompts: list[Prompt]) -> list[str]:
    """A multi-turn rollout continues chat prompts through the chat template and plain ones as text: one
    engine call cannot hold both, so a dataset must be one kind."""
    if not cfg.rollout.multi_turn.enabled:
        return []
    chat = next((p for p in prompts if p.messages is not None), None)
    plain = next((p for p in prompts if p.messages is None), None)
    if chat is None or plain is None:
        return []
    return [
        f"data.{name}_files: rollout.multi_turn needs one kind of prompt per dataset, but row {chat.prompt_id} "
        f"is chat messages and row {plain.prompt_id} plain text (data.apply_chat_template = 'always' renders "
        "both as chat)"
    ]


@contextlib.contextmanager
def _importable_from_cwd() -> Iterator[None]:
    """The user's modules importable from the directory they run in, as every actor finds them (the local
    Ray puts it on their ``PYTHONPATH``)."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            sys.path.remove(cwd)


def _environment_errors(cfg: Config) -> list[str]:
    """Import the multi-turn environment and check its kwargs and ``reset``, as the engines will load it."""
    mt = cfg.rollout.multi_turn
    if mt.env is None:
        return []
    from grpo_dist.envs.base import environment_class

    with _importable_from_cwd():
        try:
            environment_class(mt.env, mt.env_kwargs)
        except ValueError as exc:
            return [str(exc)]
    return []


def _reward_errors(cfg: Config) -> list[str]:
    """Import every reward function and check its kwargs against its signature, as the workers will."""
    from grpo_dist.reward.builtins import resolve

    errors = []
    with _importable_from_cwd():
        for i, function in enumerate(cfg.reward.functions):
            try:
                resolve(function, index=i, max_response_length=cfg.data.max_response_length)
            except ValueError as exc:
                errors.append(str(exc))
    return errors
