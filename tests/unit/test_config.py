"""The config tree: every shipped file validates; bad values are refused naming field and value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from grpo_dist.cli import main
from grpo_dist.config import PRESETS, ConfigError, apply_overrides, load_config, parse_config, segment_tokens

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_configs_dir_is_not_empty() -> None:
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    # the resolved dump reloads to the same tree (what `validate` prints is a runnable config)
    assert parse_config(yaml.safe_load(cfg.to_yaml())) == cfg


def _errors(overrides: list[str], raw: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(apply_overrides(raw or {}, overrides))
    return "\n".join(info.value.errors)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("rollout.num_generations=1", "rollout.num_generations = 1: Input should be greater than or equal to 2"),
        ("learner.lr=0", "learner.lr = 0: Input should be greater than 0"),
        ("learner.lr=-1e-5", "learner.lr = -1e-05"),
        ("rollout.temperature=0", "rollout.temperature = 0"),
        ("rollout.num_generations=four", "rollout.num_generations = 'four': Input should be a valid integer"),
        ("learner.zero_stage=4", "learner.zero_stage = 4"),
        ("learner.zero_stage=0", "learner.zero_stage = 0: Input should be 1, 2 or 3"),
        ("algo.loss_agg_mode=mean", "algo.loss_agg_mode = 'mean'"),
        ("algo.kl_estimator=k4", "'k1', 'k2' or 'k3'"),
        ("data.overlong_prompt_policy=drop", "'error', 'filter' or 'truncate'"),
        ("trainer.total_steps=true", "trainer.total_steps = True: Input should be a valid integer"),
    ],
)
def test_bad_values_name_field_and_value(override: str, expected: str) -> None:
    assert expected in _errors([override])


def test_unknown_key_is_rejected_with_suggestion() -> None:
    msg = _errors(["rollout.temprature=0.7"])
    assert "rollout.temprature: unknown key" in msg
    assert "did you mean 'temperature'" in msg


def test_unknown_section_is_rejected() -> None:
    assert "optimizer: unknown key" in _errors(["optimizer.lr=1"])


def test_any_mini_batch_splits_over_any_ranks_and_micro_batches() -> None:
    # the planner balances uneven counts (16 sequences over 3 ranks in micro-batches of 2): no divisibility rule
    ok = ["learner.num_ranks=3", "learner.micro_batch_size=2", "learner.mini_batch_size=4", "data.train_batch_size=8"]
    cfg = parse_config(apply_overrides({}, [*ok, "rollout.num_generations=4"]))
    assert cfg.learner.num_ranks == 3


def test_verl_token_budget_name_is_an_alias() -> None:
    cfg = parse_config(apply_overrides({}, ["learner.ppo_max_token_len_per_gpu=4096"]))
    assert cfg.learner.max_tokens_per_micro_batch == 4096
    both = ["learner.ppo_max_token_len_per_gpu=1", "learner.max_tokens_per_micro_batch=2"]
    assert "they are aliases" in _errors(both)
    assert "learner.max_tokens_per_micro_batch" in _errors(["learner.max_tokens_per_micro_batch=0"])


def test_mini_batch_must_divide_train_batch() -> None:
    msg = _errors(["data.train_batch_size=6", "learner.mini_batch_size=4"])
    assert "learner.mini_batch_size = 4 must divide data.train_batch_size = 6" in msg


def test_prompt_plus_response_longer_than_context() -> None:
    msg = _errors(["data.max_prompt_length=500", "data.max_response_length=100"])
    assert "500 + 100 = 600 exceeds the model's context of 512 tokens" in msg


def test_context_read_from_model_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 64}')
    msg = _errors([f"model.path={tmp_path}", "data.max_prompt_length=48", "data.max_response_length=32"])
    assert "exceeds the model's context of 64 tokens" in msg


def test_several_errors_reported_together() -> None:
    msg = _errors(["learner.lr=0", "rollout.num_generations=1", "rollout.top_p=2"])
    assert "learner.lr" in msg and "rollout.num_generations" in msg and "rollout.top_p" in msg


def test_reward_function_path_must_be_module_colon_function() -> None:
    msg = _errors(["reward.functions=[{name: mine, path: 'my_pkg.rewards.score'}]"])
    assert "reward.functions.0" in msg and "module:function" in msg


def test_duplicate_reward_names_rejected() -> None:
    msg = _errors(["reward.functions=[{name: exact_match}, {name: exact_match}]"])
    assert "duplicate names ['exact_match']" in msg


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_set_their_values(preset: str) -> None:
    cfg = parse_config({"algo": {"preset": preset}})
    for key, value in PRESETS[preset].items():
        assert getattr(cfg.algo, key) == value, key


def test_explicit_keys_override_the_preset() -> None:
    cfg = parse_config({"algo": {"preset": "dapo", "clip_ratio_high": 0.3}})
    assert cfg.algo.clip_ratio_high == 0.3
    assert cfg.algo.loss_agg_mode == "token-mean"  # the rest still comes from the preset
    cfg = load_config(None, ["algo.preset=gspo", "algo.kl_coef=0.01"])
    assert (cfg.algo.ratio_level, cfg.algo.kl_coef) == ("sequence", 0.01)


def test_scale_rewards_is_an_alias_of_norm_adv_by_std() -> None:
    assert parse_config({"algo": {"scale_rewards": False}}).algo.norm_adv_by_std is False
    assert "aliases" in _errors([], {"algo": {"scale_rewards": False, "norm_adv_by_std": True}})


def test_overrides_parse_yaml_values() -> None:
    cfg = load_config(None, ["learner.betas=[0.9, 0.95]", 'rollout.stop=["\\n"]', "model.path=null"])
    assert cfg.learner.betas == [0.9, 0.95]
    assert cfg.rollout.stop == ["\n"]


def test_override_into_list_items(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("reward:\n  functions:\n    - {name: exact_match}\n")
    assert load_config(path, ["reward.functions.0.weight=2"]).reward.functions[0].weight == 2.0
    with pytest.raises(ConfigError, match=r"index in 0\.\.0"):
        load_config(path, ["reward.functions.3.weight=2"])


def test_malformed_override_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"expected 'section\.field=value'"):
        load_config(None, ["rollout.num_generations"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping of sections") as info:
        load_config(bad)
    assert str(bad) in str(info.value)


def test_cli_validate_prints_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(CONFIGS[0]), "algo.preset=dapo", "algo.kl_coef=0.0"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["algo"]["clip_ratio_high"] == 0.28
    assert set(out) >= {"data", "rollout", "reward", "algo", "learner", "sync", "trainer", "cluster", "logging"}


def test_cli_validate_reports_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(CONFIGS[0]), "learner.lr=0"]) == 2
    err = capsys.readouterr().err
    assert "learner.lr = 0" in err and str(CONFIGS[0]) in err


def test_scientific_notation_without_dot_is_a_float(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("learner:\n  lr: 3e-6\n")
    assert load_config(path).learner.lr == 3e-6
    assert load_config(None, ["learner.lr=2e-5"]).learner.lr == 2e-5


def test_non_finite_numbers_rejected() -> None:
    assert "learner.lr = inf" in _errors(["learner.lr=.inf"])


def test_yaml_1_1_words_stay_strings() -> None:
    assert load_config(None, ["logging.progress=off"]).logging.progress == "off"
    assert load_config(None, ["data.shuffle=false"]).data.shuffle is False


def test_unknown_builtin_reward_name_rejected() -> None:
    msg = _errors(["reward.functions=[{name: exact_mtch}]"])
    assert "reward.functions.0.name = 'exact_mtch' is not a built-in" in msg


def test_rollout_correction_and_std_correction_defaults() -> None:
    cfg = parse_config({})
    rc = cfg.algo.rollout_correction
    assert (rc.mode, rc.tis_clip, rc.icepop_low, rc.icepop_high) == ("tis", 2.0, 0.5, 5.0)
    assert (rc.seq_mask_low, rc.seq_mask_high, rc.bypass) == (0.999, 1.001, False)
    assert cfg.algo.std_correction == 0
    overridden = parse_config(
        apply_overrides({}, ["algo.rollout_correction.mode=icepop", "algo.std_correction=1"])
    ).algo
    assert (overridden.rollout_correction.mode, overridden.std_correction) == ("icepop", 1)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["algo.rollout_correction.mode=trunc"], "algo.rollout_correction.mode = 'trunc'"),
        (["algo.rollout_correction.tis_clip=0"], "algo.rollout_correction.tis_clip = 0"),
        (
            ["algo.rollout_correction.icepop_low=6.0"],
            "algo.rollout_correction: icepop_low = 6.0 must be < icepop_high = 5.0",
        ),
        (
            ["algo.rollout_correction.seq_mask_high=0.99"],
            "algo.rollout_correction: seq_mask_low = 0.999 must be < seq_mask_high = 0.99",
        ),
        (["algo.std_correction=2"], "algo.std_correction = 2"),
        (["algo.std_correction=true"], "algo.std_correction = True: Input should be a valid integer"),
        (["algo.rollout_correction.mdoe=tis"], "did you mean 'mode'?"),
    ],
)
def test_correction_fields_are_validated(overrides: list[str], expected: str) -> None:
    assert expected in _errors(overrides)


def test_bypass_needs_mode_none_and_wins_over_recompute() -> None:
    msg = _errors(["algo.rollout_correction.bypass=true"])
    assert "algo.rollout_correction.bypass = true makes the engine's logprobs the PPO anchor" in msg
    assert "set algo.rollout_correction.mode = 'none' (got 'tis')" in msg
    # without recomputation the engine's logprobs are the anchor too
    msg = _errors(["learner.recompute_old_logprobs=false", "algo.rollout_correction.mode=icepop"])
    assert "learner.recompute_old_logprobs = false (like algo.rollout_correction.bypass = true)" in msg
    assert "(got 'icepop')" in msg
    # bypass with the default learner.recompute_old_logprobs = true is accepted: bypass takes precedence
    cfg = parse_config(
        apply_overrides({}, ["algo.rollout_correction.bypass=true", "algo.rollout_correction.mode=none"])
    )
    assert cfg.algo.rollout_correction.bypass and cfg.learner.recompute_old_logprobs
    parse_config(apply_overrides({}, ["learner.recompute_old_logprobs=false", "algo.rollout_correction.mode=none"]))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["rollout.partial_rollout=resume"], "nothing to continue under new weights"),
        (["rollout.partial_segment_tokens=4"], "samples are only generated in segments in a partial rollout"),
        (
            ["trainer.async_mode=one_step_off", "rollout.partial_rollout=resume", "rollout.partial_segment_tokens=32"],
            "every sample is done in one segment",  # the default max_response_length is 32
        ),
        (["sync.max_staleness=1"], "sync.max_staleness = 1 with trainer.async_mode = 'sync'"),
        (["trainer.async_mode=one_step_off", "sync.max_staleness=3"], "sync.max_staleness = 3 with"),
        (
            ["trainer.async_mode=one_step_off", "algo.rollout_correction.mode=none"],
            "algo.rollout_correction.mode must not be 'none'",
        ),
        (
            ["trainer.async_mode=async", "sync.max_staleness=3", "algo.rollout_correction.mode=none"],
            "trains on samples up to 3 weight version",
        ),
        (["trainer.async_mode=one_step_off", "trainer.save_every=1"], "no sample is more than 0 version"),
        (["trainer.async_mode=async", "sync.max_staleness=4", "trainer.save_every=3"], "lower sync.max_staleness"),
    ],
)
def test_async_settings_that_would_do_nothing_are_refused(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        parse_config(apply_overrides({}, overrides))


def test_a_partial_rollouts_segment_is_a_quarter_of_the_budget_unless_set() -> None:
    base = ["trainer.async_mode=one_step_off", "rollout.partial_rollout=resume", "data.max_response_length=64"]
    assert segment_tokens(parse_config(apply_overrides({}, base))) == 16
    assert segment_tokens(parse_config(apply_overrides({}, [*base, "rollout.partial_segment_tokens=5"]))) == 5
    assert segment_tokens(parse_config(apply_overrides({}, base[:1]))) is None  # off: whole samples


def test_the_staleness_bound_is_the_modes_own_unless_set() -> None:
    from grpo_dist.config import max_staleness

    assert max_staleness(parse_config({})) == 0
    assert max_staleness(parse_config(apply_overrides({}, ["trainer.async_mode=one_step_off"]))) == 1
    bypass = ["trainer.async_mode=one_step_off", "algo.rollout_correction.mode=none"]
    bypass.append("algo.rollout_correction.bypass=true")  # the engine's logprobs as the PPO anchor also correct
    assert max_staleness(parse_config(apply_overrides({}, bypass))) == 1
    assert max_staleness(parse_config(apply_overrides({}, ["trainer.async_mode=async"]))) == 1
    # async takes any bound; 0 needs no correction (every sample is from the learner's weights)
    chosen = ["trainer.async_mode=async", "sync.max_staleness=3"]
    assert max_staleness(parse_config(apply_overrides({}, chosen))) == 3
    on_policy = ["trainer.async_mode=async", "sync.max_staleness=0", "algo.rollout_correction.mode=none"]
    assert max_staleness(parse_config(apply_overrides({}, on_policy))) == 0


def test_validate_config_only_skips_the_file_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")
    missing = f"model.path={tmp_path / 'no-such-model'}"
    assert main(["validate", "--config-only", config, missing]) == 0
    assert main(["validate", config, missing]) == 2
    assert "no such directory" in capsys.readouterr().err
