"""build_prompts / load_prompts with a real byte-level BPE tokenizer: templates, BOS, length policies."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_dist.config import DataConfig
from grpo_dist.data import DatasetError, build_prompts, load_prompts, load_rows
from grpo_dist.models.builder import tokenizer_corpus, train_tokenizer
from grpo_dist.tasks.arithmetic import write_splits


@pytest.fixture(scope="module")
def tok() -> Any:
    return train_tokenizer(tokenizer_corpus(0), 512)


@pytest.fixture(scope="module")
def tok_no_bos(tok: Any) -> Any:
    t = copy.deepcopy(tok)
    t.bos_token = None
    assert t.bos_token_id is None
    return t


@pytest.fixture(scope="module")
def tok_bos_template(tok: Any) -> Any:
    """A template that writes BOS itself (as Llama-3 / Gemma templates do)."""
    t = copy.deepcopy(tok)
    t.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    return t


def encode(tok: Any, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def row(prompt: Any, row_id: int = 0, **extra: Any) -> dict[str, Any]:
    return {"row_id": row_id, "prompt": prompt, **extra}


CHAT = [{"role": "system", "content": "Add."}, {"role": "user", "content": "12+30="}]


# --------------------------------------------------------------------------------------------------------
# Rendering and BOS
# --------------------------------------------------------------------------------------------------------


def test_string_prompt_is_used_verbatim_with_bos_in_front(tok: Any) -> None:
    rows = [row("12+30=", 7, ground_truth="42", data_source="add", extra_info={"a": 12})]
    (p,), stats = build_prompts(rows, tok, max_prompt_length=64)
    assert p.prompt_id == 7 and p.text == "12+30="
    assert p.token_ids == [tok.bos_token_id, *encode(tok, "12+30=")]
    assert (p.ground_truth, p.data_source, p.extra_info) == ("42", "add", {"a": 12})
    assert stats.num_templated == 0 and stats.num_bos_added == 1
    assert all(type(t) is int for t in p.token_ids)


def test_chat_prompt_is_rendered_with_generation_prompt(tok: Any) -> None:
    (p,), stats = build_prompts([row(CHAT)], tok, max_prompt_length=64)
    assert p.text == "system: Add.\nuser: 12+30=\nassistant: "
    assert p.token_ids == [tok.bos_token_id, *encode(tok, p.text)]
    assert stats.num_templated == 1


def test_always_wraps_a_string_as_one_user_message(tok: Any) -> None:
    (p,), _ = build_prompts([row("12+30=")], tok, max_prompt_length=64, apply_chat_template="always")
    assert p.text == "user: 12+30=\nassistant: "


def test_never_keeps_strings_and_rejects_chat_rows(tok: Any, tmp_path: Path) -> None:
    (p,), _ = build_prompts([row("12+30=")], tok, max_prompt_length=64, apply_chat_template="never")
    assert p.text == "12+30="
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"prompt": CHAT}) + "\n")
    rows, _ = load_rows([path])
    with pytest.raises(DatasetError, match=re.escape(f"{path}, row 1 (line 2), row_id 1, field 'prompt': train")) as e:
        build_prompts(rows, tok, max_prompt_length=64, apply_chat_template="never")
    assert "apply_chat_template = 'never'" in str(e.value)


def test_bos_written_by_the_template_is_not_doubled(tok_bos_template: Any) -> None:
    t = tok_bos_template
    (chat, plain), stats = build_prompts([row(CHAT, 0), row("12+30=", 1)], t, max_prompt_length=64)
    assert chat.text.startswith("<|bos|>system: Add.")
    assert chat.token_ids.count(t.bos_token_id) == 1 and chat.token_ids[0] == t.bos_token_id
    assert plain.token_ids[0] == t.bos_token_id  # the same rule for plain strings
    assert stats.num_bos_added == 1


def test_tokenizer_without_bos_gets_none(tok_no_bos: Any) -> None:
    (p,), stats = build_prompts([row("12+30=")], tok_no_bos, max_prompt_length=64)
    assert p.token_ids == encode(tok_no_bos, "12+30=")
    assert stats.num_bos_added == 0


def test_tokenizer_without_chat_template(tok: Any) -> None:
    t = copy.deepcopy(tok)
    t.chat_template = None
    (p,), _ = build_prompts([row("1+1=")], t, max_prompt_length=64)  # plain strings need no template
    assert p.text == "1+1="
    with pytest.raises(DatasetError, match=r"row_id 3, field 'prompt': needs the chat template .* has none"):
        build_prompts([row("1+1=", 2), row(CHAT, 3)], t, max_prompt_length=64)


def test_template_that_refuses_messages_names_the_row(tok: Any) -> None:
    t = copy.deepcopy(tok)
    t.chat_template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}x"
    with pytest.raises(DatasetError, match=r"row_id 4, field 'prompt': .*refused these messages: user first"):
        build_prompts([row(CHAT, 4)], t, max_prompt_length=64)


def test_rows_without_row_id_use_their_index(tok: Any) -> None:
    prompts, _ = build_prompts([{"prompt": "a"}, {"prompt": "b"}], tok, max_prompt_length=64)
    assert [p.prompt_id for p in prompts] == [0, 1]
    assert prompts[0].extra_info == {} and prompts[0].ground_truth is None


def test_argument_checks(tok: Any) -> None:
    with pytest.raises(ValueError, match="max_prompt_length = 0"):
        build_prompts([row("a")], tok, max_prompt_length=0)
    with pytest.raises(ValueError, match="overlong_prompt_policy = 'cut'"):
        build_prompts([row("a")], tok, max_prompt_length=8, policy="cut")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="apply_chat_template = 'yes'"):
        build_prompts([row("a")], tok, max_prompt_length=8, apply_chat_template="yes")  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="no eval rows"):
        build_prompts([], tok, max_prompt_length=8, source="eval")


# --------------------------------------------------------------------------------------------------------
# Length policies
# --------------------------------------------------------------------------------------------------------

LONG = "9" * 20  # 20 digit tokens (digits are split one per token), 21 with BOS


def test_error_policy_names_row_length_and_limit(tok: Any, tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["1+1=", LONG, "2+2=", LONG + "9"]))
    rows, _ = load_rows([path])
    with pytest.raises(DatasetError) as info:
        build_prompts(rows, tok, max_prompt_length=16)
    msg = str(info.value)
    assert msg.startswith(f"{path}, row 1 (line 2), row_id 1, field 'prompt': train prompt has 21 tokens")
    assert "data.max_prompt_length = 16" in msg
    assert "1 more overlong: row_id 3 (22 tokens)" in msg
    assert info.value.reason == "overlong_prompt"


def test_exact_limit_is_not_overlong(tok: Any) -> None:
    (p,), stats = build_prompts([row(LONG)], tok, max_prompt_length=21)
    assert len(p.token_ids) == 21 and stats.num_truncated == stats.num_filtered == 0


def test_filter_policy_drops_and_counts(tok: Any) -> None:
    rows = [row("1+1=", 10), row(LONG, 11), row("2+2=", 12), row(LONG, 13)]
    prompts, stats = build_prompts(rows, tok, max_prompt_length=16, policy="filter")
    assert [p.prompt_id for p in prompts] == [10, 12]
    assert stats.num_filtered == 2 and stats.filtered_row_ids == [11, 13]
    assert (stats.num_rows, stats.num_prompts, stats.max_length) == (4, 2, 21)
    assert stats.metrics()["train/num_filtered"] == 2.0
    with pytest.raises(DatasetError, match=r"every eval prompt \(2\) is longer than data.max_prompt_length = 16"):
        build_prompts([row(LONG), row(LONG)], tok, max_prompt_length=16, policy="filter", source="eval")


def test_truncate_keeps_bos_and_the_last_tokens(tok: Any) -> None:
    text = "12+30=" + LONG  # the end of the prompt is what survives
    full = encode(tok, text)
    (p, short), stats = build_prompts([row(text, 0), row("1=", 1)], tok, max_prompt_length=8, policy="truncate")
    assert p.token_ids == [tok.bos_token_id, *full[-7:]]
    assert p.text == "9999999"
    assert short.token_ids == [tok.bos_token_id, *encode(tok, "1=")]
    assert (stats.num_truncated, stats.truncated_row_ids, stats.max_length) == (1, [0], len(full) + 1)


def test_truncate_chat_prompt_exact_result(tok: Any) -> None:
    (p,), _ = build_prompts([row(CHAT)], tok, max_prompt_length=6, policy="truncate")
    full = encode(tok, "system: Add.\nuser: 12+30=\nassistant: ")
    assert p.token_ids == [tok.bos_token_id, *full[-5:]]
    assert p.text == tok.decode(full[-5:])
    assert p.text.endswith("assistant: ")


def test_truncate_without_bos_keeps_exactly_the_last_tokens(tok_no_bos: Any) -> None:
    full = encode(tok_no_bos, LONG + "+1=")
    (p,), _ = build_prompts([row(LONG + "+1=")], tok_no_bos, max_prompt_length=5, policy="truncate")
    assert p.token_ids == full[-5:] and p.text == "99+1="


def test_truncate_keeps_a_template_written_bos_in_the_text(tok_bos_template: Any) -> None:
    t = tok_bos_template
    (p,), _ = build_prompts([row([{"role": "user", "content": LONG}])], t, max_prompt_length=4, policy="truncate")
    assert p.token_ids[0] == t.bos_token_id and len(p.token_ids) == 4
    assert p.text == "<|bos|>99\n"


@settings(max_examples=40, deadline=None)
@given(text=st.text(min_size=1, max_size=60).filter(str.strip), limit=st.integers(1, 24))
def test_truncate_property(tok: Any, text: str, limit: int) -> None:
    (p,), stats = build_prompts([row(text)], tok, max_prompt_length=limit, policy="truncate")
    full = [tok.bos_token_id, *encode(tok, text)]
    assert len(p.token_ids) == min(limit, len(full))
    assert p.token_ids[0] == tok.bos_token_id
    if len(full) > limit:
        assert p.token_ids[1:] == full[len(full) - (limit - 1) :]
        assert stats.num_truncated == 1
    else:
        assert p.token_ids == full and p.text == text


def test_stats(tok: Any) -> None:
    rows = [row("1=", 0), row(CHAT, 1), row("12345=", 2)]
    _, stats = build_prompts(rows, tok, max_prompt_length=64)
    lengths = [3, 1 + len(encode(tok, "system: Add.\nuser: 12+30=\nassistant: ")), 7]
    assert (stats.min_length, stats.max_length) == (min(lengths), max(lengths))
    assert stats.mean_length == pytest.approx(sum(lengths) / 3)
    assert stats.num_templated == 1 and stats.num_prompts == 3
    assert set(stats.metrics()) >= {"train/num_prompts", "train/prompt_length_max"}


# --------------------------------------------------------------------------------------------------------
# load_prompts
# --------------------------------------------------------------------------------------------------------


def test_load_prompts_end_to_end_with_the_embedded_task(tok: Any, tmp_path: Path) -> None:
    train, held_out = write_splits(tmp_path, num_train=50, num_eval=10, seed=0)
    cfg = DataConfig(max_prompt_length=16)
    prompts, stats = load_prompts([train], tok, cfg, source="train")
    assert len(prompts) == 50 and [p.prompt_id for p in prompts] == list(range(50))
    assert all(p.text.endswith("=") and p.ground_truth and p.data_source == "arithmetic/add" for p in prompts)
    assert set(prompts[0].extra_info) == {"a", "b", "op"}
    assert stats.load is not None and stats.load.num_rows == 50
    assert stats.metrics()["train/num_skipped_invalid"] == 0.0

    eval_prompts, _ = load_prompts(str(held_out), tok, cfg, source="eval")
    assert not {p.text for p in eval_prompts} & {p.text for p in prompts}


def test_load_prompts_applies_skip_invalid_and_policy(tok: Any, tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "1+1="}\n{bad\n' + json.dumps({"prompt": LONG}) + "\n")
    with pytest.raises(DatasetError, match=r"row 1 \(line 2\)"):
        load_prompts([path], tok, DataConfig(), source="train")
    cfg = DataConfig(skip_invalid=True, overlong_prompt_policy="filter", max_prompt_length=16)
    prompts, stats = load_prompts([path], tok, cfg, source="train")
    assert [p.prompt_id for p in prompts] == [0]
    assert stats.num_filtered == 1 and stats.filtered_row_ids == [2]
    assert stats.load is not None and stats.load.skipped == {"invalid_json": 1}
