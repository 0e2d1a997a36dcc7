"""Nothing in the package deserialises pickles from files or evaluates config values as code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from grpo_dist.config import ConfigError, load_config

PACKAGE = Path(__file__).parents[2] / "grpo_dist"
FORBIDDEN = {
    r"\bpickle\.loads?\(": "pickle from a file or bytes",
    r"torch\.load\((?![^)]*weights_only=True)": "torch.load without weights_only=True",
    r"(?<![\w.])eval\(": "eval",
    r"(?<![\w.])exec\(": "exec",
    r"yaml\.(unsafe_)?load\((?![^)]*Loader=_YamlLoader)": "yaml.load with a non-safe loader",
}


def test_no_unsafe_deserialisation_or_eval_in_the_package() -> None:
    found = []
    for path in PACKAGE.rglob("*.py"):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for pattern, what in FORBIDDEN.items():
                if re.search(pattern, code):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{lineno}: {what}")
    assert not found, found


def test_config_values_are_data_not_code(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  output_dir: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    cfg = load_config(None, ["trainer.output_dir=__import__('os').getcwd()"])
    assert cfg.trainer.output_dir == "__import__('os').getcwd()"  # a string, never evaluated
