"""Reading a config: YAML 1.2 scalars, dotted overrides, validation into a ``Config``.

``load_config(path, overrides)`` reads YAML, applies dotted overrides (``rollout.num_generations=8``;
values parsed as YAML, list items addressed by index as in ``reward.functions.0.weight=2``), then
validates. ``algo.preset`` fills the algorithm's defaults from a named recipe; keys written explicitly in
the file or on the command line win.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import ValidationError

from grpo_dist.config.errors import ConfigError, validation_messages
from grpo_dist.config.root import Config


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.2 scalars: ``1e-5`` (no dot) is a float, not a string (learning rates are written that way),
    and only true/false are booleans (YAML 1.1 also turns ``off``, ``no``, ``on``, ``yes`` into booleans,
    which would make ``logging.progress=off`` a boolean)."""

    yaml_implicit_resolvers: ClassVar[dict[str, list[tuple[str, re.Pattern[str]]]]] = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader subclass: safe


def _parse_value(text: str) -> Any:
    """Override values are YAML scalars/lists: ``8`` -> int, ``true`` -> bool, ``[1, 2]`` -> list."""
    try:
        return read_yaml(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``dotted.key=value`` applied.

    Unknown keys are not rejected here: validation does that, naming the full dotted field.
    """
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError([f"override {item!r}: expected 'section.field=value'"])
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError([f"override {item!r}: empty component in key {key!r}"])
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            here = ".".join(parts[: i + 1])
            if isinstance(node, list):
                node = _list_item(node, part, here, item)
                continue
            nxt = node.get(part)
            if nxt is None:
                if parts[i + 1].isdigit():
                    raise ConfigError(
                        [
                            f"override {item!r}: {here} is not set in the config file; set the whole list "
                            f"({here}=[...]) instead of one item"
                        ]
                    )
                nxt = node[part] = {}
            if not isinstance(nxt, (dict, list)):
                raise ConfigError([f"override {item!r}: {here} is a value, not a section"])
            node = nxt
        last = parts[-1]
        value = _parse_value(text)
        if isinstance(node, list):
            idx = _list_index(node, last, key, item)
            node[idx] = value
        else:
            node[last] = value
    return out


def _list_index(node: list[Any], part: str, here: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError([f"override {item!r}: {here} needs an index in 0..{len(node) - 1}"])
    return int(part)


def _list_item(node: list[Any], part: str, here: str, item: str) -> Any:
    return node[_list_index(node, part, here, item)]


def parse_config(raw: dict[str, Any] | None, source: str | None = None) -> Config:
    """Validate a raw mapping into a ``Config`` or raise ``ConfigError`` listing every problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"the top level must be a mapping of sections, got {type(raw).__name__}"], source)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_messages(exc, Config), source) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (None: all defaults), apply dotted overrides, validate."""
    raw: Any = {}
    source = None
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError([f"config file not found: {p}"], source)
        try:
            raw = read_yaml(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError([f"not valid YAML: {exc}"], source) from None
        if not isinstance(raw, dict):
            raise ConfigError([f"the top level must be a mapping of sections, got {type(raw).__name__}"], source)
    raw = apply_overrides(raw, overrides or [])
    return parse_config(raw, source)
