"""A user's mistakes, run the way a user runs them: the ``grpo-dist`` command from their own directory,
with no variables or files that only a test knows about.

Each mistake gets one clean message (no Python traceback) naming the config field, file or row, exit code
2, from ``validate`` and from ``train`` alike; ``train`` finds it before any actor starts, within seconds.
``--traceback`` brings the traceback back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.integration.conftest import TINY_CONFIG, tiny_overrides

GRPO_DIST = str(Path(sys.executable).with_name("grpo-dist"))


def grpo_dist(*args: str, cwd: Path, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPO_DIST, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False)


def mistakes(assets: dict[str, str], tmp_path: Path) -> list[str]:
    """Three mistakes at once: a model directory, a data file and a reward module that do not exist."""
    return [
        *tiny_overrides(assets, tmp_path / "run"),
        f"model.path={tmp_path / 'no-such-model'}",
        f"data.train_files=[{tmp_path / 'no-such-train.parquet'}]",
        "reward.functions=[{name: mine, path: 'no_such_reward_module_zz:score'}]",
    ]


def assert_one_clean_message(proc: subprocess.CompletedProcess[str], tmp_path: Path) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    err = proc.stderr
    assert f"model.path = '{tmp_path / 'no-such-model'}': no such directory" in err
    assert f"data.train_files: {tmp_path / 'no-such-train.parquet'}: file not found" in err
    assert (
        "reward.functions[0].path = 'no_such_reward_module_zz:score': module 'no_such_reward_module_zz' not found"
        in err
    )


def test_validate_reports_every_mistake_at_once(tiny_assets: dict[str, str], tmp_path: Path) -> None:
    proc = grpo_dist("validate", str(TINY_CONFIG), *mistakes(tiny_assets, tmp_path), cwd=tmp_path)
    assert_one_clean_message(proc, tmp_path)
    assert proc.stdout == ""  # no resolved config printed for a config that cannot run


def test_train_stops_on_the_same_mistakes_before_any_actor(tiny_assets: dict[str, str], tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc = grpo_dist("train", str(TINY_CONFIG), *mistakes(tiny_assets, tmp_path), cwd=tmp_path)
    assert time.monotonic() - t0 < 60  # the checks run before Ray starts: no actor start-up to wait out
    assert_one_clean_message(proc, tmp_path)
    assert "ray" not in proc.stderr.lower()  # Ray never started (it logs its start-up)


def test_traceback_flag_shows_where(tiny_assets: dict[str, str], tmp_path: Path) -> None:
    proc = grpo_dist("--traceback", "validate", str(TINY_CONFIG), *mistakes(tiny_assets, tmp_path), cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ConfigError" in proc.stderr


def test_overlong_prompt_is_found_with_the_models_tokenizer(tiny_assets: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "long.parquet"
    prompts = ["1+2=", "3+4=", "5+6=" * 40]  # the third is far over 16 tokens
    pq.write_table(pa.table({"prompt": prompts, "ground_truth": ["3", "7", "11"]}), data)
    overrides = [*tiny_overrides(tiny_assets, tmp_path / "run", train_file=data), "data.max_prompt_length=16"]
    proc = grpo_dist("validate", str(TINY_CONFIG), *overrides, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "data.train_files:" in proc.stderr and str(data) in proc.stderr and "row 2" in proc.stderr
    assert "max_prompt_length" in proc.stderr


def test_a_multi_turn_dataset_mixing_chat_and_plain_prompts_and_an_old_environment_are_refused(
    tiny_assets: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "mixed.jsonl"
    rows = [{"prompt": "1+2=", "ground_truth": "3"}, {"prompt": [{"role": "user", "content": "3+4="}]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "my_env_zz.py").write_text(  # the user's environment, written for reset(prompt) without a seed
        "from grpo_dist.envs import Environment, EnvReply\n"
        "class Mine(Environment):\n"
        "    def reset(self, prompt):\n        pass\n"
        "    def step(self, turn):\n        return EnvReply(done=True)\n"
    )
    overrides = [
        *tiny_overrides(tiny_assets, tmp_path / "run", train_file=data),
        "rollout.multi_turn.env=my_env_zz:Mine",
    ]
    proc = grpo_dist("validate", str(TINY_CONFIG), *overrides, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "data.train_files: rollout.multi_turn needs one kind of prompt" in proc.stderr
    assert "row 1 is chat messages and row 0 plain text" in proc.stderr
    assert "'my_env_zz:Mine': its reset must take (self, prompt, seed)" in proc.stderr  # both, at once


def test_a_good_config_validates_with_the_users_own_reward_module(tiny_assets: dict[str, str], tmp_path: Path) -> None:
    """The user's reward module in the directory they run from is found, as the workers will find it."""
    (tmp_path / "my_rewards_zz.py").write_text(
        "def score(data_source, solution_str, ground_truth, extra_info):\n"
        "    return float(solution_str == ground_truth)\n"
    )
    overrides = [
        *tiny_overrides(tiny_assets, tmp_path / "run"),
        "reward.functions=[{name: mine, path: 'my_rewards_zz:score'}]",
    ]
    proc = grpo_dist("validate", str(TINY_CONFIG), *overrides, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "config ok: model" in proc.stderr and "64 training prompts" in proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert resolved["reward"]["functions"][0]["path"] == "my_rewards_zz:score"


@pytest.mark.parametrize("key", ["rollout.num_generaions=4", "algo.preset=ppo"])
def test_a_config_mistake_is_one_line_without_traceback(key: str, tmp_path: Path) -> None:
    proc = grpo_dist("train", str(TINY_CONFIG), key, cwd=tmp_path, timeout_s=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert key.partition("=")[0] in proc.stderr
