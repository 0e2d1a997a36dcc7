"""``ConfigError`` and the wording of validation errors: each names the dotted field, the value and what
is allowed, with a "did you mean" for a mistyped key."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A configuration that cannot run; ``errors`` holds one line per problem, each naming its field."""

    def __init__(self, errors: list[str], source: str | None = None) -> None:
        self.errors = errors
        self.source = source
        head = f"invalid config{f' {source}' if source else ''}"
        super().__init__(head + ":\n" + "\n".join(f"  - {e}" for e in errors))


def validation_messages(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per problem pydantic found while validating ``root``."""
    return [line for err in exc.errors() for line in _format_error(err, root)]


def _format_error(err: Any, root: type[BaseModel]) -> list[str]:
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return [f"{loc}: unknown key{_suggest(err['loc'], root)}"]
    if err["type"] == "value_error" and not err["loc"]:
        return msg.splitlines()  # cross-section checks name their own fields
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) or value is None else f" = {value!r}"
    prefix = f"{loc}{shown}" if loc else "config"
    return [f"{prefix}: {msg}"]


def _section_for(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The model class that holds the last key of ``loc`` (list indices skipped)."""
    model = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        inner = getattr(ann, "__args__", (ann,))
        nested = [t for t in inner if isinstance(t, type) and issubclass(t, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def _suggest(loc: tuple[Any, ...], root: type[BaseModel]) -> str:
    section = _section_for(loc, root)
    if section is None:
        return ""
    allowed = list(section.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (allowed: {', '.join(allowed)})"
