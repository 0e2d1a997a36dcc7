"""Read dataset rows from parquet and JSON-lines files and check them against the row schema.

Why a strict reader of its own: a malformed row found mid-run (after Ray, vLLM and DeepSpeed have started,
maybe hours in) costs far more than one found at load time, and an error that only says "KeyError:
'prompt'" leaves the user searching a million-row file. So every row is checked here, before anything
starts, and every error names the file, the 0-based row (plus the 1-based line for JSON lines) and the
field.

Row schema (one dict per row):

``prompt`` (required)
    A non-empty string, or a non-empty list of chat messages, each a mapping with a string ``role`` (one
    of ``system``, ``user``, ``assistant``, ``tool``) and a string ``content``. Other keys of a message
    are kept when they are not null (parquet fills absent struct fields with null; passing ``name: None``
    to a chat template would render "None").
``ground_truth`` (optional)
    A string or null. An integer is accepted and turned into its decimal string, because integers have
    one exact spelling and datasets of counts or answers to arithmetic often store them as numbers. A
    float or a boolean is refused: ``0.1`` / ``1e-7`` / ``True`` have several spellings and the
    conversion would silently change what a reward function compares against, so the user is asked to
    quote the value.
``data_source`` (optional)
    A string or null; reward functions use it to pick their scoring rule.
``extra_info`` (optional)
    An object: a JSON object, a parquet struct or map, or a string holding a JSON object (some dataset
    tools serialise it that way). Null and the empty string mean ``{}``.

Other columns are ignored (not copied into ``extra_info``, which would change what reward functions see
depending on how a file was produced) and listed in ``LoadReport.ignored_columns`` so that a misspelt
column (``promt``) is visible.

Row ids: each row read gets ``row_id`` = its index across all files read in the order given, counting
every row of every file, including rows skipped as invalid. Counting skipped rows keeps an id tied to one
line of one file whether or not ``skip_invalid`` dropped its neighbours, so ids in logs, rollouts and
checkpoints always point back to the same source row. The id becomes ``Prompt.prompt_id``.

Files: ``.parquet`` is read with pyarrow. ``.jsonl`` and ``.json`` are read as JSON lines (one object per
line; blank lines are ignored and are not rows) with the standard ``json`` module, line by line, so that a
bad line is reported with its line number, which a bulk reader cannot do.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "CHAT_ROLES",
    "JSONL_SUFFIXES",
    "PARQUET_SUFFIXES",
    "ROW_FIELDS",
    "DatasetError",
    "LoadReport",
    "Row",
    "load_rows",
    "normalize_row",
]

ROW_FIELDS = ("prompt", "ground_truth", "data_source", "extra_info")
CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})
PARQUET_SUFFIXES = frozenset({".parquet"})
JSONL_SUFFIXES = frozenset({".jsonl", ".json"})
_MAX_ERROR_SAMPLES = 20
_UTF8_BOM = b"\xef\xbb\xbf"


class DatasetError(ValueError):
    """A dataset the trainer cannot use, with where the problem is.

    ``file``, ``row`` (0-based within the file), ``line`` (1-based, JSON lines only), ``row_id`` (global
    id, once assigned) and ``field`` locate it; ``reason`` is a short stable key (``invalid_json``,
    ``missing_prompt``...) under which ``skip_invalid`` counts skipped rows.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        line: int | None = None,
        row_id: int | None = None,
        field: str | None = None,
        reason: str = "invalid",
    ) -> None:
        self.detail = message
        self.file = file
        self.row = row
        self.line = line
        self.row_id = row_id
        self.field = field
        self.reason = reason
        super().__init__(_locate(file, row, line, row_id, field) + message)


def _locate(file: str | None, row: int | None, line: int | None, row_id: int | None, field: str | None) -> str:
    where: list[str] = []
    if file is not None:
        where.append(file)
    if row is not None:
        where.append(f"row {row}" + (f" (line {line})" if line is not None else ""))
    elif line is not None:
        where.append(f"line {line}")
    if row_id is not None:
        where.append(f"row_id {row_id}")
    if field is not None:
        where.append(f"field {field!r}")
    return ", ".join(where) + ": " if where else ""


