"""The tool-calling recipe's setup, run the way its config's header says: ``write-data`` and
``init-model --calculator`` from the user's directory, then ``validate`` of the shipped config finds the
model, the data and the reward where the config names them. (The learning itself is measured in the
README: a 40-step run is too long for the suite.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

GRPO_DIST = str(Path(sys.executable).with_name("grpo-dist"))
RECIPE = Path(__file__).resolve().parents[2] / "configs" / "tools_calculator.yaml"


def grpo_dist(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPO_DIST, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def test_the_recipes_setup_commands_make_what_its_config_names(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    shutil.copy(RECIPE, tmp_path / "configs")
    data = grpo_dist("write-data", "multiplication", "data/multiplication", "--num-train", "64", cwd=tmp_path)
    assert data.returncode == 0, data.stderr
    build = ("init-model", "--calculator", "data/multiplication/train.parquet", "models/tiny-calculator")
    made = grpo_dist(*build, "--warm-start-steps", "4", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "models" / "tiny-calculator" / "model.safetensors").is_file()
    assert not list((tmp_path / "models").glob(".tiny-calculator-*"))  # no temporary directory left behind
    checked = grpo_dist("validate", "configs/tools_calculator.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "model models/tiny-calculator, 64 training prompts, 256 held-out prompts" in checked.stderr
    again = grpo_dist(*build, cwd=tmp_path)  # an existing model is never overwritten silently
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    missing = grpo_dist("init-model", "--calculator", "nope.parquet", "models/x", cwd=tmp_path)
    assert missing.returncode == 2 and "nope.parquet: no such file" in missing.stderr
