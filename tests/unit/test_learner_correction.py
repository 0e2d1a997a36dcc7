"""How the learner picks each micro-batch's PPO anchor and rollout correction from the config, and how the
controller skips the old-logprob pass under bypass and threads std_correction (no Ray, no DeepSpeed)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from grpo_dist.algo.rollout_correction import FRAC_CLIPPED, IS_RATIO_MAX, LOGP_DIFF_MAX, LOGP_DIFF_MEAN
from grpo_dist.config import Config, apply_overrides, parse_config
from grpo_dist.learner.anchor import anchor_and_correction
from grpo_dist.learner.batch import TrainBatch
from grpo_dist.learner.work import MicroBatching, split_step
from grpo_dist.learner.worker import LearnerWorker
from grpo_dist.scored_batch import ScoredBatch, score_batch
from grpo_dist.train_batch import prepare_train_batch
from grpo_dist.types import Completion, Prompt, RolloutGroup, ScoredGroup
from tests.unit.fake_engine import FakeEngine

LN = math.log


def _cfg(*overrides: str) -> Config:
    return parse_config(apply_overrides({}, list(overrides)))


def _worker(*overrides: str) -> LearnerWorker:
    return LearnerWorker(cfg=_cfg(*overrides), rank=0, world_size=1, model_path="unused", device="cpu")


def _micro(*, with_old: bool) -> tuple[TrainBatch, torch.Tensor]:
    """A micro-batch of two rows whose (old or current) / engine token ratios are known, and current logprobs."""
    engine = torch.zeros(2, 3)
    ratios = torch.tensor([[3.0, 1.0, 0.4], [1.5, 1.5, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    current = torch.log(torch.tensor([[1.1, 1.0, 1.0], [1.0, 1.0, 1.0]]))  # the learner now (requires grad)
    batch = TrainBatch(
        input_ids=torch.zeros(2, 4, dtype=torch.long),
        attention_mask=torch.ones(2, 4, dtype=torch.long),
        loss_mask=mask,
        advantages=torch.ones(2),
        engine_logprobs=engine,
        old_logprobs=torch.log(ratios) if with_old else None,
    )
    return batch, current.requires_grad_(True)


def test_recomputed_old_logprobs_are_the_anchor_and_the_corrected_side() -> None:
    micro, lp = _micro(with_old=True)
    old, weights, stats = anchor_and_correction(lp, micro, _cfg(), reuse_current=False)  # default mode tis, clip 2
    torch.testing.assert_close(old, micro.old_logprobs)
    assert weights is not None and not weights.requires_grad
    torch.testing.assert_close(weights, torch.tensor([[2.0, 1.0, 0.4], [1.5, 1.5, 0.0]]))
    assert stats is not None
    m = stats.metrics()
    assert m[LOGP_DIFF_MAX] == pytest.approx(LN(3.0), rel=1e-6)
    assert m[IS_RATIO_MAX] == pytest.approx(3.0, rel=1e-6)
    assert m[FRAC_CLIPPED] == pytest.approx(1 / 5)
    assert anchor_and_correction(lp, micro, _cfg(), reuse_current=False, measure=False)[2] is None


def test_reused_current_logprobs_are_the_anchor_when_the_policy_has_not_moved() -> None:
    micro, lp = _micro(with_old=False)
    old, weights, stats = anchor_and_correction(lp, micro, _cfg(), reuse_current=True)
    assert torch.equal(old, lp.detach()) and not old.requires_grad
    assert weights is not None
    torch.testing.assert_close(weights, torch.tensor([[1.1, 1.0, 1.0], [1.0, 1.0, 0.0]]))
    assert stats is not None and stats.metrics()[LOGP_DIFF_MAX] == pytest.approx(LN(1.1))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["algo.rollout_correction.tis_clip=1.2"], [[1.2, 1.0, 0.4], [1.2, 1.2, 0.0]]),
        (["algo.rollout_correction.mode=icepop"], [[3.0, 1.0, 0.0], [1.5, 1.5, 0.0]]),
        (
            ["algo.rollout_correction.mode=icepop", "algo.rollout_correction.icepop_low=0.3"],
            [[3.0, 1.0, 0.4], [1.5, 1.5, 0.0]],
        ),
        (
            ["algo.rollout_correction.mode=icepop", "algo.rollout_correction.icepop_high=2.0"],
            [[0.0, 1.0, 0.0], [1.5, 1.5, 0.0]],
        ),
        # geometric means: row 0 (3 * 1 * 0.4)^(1/3) = 1.06, row 1 1.5: both outside [0.999, 1.001]
        (["algo.rollout_correction.mode=seq_mask_tis"], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        (
            ["algo.rollout_correction.mode=seq_mask_tis", "algo.rollout_correction.seq_mask_high=1.2"],
            [[2.0, 1.0, 0.4], [0.0, 0.0, 0.0]],
        ),
        (
            [
                "algo.rollout_correction.mode=seq_mask_tis",
                "algo.rollout_correction.seq_mask_low=1.1",
                "algo.rollout_correction.seq_mask_high=2.0",
            ],
            [[0.0, 0.0, 0.0], [1.5, 1.5, 0.0]],
        ),
    ],
)
def test_every_correction_field_changes_the_weights(overrides: list[str], expected: list[list[float]]) -> None:
    micro, lp = _micro(with_old=True)
    _, weights, _ = anchor_and_correction(lp, micro, _cfg(*overrides), reuse_current=False)
    assert weights is not None
    torch.testing.assert_close(weights, torch.tensor(expected))


def test_mode_none_passes_no_weights_but_still_measures() -> None:
    micro, lp = _micro(with_old=True)
    _, weights, stats = anchor_and_correction(lp, micro, _cfg("algo.rollout_correction.mode=none"), reuse_current=False)
    assert weights is None
    assert stats is not None and stats.metrics()[FRAC_CLIPPED] == 0.0
    assert stats.metrics()[IS_RATIO_MAX] == pytest.approx(3.0, rel=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [
        ["algo.rollout_correction.bypass=true", "algo.rollout_correction.mode=none"],
        ["learner.recompute_old_logprobs=false", "algo.rollout_correction.mode=none"],
    ],
)
def test_engine_anchor_measures_the_current_policy(overrides: list[str]) -> None:
    micro, lp = _micro(with_old=True)  # bypass ignores recomputed old logprobs even when present
    bypass = "algo.rollout_correction.bypass=true" in overrides
    if not bypass:
        micro = replace(micro, old_logprobs=None)
    old, weights, stats = anchor_and_correction(lp, micro, _cfg(*overrides), reuse_current=False)
    torch.testing.assert_close(old, micro.engine_logprobs)
    assert weights is None
    assert stats is not None
    m = stats.metrics()
    assert m[LOGP_DIFF_MAX] == pytest.approx(LN(1.1))  # current vs engine, not the recomputed old
    assert m[LOGP_DIFF_MEAN] == pytest.approx(LN(1.1) / 5)


# ------------------------------------------------------------------------------------------- controller


class _FakeLearners:
    def __init__(self) -> None:
        self.calls: list[bool] = []

    def compute_logprobs(self, batch: TrainBatch, *, reference: bool = False) -> torch.Tensor:
        self.calls.append(reference)
        return torch.zeros_like(batch.engine_logprobs)


def _groups(rewards: list[list[float]]) -> list[ScoredGroup]:
    out = []
    for p, rs in enumerate(rewards):
        prompt = Prompt(prompt_id=p, token_ids=[1, 2], text="p")
        comps = [Completion([3, 4], [-0.5, -0.25], "stop", "x") for _ in rs]
        out.append(ScoredGroup(RolloutGroup(prompt, comps, 0, 0), rs, {"em": rs}, [True] * len(rs)))
    return out


def test_bypass_skips_the_old_logprob_pass() -> None:
    several_steps = ["learner.ppo_epochs=2", "algo.kl_coef=0"]
    scored = ScoredBatch(_groups([[1.0, 0.0, 0.0, 1.0]] * 8), torch.zeros(8, 4), {})
    learners = _FakeLearners()
    batch = prepare_train_batch(scored, _cfg(*several_steps), learners, pad_token_id=0)
    assert learners.calls == [False] and batch.old_logprobs is not None  # recomputed
    learners = _FakeLearners()
    bypass = _cfg(*several_steps, "algo.rollout_correction.bypass=true", "algo.rollout_correction.mode=none")
    batch = prepare_train_batch(scored, bypass, learners, pad_token_id=0)
    assert learners.calls == [] and batch.old_logprobs is None


def test_std_correction_reaches_the_advantages() -> None:
    groups = _groups([[1.0, 0.0, 0.0, 0.0]] * 2)
    ddof0 = score_batch(groups, _cfg().algo).advantages
    ddof1 = score_batch(groups, _cfg("algo.std_correction=1").algo).advantages
    torch.testing.assert_close(ddof1, ddof0 * math.sqrt(3 / 4), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ train() with a fake engine


def _train(
    monkeypatch: pytest.MonkeyPatch,
    *overrides: str,
    engine_shift: dict[tuple[int, int], float] | None = None,
    row_versions: list[int] | None = None,
    step: int = 1,
):
    """``row_versions``: each row's tokens sampled with that weights version (None: a batch without versions);
    the worker holds ``step - 1``."""
    import deepspeed.comm

    monkeypatch.setattr(deepspeed.comm, "all_reduce", lambda tensor, *args, **kwargs: tensor)  # one rank
    worker = _worker(
        "learner.num_ranks=1",
        "learner.micro_batch_size=2",
        "learner.mini_batch_size=2",
        "data.train_batch_size=2",
        "rollout.num_generations=2",
        "algo.kl_coef=0",
        *overrides,
    )
    worker.engine = FakeEngine()
    ids = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 5, 6, 0], [2, 3, 4, 4, 4], [2, 3, 1, 0, 0]])
    attention = (torch.arange(5) < torch.tensor([[5], [4], [5], [3]])).long()
    mask = torch.zeros(4, 4)
    for i, n in enumerate([5, 4, 5, 3]):
        mask[i, 1 : n - 1] = 1.0  # prompt of 2 tokens, the rest is the response
    versions = None if row_versions is None else torch.tensor(row_versions)[:, None].expand(4, 4).clone()
    batch = TrainBatch(ids, attention, mask, torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.zeros(4, 4), versions=versions)
    worker.version = step - 1
    with torch.no_grad():
        lp, _ = worker._forward_logprobs(worker.engine.module, batch)
    engine_lp = (lp * mask).clone()
    for (i, t), shift in (engine_shift or {}).items():
        engine_lp[i, t] -= shift
    (work,) = split_step(
        replace(batch, engine_logprobs=engine_lp),
        num_ranks=1,
        num_minibatches=1,
        cut=MicroBatching(max_tokens=None, max_sequences=2, padded=False),
        loss_agg_mode=worker.cfg.algo.loss_agg_mode,
    )
    assert [sorted(work.rows[i] for i in m) for m in work.micro_batches[0]] == [[0, 2], [1, 3]]  # longest first
    out = worker.train(work, step=step)
    grads = torch.cat([p.grad.flatten() for p in worker.engine.module.parameters()])
    return out, grads


def test_train_reports_rollout_corr_metrics_and_engine_equal_to_learner_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out, base = _train(monkeypatch, "algo.rollout_correction.mode=none")
    assert out[LOGP_DIFF_MAX] < 1e-6 and out[FRAC_CLIPPED] == 0.0
    for mode in ("tis", "icepop", "seq_mask_tis"):
        out, grads = _train(monkeypatch, f"algo.rollout_correction.mode={mode}")
        assert out[FRAC_CLIPPED] == 0.0, mode
        torch.testing.assert_close(grads, base, rtol=1e-6, atol=1e-7)


def test_train_mismatch_is_a_true_max_over_micro_batches_and_the_weights_act(monkeypatch: pytest.MonkeyPatch) -> None:
    # the learner's logprob of token (3, 1) is 2.0 above the engine's (ratio e^2 > tis_clip), of (0, 1) 0.3:
    # different micro-batches (rows 0, 2 and 1, 3: longest first) with different token counts (6 and 3)
    shift = {(3, 1): 2.0, (0, 1): 0.3}
    out, grads = _train(monkeypatch, engine_shift=shift)
    assert out[LOGP_DIFF_MAX] == pytest.approx(2.0, abs=1e-5)
    assert out[LOGP_DIFF_MEAN] == pytest.approx(2.3 / 9, abs=1e-5)
    assert out[IS_RATIO_MAX] == pytest.approx(math.exp(2.0), rel=1e-5)
    assert out[FRAC_CLIPPED] == pytest.approx(1 / 9)
    _, uncorrected = _train(monkeypatch, "algo.rollout_correction.mode=none", engine_shift=shift)
    assert not torch.allclose(grads, uncorrected)


def test_the_ranks_count_off_policy_tokens_from_the_versions_against_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    # the ranks hold version 4 (step 5): rows 2 and 3 (3 + 1 of the 9 loss tokens) were sampled with version 3
    out, _ = _train(monkeypatch, row_versions=[4, 4, 3, 3], step=5)
    assert out["learner/off_policy_token_frac"] == pytest.approx(4 / 9)
    out, _ = _train(monkeypatch, row_versions=[4, 4, 4, 4], step=5)
    assert out["learner/off_policy_token_frac"] == 0.0


def test_a_rank_refuses_a_step_it_does_not_hold_the_weights_before(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = _worker()
    worker.version = 2
    with pytest.raises(RuntimeError, match="holds weights version 2, but step 5's batch was scored against version 4"):
        worker.train(None, step=5)  # type: ignore[arg-type]


def test_the_anchor_is_decided_once_from_the_config() -> None:
    from grpo_dist.learner.anchor import ppo_anchor

    assert ppo_anchor(_cfg("data.train_batch_size=4", "learner.mini_batch_size=4")) == "current"
    assert ppo_anchor(_cfg("data.train_batch_size=4", "learner.mini_batch_size=2")) == "recomputed"
    assert (
        ppo_anchor(_cfg("data.train_batch_size=4", "learner.mini_batch_size=4", "learner.ppo_epochs=2")) == "recomputed"
    )
    assert ppo_anchor(_cfg("algo.rollout_correction.bypass=true", "algo.rollout_correction.mode=none")) == "engine"
    assert ppo_anchor(_cfg("learner.recompute_old_logprobs=false", "algo.rollout_correction.mode=none")) == "engine"


def test_a_batch_without_the_old_logprobs_its_anchor_needs_gets_them_from_the_ranks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two epochs (a recomputed anchor) on a batch handed to the ranks without old logprobs, as a benchmark
    does: the ranks compute them first, so the second epoch's ratio is against the policy before the update
    (the fake engine's step here applies plain SGD), not against itself, which would make every ratio 1."""

    def sgd_step(self: FakeEngine) -> None:
        with torch.no_grad():
            for param in self.module.parameters():
                if param.grad is not None:
                    param -= 1.0 * param.grad
                    param.grad.zero_()

    monkeypatch.setattr(FakeEngine, "step", sgd_step)
    tight = ("learner.ppo_epochs=2", "algo.clip_ratio_high=1e-4", "algo.clip_ratio_low=1e-4")
    out, _ = _train(monkeypatch, *tight)
    assert out["learner/clip_fraction"] > 0.0  # the second epoch's moved policy is clipped against the anchor
    out, _ = _train(monkeypatch, *tight[1:])  # one epoch, one optimizer step: nothing has moved when it is computed
    assert out["learner/clip_fraction"] == 0.0