class Row(TypedDict):
    """One checked row. ``source_*`` say where it came from, for error messages further down the line."""

    row_id: int
    prompt: str | list[dict[str, Any]]
    ground_truth: str | None
    data_source: str | None
    extra_info: dict[str, Any]
    source_file: str
    source_row: int
    source_line: int | None


@dataclass
class LoadReport:
    """What ``load_rows`` read, skipped and ignored; the trainer logs it so nothing is dropped silently."""

    files: list[str] = field(default_factory=list)
    rows_per_file: dict[str, int] = field(default_factory=dict)
    """Rows read from each file, valid or not."""
    num_rows: int = 0
    """Rows returned."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Rows skipped (``skip_invalid``) per reason."""
    error_samples: list[str] = field(default_factory=list)
    """The first few messages of skipped rows, to show the user what was wrong."""
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)
    """Per file, columns / keys outside the row schema that were not read."""
    empty_files: list[str] = field(default_factory=list)
    """Files with no rows (allowed as long as the dataset as a whole is not empty)."""

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())


# --------------------------------------------------------------------------------------------------------
# Field checks (shared by both formats)
# --------------------------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _check_prompt(value: Any, err: _ErrorFactory) -> str | list[dict[str, Any]]:
    if value is None:
        raise err("missing_prompt", "prompt", "is missing (every row needs a prompt)")
    if isinstance(value, str):
        if not value.strip():
            raise err("empty_prompt", "prompt", "is empty")
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            raise err("empty_prompt", "prompt", "is an empty list of messages")
        return [_check_message(i, m, err) for i, m in enumerate(value)]
    raise err(
        "invalid_prompt",
        "prompt",
        f"expected a non-empty string or a list of chat messages {{role, content}}, got {_describe(value)}",
    )


def _check_message(index: int, message: Any, err: _ErrorFactory) -> dict[str, Any]:
    where = f"prompt[{index}]"
    if not isinstance(message, Mapping):
        raise err(
            "invalid_prompt", where, f"a chat message must be an object {{role, content}}, got {_describe(message)}"
        )
    role = message.get("role")
    if not isinstance(role, str) or role not in CHAT_ROLES:
        shown = "missing" if role is None else _describe(role)
        raise err("invalid_prompt", f"{where}.role", f"expected one of {sorted(CHAT_ROLES)}, got {shown}")
    content = message.get("content")
    if not isinstance(content, str):
        shown = "missing" if content is None else _describe(content)
        raise err("invalid_prompt", f"{where}.content", f"expected a string, got {shown}")
    return {str(k): v for k, v in message.items() if v is not None}


def _check_ground_truth(value: Any, err: _ErrorFactory) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # one exact spelling; documented in the module docstring
    if isinstance(value, (float, bool)):
        raise err(
            "invalid_ground_truth",
            "ground_truth",
            f"got {_describe(value)}; write it as a string (e.g. {json.dumps(str(value))}) so that the exact "
            "text compared by reward functions is the one you meant",
        )
    raise err("invalid_ground_truth", "ground_truth", f"expected a string or null, got {_describe(value)}")


def _check_data_source(value: Any, err: _ErrorFactory) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise err("invalid_data_source", "data_source", f"expected a string or null, got {_describe(value)}")


def _check_extra_info(value: Any, err: _ErrorFactory) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise err(
                "invalid_extra_info", "extra_info", f"a string extra_info must hold a JSON object: {exc.msg}"
            ) from None
        if not isinstance(value, dict):
            raise err(
                "invalid_extra_info", "extra_info", f"the JSON string decodes to {_describe(value)}, not an object"
            )
    if not isinstance(value, Mapping):
        raise err("invalid_extra_info", "extra_info", f"expected an object, got {_describe(value)}")
    bad_keys = [k for k in value if not isinstance(k, str)]
    if bad_keys:
        raise err("invalid_extra_info", "extra_info", f"keys must be strings, got {_describe(bad_keys[0])}")
    return dict(value)


