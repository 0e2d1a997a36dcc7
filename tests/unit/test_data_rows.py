"""load_rows: parquet / JSON-lines round trips, row ids, and errors that name file, row / line and field."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpo_dist.data import DatasetError, load_rows, normalize_row

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+2="}]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def user_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("prompt", "ground_truth", "data_source", "extra_info")}


# --------------------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------------------


def test_parquet_round_trip_with_chat_prompts_and_struct_extra_info(tmp_path: Path) -> None:
    rows = [
        {"prompt": "3+4=", "ground_truth": "7", "data_source": "add", "extra_info": {"a": 3, "b": 4}},
        {"prompt": "x", "ground_truth": None, "data_source": None, "extra_info": None},
    ]
    # parquet has one type per column: string prompts in this file, chat prompts in the next
    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    chat_path = tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": CHAT, "ground_truth": "3"}]), chat_path)

    out, report = load_rows([path, chat_path])
    assert [r["row_id"] for r in out] == [0, 1, 2]
    assert user_fields(out[0]) == rows[0]
    assert user_fields(out[1]) == {"prompt": "x", "ground_truth": None, "data_source": None, "extra_info": {}}
    assert out[2]["prompt"] == CHAT
    assert out[2]["extra_info"] == {}
    assert (out[2]["source_file"], out[2]["source_row"], out[2]["source_line"]) == (str(chat_path), 0, None)
    assert report.num_rows == 3
    assert report.rows_per_file == {str(path): 2, str(chat_path): 1}
    assert report.skipped == {} and report.ignored_columns == {}


def test_jsonl_round_trip_blank_lines_bom_and_crlf(tmp_path: Path) -> None:
    rows = [
        {"prompt": "héllo ✓", "ground_truth": "1", "extra_info": {"nested": [1, {"x": None}]}},
        {"prompt": CHAT, "data_source": "chat"},
    ]
    path = tmp_path / "d.jsonl"
    body = "\ufeff" + json.dumps(rows[0], ensure_ascii=False) + "\r\n\r\n   \n" + json.dumps(rows[1]) + "\r\n"
    path.write_bytes(body.encode("utf-8"))
    out, _ = load_rows(path)  # a single path, not a list
    assert [r["row_id"] for r in out] == [0, 1]
    assert out[0]["prompt"] == "héllo ✓"
    assert out[0]["extra_info"] == {"nested": [1, {"x": None}]}
    assert out[1]["prompt"] == CHAT and out[1]["data_source"] == "chat" and out[1]["ground_truth"] is None
    assert [r["source_line"] for r in out] == [1, 4]  # blank lines are not rows but are lines


def test_row_ids_are_global_across_files_in_order(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"a{i}"} for i in range(3)])
    b = tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": f"b{i}"} for i in range(2)]), b)
    c = write_jsonl(tmp_path / "c.json", [{"prompt": "c0"}])
    out, report = load_rows([b, a, c])
    assert [(r["row_id"], r["prompt"]) for r in out] == [
        (0, "b0"),
        (1, "b1"),
        (2, "a0"),
        (3, "a1"),
        (4, "a2"),
        (5, "c0"),
    ]
    assert report.files == [str(b), str(a), str(c)]


def test_message_extra_keys_kept_and_nulls_dropped(tmp_path: Path) -> None:
    chat = [
        {"role": "user", "content": "hi", "name": None},
        {"role": "tool", "content": "42", "name": "calc"},
    ]
    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": chat}]), path)
    (row,), _ = load_rows([path])
    assert row["prompt"] == [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42", "name": "calc"}]


def test_extra_info_as_json_string_map_or_empty_string(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    table = pa.table(
        {
            "prompt": ["p0", "p1", "p2"],
            "extra_info": pa.array([[("k", 1)], [], None], type=pa.map_(pa.string(), pa.int64())),
        }
    )
    pq.write_table(table, path)
    out, _ = load_rows([path])
    assert [r["extra_info"] for r in out] == [{"k": 1}, {}, {}]

    jl = write_jsonl(
        tmp_path / "e.jsonl", [{"prompt": "p", "extra_info": '{"a": [1, 2]}'}, {"prompt": "p", "extra_info": ""}]
    )
    out, _ = load_rows([jl])
    assert [r["extra_info"] for r in out] == [{"a": [1, 2]}, {}]


def test_nested_maps_in_struct_extra_info(tmp_path: Path) -> None:
    inner = pa.map_(pa.string(), pa.string())
    t = pa.struct([("tags", inner), ("n", pa.int64())])
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"prompt": ["p"], "extra_info": pa.array([{"tags": [("x", "y")], "n": 2}], type=t)}), path)
    (row,), _ = load_rows([path])
    assert row["extra_info"] == {"tags": {"x": "y"}, "n": 2}


def test_integer_ground_truth_becomes_its_decimal_string(tmp_path: Path) -> None:
    path = tmp_path / "g.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "ground_truth": [42, -7]}), path)
    out, _ = load_rows([path])
    assert [r["ground_truth"] for r in out] == ["42", "-7"]


def test_unknown_columns_are_ignored_and_reported(tmp_path: Path) -> None:
    pqp = tmp_path / "u.parquet"
    pq.write_table(pa.table({"promt": ["typo"], "prompt": ["ok"], "score": [1.0]}), pqp)
    jl = write_jsonl(tmp_path / "u.jsonl", [{"prompt": "ok", "answer": "1"}, {"prompt": "ok", "row_id": 9}])
    out, report = load_rows([pqp, jl])
    assert "promt" not in out[0] and "score" not in out[0]["extra_info"]
    assert out[2]["row_id"] == 2  # a row_id column does not override the assigned id
    assert report.ignored_columns == {str(pqp): ["promt", "score"], str(jl): ["answer", "row_id"]}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "prompt": st.one_of(
                    st.text(min_size=1).filter(str.strip),
                    st.lists(
                        st.fixed_dictionaries(
                            {"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": st.text()}
                        ),
                        min_size=1,
                        max_size=3,
                    ),
                ),
                "ground_truth": st.one_of(st.none(), st.text()),
                "data_source": st.one_of(st.none(), st.text()),
                "extra_info": st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(), st.none())),
            }
        ),
        min_size=1,
        max_size=8,
    )
)
def test_jsonl_round_trip_property(tmp_path_factory: pytest.TempPathFactory, rows: list[dict[str, Any]]) -> None:
    path = write_jsonl(tmp_path_factory.mktemp("h") / "h.jsonl", rows)
    out, report = load_rows([path])
    assert [user_fields(r) for r in out] == rows
    assert [r["row_id"] for r in out] == list(range(len(rows)))
    assert report.num_rows == len(rows)


# --------------------------------------------------------------------------------------------------------
# Malformed rows: each error names file, row (and line) and field
# --------------------------------------------------------------------------------------------------------

MALFORMED_JSONL: list[tuple[str, str, str | None, str]] = [
    # (line written as row 1 / line 2, reason, field, a fragment of the message)
    ('{"prompt": "x"', "invalid_json", None, "invalid JSON"),
    ('["prompt", "x"]', "not_an_object", None, "expected a JSON object"),
    ('{"ground_truth": "1"}', "missing_prompt", "prompt", "missing"),
    ('{"prompt": null}', "missing_prompt", "prompt", "missing"),
    ('{"prompt": 5}', "invalid_prompt", "prompt", "got int 5"),
    ('{"prompt": ""}', "empty_prompt", "prompt", "empty"),
    ('{"prompt": "  \\n "}', "empty_prompt", "prompt", "empty"),
    ('{"prompt": []}', "empty_prompt", "prompt", "empty list"),
    ('{"prompt": ["hi"]}', "invalid_prompt", "prompt[0]", "chat message must be an object"),
    ('{"prompt": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}', "invalid_prompt",
     "prompt[1].role", "'bot'"),
    ('{"prompt": [{"content": "b"}]}', "invalid_prompt", "prompt[0].role", "missing"),
    ('{"prompt": [{"role": "user"}]}', "invalid_prompt", "prompt[0].content", "missing"),
    ('{"prompt": [{"role": "user", "content": 3}]}', "invalid_prompt", "prompt[0].content", "got int 3"),
    ('{"prompt": "p", "ground_truth": 0.5}', "invalid_ground_truth", "ground_truth", '(e.g. "0.5")'),
    ('{"prompt": "p", "ground_truth": true}', "invalid_ground_truth", "ground_truth", "bool"),
    ('{"prompt": "p", "ground_truth": ["1"]}', "invalid_ground_truth", "ground_truth", "expected a string or null"),
    ('{"prompt": "p", "data_source": 1}', "invalid_data_source", "data_source", "expected a string or null"),
    ('{"prompt": "p", "extra_info": [1]}', "invalid_extra_info", "extra_info", "expected an object"),
    ('{"prompt": "p", "extra_info": "{bad"}', "invalid_extra_info", "extra_info", "must hold a JSON object"),
    ('{"prompt": "p", "extra_info": "[1, 2]"}', "invalid_extra_info", "extra_info", "not an object"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "reason", "field", "fragment"), MALFORMED_JSONL)
def test_malformed_jsonl_row_names_file_row_line_and_field(
    tmp_path: Path, line: str, reason: str, field: str | None, fragment: str
) -> None:
    path = write_lines(tmp_path / "bad.jsonl", ['{"prompt": "fine"}', "", line])
    with pytest.raises(DatasetError) as info:
        load_rows([path])
    err = info.value
    assert (err.file, err.row, err.line, err.field, err.reason) == (str(path), 1, 3, field, reason)
    message = str(err)
    assert message.startswith(f"{path}, row 1 (line 3)")
    if field is not None:
        assert f"field {field!r}" in message
    assert fragment in message
    assert isinstance(err, ValueError)


def test_json_array_file_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([{"prompt": "a"}, {"prompt": "b"}]))
    with pytest.raises(DatasetError, match=r"row 0 \(line 1\).*one JSON array.*JSON lines"):
        load_rows([path])
    path.write_text("[\n" + json.dumps({"prompt": "a"}) + "\n]\n")
    with pytest.raises(DatasetError, match="one JSON array"):
        load_rows([path])


def test_non_utf8_line_names_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match=r"latin\.jsonl, row 1 \(line 2\): the line is not valid UTF-8 .*offset 15"):
        load_rows([path])


def test_parquet_wrong_types_and_nulls_name_the_row(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"prompt": [1, 2]}), path)
    with pytest.raises(DatasetError, match=re.escape(f"{path}, row 0, field 'prompt': expected a non-empty string")):
        load_rows([path])

    pq.write_table(pa.table({"prompt": ["a", "b", None]}), path)
    with pytest.raises(DatasetError, match=re.escape(f"{path}, row 2, field 'prompt': is missing")):
        load_rows([path])

    pq.write_table(pa.table({"question": ["a"]}), path)
    with pytest.raises(DatasetError, match=re.escape(f"{path}, row 0, field 'prompt': is missing")):
        load_rows([path])

    pq.write_table(pa.table({"prompt": ["a", "b"], "ground_truth": [1.5, 2.0]}), path)
    with pytest.raises(DatasetError, match=re.escape(f"{path}, row 0, field 'ground_truth': got float 1.5")):
        load_rows([path])


def test_row_in_second_file_is_located_in_that_file(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "x"}] * 4)
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "x"}, {"prompt": 3}])
    with pytest.raises(DatasetError) as info:
        load_rows([a, b])
    assert (info.value.file, info.value.row, info.value.line) == (str(b), 1, 2)


# --------------------------------------------------------------------------------------------------------
# skip_invalid
# --------------------------------------------------------------------------------------------------------


def test_skip_invalid_counts_per_reason_and_keeps_row_ids(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b'{"prompt": "r0"}\n'
        b"{broken\n"
        b'{"prompt": "r2"}\n'
        b'{"prompt": ""}\n'
        b'{"prompt": "\xff"}\n'
        b'{"prompt": "r5", "ground_truth": 1.0}\n'
        b"{also broken\n"
        b'{"prompt": "r7"}\n'
    )
    out, report = load_rows([path], skip_invalid=True)
    assert [(r["row_id"], r["prompt"]) for r in out] == [(0, "r0"), (2, "r2"), (7, "r7")]
    assert report.skipped == {"invalid_json": 2, "empty_prompt": 1, "not_utf8": 1, "invalid_ground_truth": 1}
    assert report.num_skipped == 5 and report.num_rows == 3
    assert report.rows_per_file == {str(path): 8}
    assert len(report.error_samples) == 5 and "row 1 (line 2)" in report.error_samples[0]


def test_skip_invalid_never_skips_missing_files_or_unknown_extensions(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "x"}])
    missing = tmp_path / "nope.parquet"
    with pytest.raises(DatasetError, match=re.escape(f"{missing}: file not found")):
        load_rows([good, missing], skip_invalid=True)
    csv = tmp_path / "d.csv"
    csv.write_text("prompt\nx\n")
    with pytest.raises(DatasetError, match=re.escape(f"{csv}: unknown file extension '.csv'")):
        load_rows([good, csv], skip_invalid=True)


def test_every_row_invalid_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "all_bad.jsonl", ["{", '{"prompt": 1}'])
    with pytest.raises(
        DatasetError, match=r"every row is invalid \(2 rows skipped; invalid_json: 1, invalid_prompt: 1\)"
    ):
        load_rows([path], skip_invalid=True)


# --------------------------------------------------------------------------------------------------------
# File-level problems
# --------------------------------------------------------------------------------------------------------


def test_empty_dataset_is_an_error_but_one_empty_file_is_reported(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DatasetError, match=re.escape(f"{empty}: the dataset is empty")):
        load_rows([empty])
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "x"}])
    out, report = load_rows([empty, good])
    assert len(out) == 1 and report.empty_files == [str(empty)]

    empty_pq = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], type=pa.string())}), empty_pq)
    with pytest.raises(DatasetError, match="the dataset is empty"):
        load_rows([empty_pq])


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no data files given"):
        load_rows([])
    folder = tmp_path / "dir.jsonl"
    folder.mkdir()
    with pytest.raises(DatasetError, match=re.escape(f"{folder}: not a regular file")):
        load_rows([folder])
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet")
    with pytest.raises(DatasetError, match=re.escape(f"{garbage}: cannot read it as parquet")):
        load_rows([garbage], skip_invalid=True)


def test_normalize_row_checks_in_memory_rows() -> None:
    row = normalize_row({"prompt": "1+1=", "ground_truth": 2, "extra_info": {"a": 1}}, row_id=5)
    assert row["row_id"] == 5 and row["ground_truth"] == "2" and row["source_file"] == "<memory>"
    with pytest.raises(DatasetError, match=r"<memory>, row 3, field 'prompt': is missing"):
        normalize_row({}, row_id=3)
    with pytest.raises(DatasetError, match="keys must be strings"):
        normalize_row({"prompt": "p", "extra_info": {1: "x"}}, row_id=0)
