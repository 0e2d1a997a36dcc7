"""Datasets to prompts: read and check rows, template and tokenize them, and stream them by epoch.

``load_rows`` (files -> checked rows) -> ``build_prompts`` (rows -> ``Prompt``s, length policy applied)
-> ``PromptCursor`` (resumable order in which training draws them). ``load_prompts`` chains the first
two with the settings of a ``DataConfig``. Everything runs in the driver, once, before any actor starts,
so data problems surface as a ``DatasetError`` naming the file, row and field rather than mid-run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from grpo_dist.data.cursor import PromptCursor
from grpo_dist.data.prompts import PromptStats, build_prompts
from grpo_dist.data.rows import DatasetError, LoadReport, Row, load_rows, normalize_row
from grpo_dist.types import Prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from grpo_dist.config import DataConfig

__all__ = [
    "DatasetError",
    "LoadReport",
    "PromptCursor",
    "PromptStats",
    "Row",
    "build_prompts",
    "load_prompts",
    "load_rows",
    "normalize_row",
]


def load_prompts(
    paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase,
    data_cfg: DataConfig,
    *,
    source: str,
) -> tuple[list[Prompt], PromptStats]:
    """Read ``paths`` and build their prompts with ``data_cfg``'s skip / length / template settings.

    ``source`` (``train`` / ``eval``) only labels messages and metrics; the caller picks ``paths``
    (``data_cfg.train_files`` or ``eval_files``) because an empty list there means the embedded task,
    whose files the caller writes first. The returned stats carry the load report in ``stats.load``.
    """
    rows, report = load_rows(paths, skip_invalid=data_cfg.skip_invalid)
    prompts, stats = build_prompts(
        rows,
        tokenizer,
        max_prompt_length=data_cfg.max_prompt_length,
        policy=data_cfg.overlong_prompt_policy,
        apply_chat_template=data_cfg.apply_chat_template,
        source=source,
    )
    stats.load = report
    return prompts, stats
