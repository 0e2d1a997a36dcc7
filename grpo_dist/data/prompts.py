"""Turn checked rows into ``Prompt`` messages: chat template, tokenization, prompt-length policy.

All of this happens once, at load time, in the driver: engines receive token ids and never re-tokenize,
so the tokens the learner scores are exactly the tokens the engine was conditioned on, and an overlong
prompt is dealt with before any engine could reject it (or silently truncate it differently) mid-run.

Rendering (``apply_chat_template``):

* ``auto``: chat-message prompts go through ``tokenizer.apply_chat_template(messages, tokenize=False,
  add_generation_prompt=True)``; string prompts are used verbatim (they are assumed to be written for
  the model already, as completion-style prompts like ``"37+485="`` are).
* ``always``: as ``auto``, and a string prompt is first wrapped as one ``user`` message.
* ``never``: string prompts verbatim; a chat-message prompt is an error naming the row, since there is no
  faithful way to flatten messages without a template.

Tokenization: the rendered text is tokenized with ``add_special_tokens=False`` (a chat template writes
the special tokens it wants; letting the tokenizer add its own on top is how prompts end up with two
BOS tokens). Then one rule for BOS, the same for templated and plain prompts: if the tokenizer has a
``bos_token_id`` and the tokens do not already start with it, it is put in front. Tokenizers without a
BOS (Qwen-style) get nothing; templates that write BOS themselves (Llama-3, Gemma, Mistral style) are not
doubled. ``Prompt.text`` is the rendered text and does not show a BOS added this way.

Length policy (``max_prompt_length`` counts every token, BOS included):

* ``error``: ``DatasetError`` naming the first overlong row (id, file, row, its length, the limit) and how
  many others are overlong.
* ``filter``: overlong prompts are dropped and counted (an all-filtered dataset is an error).
* ``truncate``: the prompt keeps its last ``max_prompt_length`` tokens: the end of a prompt holds the
  question and the generation cue, the start usually boilerplate. A leading BOS is kept in front (it
  counts towards the limit), because models trained with one misbehave without it. ``Prompt.text`` is
  re-decoded from the kept tokens so logs show what the model saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from grpo_dist.data.rows import DatasetError, LoadReport
from grpo_dist.types import Prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["ChatTemplateMode", "OverlongPolicy", "PromptStats", "build_prompts"]

OverlongPolicy = Literal["error", "filter", "truncate"]
ChatTemplateMode = Literal["auto", "always", "never"]
_POLICIES = ("error", "filter", "truncate")
_TEMPLATE_MODES = ("auto", "always", "never")
_MAX_LISTED = 5


@dataclass
class PromptStats:
    """What ``build_prompts`` did, for the run's log and metrics (nothing is dropped or cut silently)."""

    source: str
    """``train`` or ``eval`` (names the metrics)."""
    max_prompt_length: int
    policy: str
    num_rows: int = 0
    """Rows given."""
    num_prompts: int = 0
    """Prompts returned (``num_rows - num_filtered``)."""
    num_filtered: int = 0
    num_truncated: int = 0
    num_templated: int = 0
    """Prompts rendered with the chat template."""
    num_bos_added: int = 0
    """Prompts that got the tokenizer's BOS in front (see the module docstring)."""
    max_length: int = 0
    """Longest prompt seen, in tokens, before the length policy."""
    min_length: int = 0
    mean_length: float = 0.0
    filtered_row_ids: list[int] = field(default_factory=list)
    truncated_row_ids: list[int] = field(default_factory=list)
    load: LoadReport | None = None
    """The file reading report, when the rows came from ``load_prompts``."""

    def metrics(self) -> dict[str, float]:
        """Flat scalars keyed ``<source>/<name>`` (``train/num_filtered``); the caller files them under its
        ``data/`` namespace, so the keys stay valid wherever the metrics end up."""
        prefix = f"{self.source}/"
        out = {
            "num_rows": self.num_rows,
            "num_prompts": self.num_prompts,
            "num_filtered": self.num_filtered,
            "num_truncated": self.num_truncated,
            "prompt_length_max": self.max_length,
            "prompt_length_min": self.min_length,
            "prompt_length_mean": self.mean_length,
        }
        if self.load is not None:
            out["num_skipped_invalid"] = self.load.num_skipped
        return {prefix + k: float(v) for k, v in out.items()}


def _error(
    row: Mapping[str, Any], row_id: int, message: str, reason: str, field: str | None = "prompt"
) -> DatasetError:
    return DatasetError(
        message,
        file=row.get("source_file"),
        row=row.get("source_row"),
        line=row.get("source_line"),
        row_id=row_id,
        field=field,
        reason=reason,
    )


def _render(
    row: Mapping[str, Any], row_id: int, tokenizer: PreTrainedTokenizerBase, mode: str, source: str
) -> tuple[str, bool]:
    """The prompt text the model sees, and whether the chat template made it."""
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        if mode != "always":
            return prompt, False
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and prompt:
        if mode == "never":
            raise _error(
                row,
                row_id,
                f"{source} prompt is a list of chat messages but data.apply_chat_template = 'never'; use 'auto' "
                "or give string prompts",
                "template",
            )
        messages = prompt
    else:
        raise _error(
            row, row_id, f"expected a non-empty string or list of chat messages, got {type(prompt).__name__}", "prompt"
        )
    if getattr(tokenizer, "chat_template", None) is None:
        raise _error(
            row,
            row_id,
            f"needs the chat template (data.apply_chat_template = {mode!r}) but the tokenizer has none; set "
            "'never' and give string prompts, or use a tokenizer with a chat template",
            "template",
        )
    import jinja2

    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except jinja2.TemplateError as exc:
        raise _error(row, row_id, f"the tokenizer's chat template refused these messages: {exc}", "template") from None
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected str")
    return text, True