class _ErrorFactory:
    """Builds ``DatasetError``s located at one row, so the field checks only say what is wrong."""

    __slots__ = ("file", "line", "row")

    def __init__(self, file: str, row: int, line: int | None) -> None:
        self.file, self.row, self.line = file, row, line

    def __call__(self, reason: str, field: str | None, message: str) -> DatasetError:
        return DatasetError(message, file=self.file, row=self.row, line=self.line, field=field, reason=reason)


def normalize_row(
    raw: Mapping[str, Any], *, row_id: int, file: str = "<memory>", row: int | None = None, line: int | None = None
) -> Row:
    """Check one raw row against the schema and return it in canonical form (raises ``DatasetError``).

    Public so that rows generated in memory (the embedded task) pass the same checks as file rows.
    """
    err = _ErrorFactory(file, row_id if row is None else row, line)
    return Row(
        row_id=row_id,
        prompt=_check_prompt(raw.get("prompt"), err),
        ground_truth=_check_ground_truth(raw.get("ground_truth"), err),
        data_source=_check_data_source(raw.get("data_source"), err),
        extra_info=_check_extra_info(raw.get("extra_info"), err),
        source_file=file,
        source_row=err.row,
        source_line=line,
    )


# --------------------------------------------------------------------------------------------------------
# File readers: each yields (row index in file, line or None, raw row or the DatasetError found reading it)
# --------------------------------------------------------------------------------------------------------

_RawItem = tuple[int, int | None, Mapping[str, Any] | DatasetError]


def _iter_jsonl(path: Path, name: str, ignored: set[str]) -> Iterator[_RawItem]:
    row = 0
    with path.open("rb") as fh:
        for line_no, line in enumerate(fh, start=1):
            if line_no == 1 and line.startswith(_UTF8_BOM):
                line = line[len(_UTF8_BOM) :]
            if not line.strip():
                continue
            err = _ErrorFactory(name, row, line_no)
            yield row, line_no, _parse_json_line(line, err, ignored, is_json_suffix=path.suffix.lower() == ".json")
            row += 1


def _parse_json_line(
    line: bytes, err: _ErrorFactory, ignored: set[str], *, is_json_suffix: bool
) -> Mapping[str, Any] | DatasetError:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return err("not_utf8", None, f"the line is not valid UTF-8 (bad byte at offset {exc.start} of the line)")
    array_hint = (
        "; the file seems to hold one JSON array, but .json files are read as JSON lines (one object per line)"
        if is_json_suffix and text.lstrip().startswith("[")
        else ""
    )
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return err("invalid_json", None, f"invalid JSON: {exc.msg} at column {exc.colno}{array_hint}")
    if not isinstance(obj, dict):
        return err("not_an_object", None, f"expected a JSON object per line, got {_describe(obj)}{array_hint}")
    ignored.update(k for k in obj if k not in ROW_FIELDS)
    return obj


def _iter_parquet(path: Path, name: str, ignored: set[str]) -> Iterator[_RawItem]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        # Only the schema's columns are read: datasets often carry large unrelated ones (images, traces).
        present = [c for c in ROW_FIELDS if c in names]
        table = pq.read_table(path, columns=present)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"cannot read it as parquet: {exc}", file=name, reason="unreadable_file") from None
    ignored.update(c for c in names if c not in ROW_FIELDS)
    columns = {c: _column_to_py(table.column(c)) for c in present}
    for row in range(table.num_rows):
        yield row, None, {c: values[row] for c, values in columns.items()}


def _column_to_py(column: pa.ChunkedArray) -> list[Any]:
    """Python values of a column, with parquet maps as dicts.

    ``to_pylist`` turns maps into lists of (key, value) pairs in pyarrow < 20 (and by default after), which
    would then fail the ``extra_info`` object check; converting with the column's type in hand works on
    every supported pyarrow.
    """
    values = column.to_pylist()
    if not _has_map(column.type):
        return values
    return [_maps_to_dicts(v, column.type) for v in values]