def _chat_messages(prompt: Any, templated: bool) -> list[dict[str, Any]] | None:
    """The messages a templated prompt was rendered from (a string wrapped by ``always`` is one user message),
    whole: a multi-turn rollout renders them again, and any key left out (a ``name``, an assistant's
    ``tool_calls``) would render a conversation other than the prompt's tokens."""
    if not templated:
        return None
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def with_bos(ids: Sequence[int], bos: int | None) -> list[int]:
    """``ids`` with the tokenizer's BOS in front, unless it has none or ``ids`` already start with it (the
    module docstring's rule; a multi-turn fork's context is tokenized by it too)."""
    return [bos, *ids] if bos is not None and (not ids or ids[0] != bos) else list(ids)


def build_prompts(
    rows: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_prompt_length: int,
    policy: OverlongPolicy = "error",
    apply_chat_template: ChatTemplateMode = "auto",
    source: str = "train",
) -> tuple[list[Prompt], PromptStats]:
    """Render, tokenize and length-check ``rows`` (as from ``load_rows``); see the module docstring.

    A row without ``row_id`` gets its index in ``rows``. Tokenization is one batched call of the (fast)
    tokenizer over all rendered texts, which is what makes ~100k rows take seconds rather than minutes.
    """
    if max_prompt_length < 1:
        raise ValueError(f"data.max_prompt_length = {max_prompt_length}: must be >= 1")
    if policy not in _POLICIES:
        raise ValueError(f"data.overlong_prompt_policy = {policy!r}: expected one of {list(_POLICIES)}")
    if apply_chat_template not in _TEMPLATE_MODES:
        raise ValueError(f"data.apply_chat_template = {apply_chat_template!r}: expected one of {list(_TEMPLATE_MODES)}")
    stats = PromptStats(source=source, max_prompt_length=max_prompt_length, policy=policy, num_rows=len(rows))
    if not rows:
        raise DatasetError(f"no {source} rows to build prompts from", reason="empty_dataset")

    row_ids: list[int] = []
    texts: list[str] = []
    templated: list[bool] = []
    for index, row in enumerate(rows):
        row_id = int(row.get("row_id", index))
        text, was_templated = _render(row, row_id, tokenizer, apply_chat_template, source)
        row_ids.append(row_id)
        texts.append(text)
        templated.append(was_templated)
        stats.num_templated += was_templated

    encoded: list[list[int]] = tokenizer(
        texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False
    )["input_ids"]
    bos: int | None = tokenizer.bos_token_id

    prompts: list[Prompt] = []
    overlong: list[tuple[int, int]] = []  # (index, length)
    total = 0
    shortest: int | None = None
    for index, ids in enumerate(encoded):
        token_ids = with_bos(ids, bos)
        added_bos = len(token_ids) > len(ids)
        stats.num_bos_added += added_bos
        length = len(token_ids)
        total += length
        stats.max_length = max(stats.max_length, length)
        shortest = length if shortest is None else min(shortest, length)
        text = texts[index]
        if length > max_prompt_length:
            overlong.append((index, length))
            if policy == "filter":
                stats.filtered_row_ids.append(row_ids[index])
                continue
            if policy == "truncate":
                keep_bos = 1 if token_ids[0] == bos else 0
                tail = token_ids[length - (max_prompt_length - keep_bos) :]
                kept = token_ids[:keep_bos] + tail
                text = tokenizer.decode(kept[1 if added_bos else 0 :], skip_special_tokens=False)
                token_ids = kept
                stats.truncated_row_ids.append(row_ids[index])
        row = rows[index]
        prompts.append(
            Prompt(
                prompt_id=row_ids[index],
                token_ids=token_ids,
                text=text,
                ground_truth=row.get("ground_truth"),
                data_source=row.get("data_source"),
                extra_info=dict(row.get("extra_info") or {}),
                messages=_chat_messages(row.get("prompt"), templated[index]),
            )
        )
    stats.mean_length = total / len(encoded)
    stats.min_length = shortest or 0
    stats.num_filtered = len(stats.filtered_row_ids)
    stats.num_truncated = len(stats.truncated_row_ids)
    stats.num_prompts = len(prompts)

    if overlong and policy == "error":
        index, length = overlong[0]
        others = ", ".join(f"row_id {row_ids[i]} ({n} tokens)" for i, n in overlong[1 : 1 + _MAX_LISTED])
        more = f"; {len(overlong) - 1} more overlong: {others}" if len(overlong) > 1 else ""
        if len(overlong) > 1 + _MAX_LISTED:
            more += ", ..."
        raise _error(
            rows[index],
            row_ids[index],
            f"{source} prompt has {length} tokens, more than data.max_prompt_length = {max_prompt_length}{more}. "
            "Raise data.max_prompt_length, or set data.overlong_prompt_policy to 'filter' or 'truncate'",
            "overlong_prompt",
        )
    if not prompts:
        raise DatasetError(
            f"every {source} prompt ({len(rows)}) is longer than data.max_prompt_length = {max_prompt_length} "
            f"tokens (longest {stats.max_length}, shortest {stats.min_length}) and was filtered out",
            reason="empty_dataset",
        )
    return prompts, stats