def _has_map(t: pa.DataType) -> bool:
    import pyarrow as pa

    if pa.types.is_map(t):
        return True
    if pa.types.is_struct(t):
        return any(_has_map(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _has_map(t.value_type)
    return False


def _maps_to_dicts(value: Any, t: pa.DataType) -> Any:
    import pyarrow as pa

    if value is None or not _has_map(t):
        return value
    if pa.types.is_map(t):
        return {_maps_to_dicts(k, t.key_type): _maps_to_dicts(v, t.item_type) for k, v in value}
    if pa.types.is_struct(t):
        types = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
        return {k: _maps_to_dicts(v, types[k]) for k, v in value.items()}
    return [_maps_to_dicts(v, t.value_type) for v in value]


# --------------------------------------------------------------------------------------------------------
# load_rows
# --------------------------------------------------------------------------------------------------------


def _as_path_list(paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> list[Path]:
    # A bare string is one path; iterating it would read each character as a file name.
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _check_file(path: Path) -> None:
    name = str(path)
    suffix = path.suffix.lower()
    if suffix not in PARQUET_SUFFIXES | JSONL_SUFFIXES:
        allowed = ", ".join(sorted(PARQUET_SUFFIXES | JSONL_SUFFIXES))
        raise DatasetError(f"unknown file extension {path.suffix!r} (expected {allowed})", file=name, reason="file")
    if not path.exists():
        raise DatasetError("file not found", file=name, reason="file")
    if not path.is_file():
        raise DatasetError("not a regular file", file=name, reason="file")


def load_rows(
    paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], *, skip_invalid: bool = False
) -> tuple[list[Row], LoadReport]:
    """Read and check every row of ``paths`` (in order); returns the rows and a report.

    A malformed row raises ``DatasetError`` naming file, row / line and field, unless ``skip_invalid``:
    then it is skipped and counted per reason in the report. Problems with a whole file (not found, not
    a regular file, unknown extension, unreadable parquet) and an empty result always raise, because
    skipping them would train on a different dataset than the one named in the config.
    """
    files = _as_path_list(paths)
    if not files:
        raise DatasetError("no data files given", reason="file")
    for path in files:  # all file-level problems before any (possibly slow) reading
        _check_file(path)

    report = LoadReport(files=[str(p) for p in files])
    skipped: Counter[str] = Counter()
    rows: list[Row] = []
    next_id = 0
    for path in files:
        name = str(path)
        ignored: set[str] = set()
        reader = _iter_parquet if path.suffix.lower() in PARQUET_SUFFIXES else _iter_jsonl
        count = 0
        for row, line, raw in reader(path, name, ignored):
            row_id = next_id
            next_id += 1
            count += 1
            if isinstance(raw, DatasetError):
                error = raw
            else:
                try:
                    rows.append(normalize_row(raw, row_id=row_id, file=name, row=row, line=line))
                    continue
                except DatasetError as exc:
                    error = exc
            if not skip_invalid:
                raise error
            skipped[error.reason] += 1
            if len(report.error_samples) < _MAX_ERROR_SAMPLES:
                report.error_samples.append(str(error))
        report.rows_per_file[name] = count
        if count == 0:
            report.empty_files.append(name)
        if ignored:
            report.ignored_columns[name] = sorted(ignored)

    report.skipped = dict(skipped)
    report.num_rows = len(rows)
    if not rows:
        names = ", ".join(report.files)
        if skipped:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
            raise DatasetError(
                f"every row is invalid ({next_id} rows skipped; {reasons}); first error: {report.error_samples[0]}",
                file=names,
                reason="empty_dataset",
            )
        raise DatasetError("the dataset is empty (no rows)", file=names, reason="empty_dataset")
    return rows, report
