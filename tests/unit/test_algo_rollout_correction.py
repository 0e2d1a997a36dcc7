"""Rollout correction: hand-computed weights of every mode, the mismatch metrics and their exact merging,
and the weights inside the policy loss (a no-op where engine and learner agree, split invariant)."""

from __future__ import annotations

import math

import pytest
import torch

from grpo_dist.algo import (
    CORRECTION_MODES,
    LOSS_AGG_MODES,
    MismatchStats,
    data_parallel_denominator,
    loss_denominator,
    mismatch_stats,
    policy_loss,
    rollout_is_weights,
)
from grpo_dist.algo.rollout_correction import (
    FRAC_CLIPPED,
    IS_RATIO_MAX,
    IS_RATIO_MEAN,
    IS_RATIO_MIN,
    KL_K1,
    KL_K3,
    LOGP_DIFF_MAX,
    LOGP_DIFF_MEAN,
)

F64 = torch.float64
LN = math.log


def _lp(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def _pair(ratios: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(old, engine) log-probs whose token ratios exp(old - engine) are ``ratios`` (the values used at a
    threshold, 0.5, 2.0 and 2.5, survive exp(log(x)) exactly)."""
    old = torch.log(_lp(ratios))
    return old, torch.zeros_like(old)


def test_tis_truncates_from_above_only() -> None:
    old, engine = _pair([[3.0, 0.5, 1.0, 1.5, 2.0]])
    mask = torch.ones_like(old)
    w, affected = rollout_is_weights(old, engine, mask, mode="tis", tis_clip=2.0)
    torch.testing.assert_close(w, _lp([[2.0, 0.5, 1.0, 1.5, 2.0]]))
    assert affected.tolist() == [[True, False, False, False, False]]  # 2.0 is at the clip: not truncated
    w, _ = rollout_is_weights(old, engine, mask, mode="tis", tis_clip=1.2)
    torch.testing.assert_close(w, _lp([[1.2, 0.5, 1.0, 1.2, 1.2]]))


def test_icepop_keeps_the_ratio_inside_the_band_and_drops_the_rest() -> None:
    old, engine = _pair([[6.0, 0.4, 1.0, 0.5, 4.5, 2.5]])
    mask = torch.ones_like(old)
    w, affected = rollout_is_weights(old, engine, mask, mode="icepop")  # defaults 0.5, 5.0
    torch.testing.assert_close(w, _lp([[0.0, 0.0, 1.0, 0.5, 4.5, 2.5]]))
    assert affected.tolist() == [[True, True, False, False, False, False]]  # 0.5 is the bound: kept
    w, affected = rollout_is_weights(old, engine, mask, mode="icepop", icepop_low=0.9, icepop_high=2.5)
    torch.testing.assert_close(w, _lp([[0.0, 0.0, 1.0, 0.0, 0.0, 2.5]]))
    assert affected.tolist() == [[True, True, False, True, True, False]]


def test_seq_mask_tis_drops_sequences_by_geometric_mean_and_truncates_tokens() -> None:
    # row 0: ratios 3 and 1/3, geometric mean exactly 1 -> kept, token TIS; row 1: every token 1.01 -> dropped;
    # row 2: 1.0005 then a padding position holding garbage -> kept (padding ignored)
    old = _lp([[LN(3.0), -LN(3.0), 0.0], [LN(1.01)] * 3, [LN(1.0005), 0.0, 0.0]])
    engine = torch.zeros_like(old)
    engine[2, 1:] = float("nan")
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    w, affected = rollout_is_weights(old, engine, mask, mode="seq_mask_tis")
    torch.testing.assert_close(w, _lp([[2.0, 1 / 3, 0.0], [0.0, 0.0, 0.0], [1.0005, 0.0, 0.0]]))
    assert affected.tolist() == [[True, False, False], [True, True, True], [False, False, False]]
    # a wider band keeps row 1, whose tokens are below the clip
    w, affected = rollout_is_weights(old, engine, mask, mode="seq_mask_tis", seq_mask_low=0.9, seq_mask_high=1.1)
    torch.testing.assert_close(w[1], _lp([[1.01] * 3])[0])
    assert not affected[1].any()
    # and tis_clip acts on the kept sequences
    w, _ = rollout_is_weights(old, engine, mask, mode="seq_mask_tis", tis_clip=3.0)
    torch.testing.assert_close(w[0], _lp([[3.0, 1 / 3, 0.0]])[0])


def test_none_is_all_ones_and_nothing_affected() -> None:
    old, engine = _pair([[3.0, 0.1]])
    w, affected = rollout_is_weights(old, engine, torch.tensor([[1, 0]]), mode="none")
    torch.testing.assert_close(w, _lp([[1.0, 0.0]]))
    assert not affected.any()


@pytest.mark.parametrize("mode", CORRECTION_MODES)
def test_identical_logprobs_give_weight_exactly_one(mode: str) -> None:
    lp = -torch.rand(3, 5, dtype=torch.float32, generator=torch.Generator().manual_seed(0)) * 4
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    w, affected = rollout_is_weights(lp, lp.clone(), mask, mode=mode)
    assert torch.equal(w, mask.to(w.dtype))
    assert not affected.any()


def test_weights_are_detached_and_padding_garbage_does_not_leak() -> None:
    old = torch.tensor([[-1.0, float("inf")]], dtype=F64, requires_grad=True)
    engine = torch.tensor([[-1.5, float("nan")]], dtype=F64)
    for mode in CORRECTION_MODES:
        w, _ = rollout_is_weights(old, engine, torch.tensor([[1, 0]]), mode=mode)
        assert not w.requires_grad
        assert torch.isfinite(w).all()
        assert w[0, 1] == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "trunc"}, "mode='trunc' is not supported"),
        ({"tis_clip": 0.0}, "tis_clip=0.0 must be > 0"),
        ({"icepop_low": 5.0, "icepop_high": 0.5}, "icepop_low=5.0 must be < icepop_high=0.5"),
        ({"seq_mask_low": 1.0, "seq_mask_high": 1.0}, "seq_mask_low=1.0 must be < seq_mask_high=1.0"),
        ({"icepop_high": float("inf")}, "icepop_high=inf must be a finite number"),
    ],
)
def test_invalid_options_are_rejected(kwargs: dict[str, object], match: str) -> None:
    old, engine = _pair([[1.0]])
    with pytest.raises(ValueError, match=match):
        rollout_is_weights(old, engine, torch.ones_like(old), **kwargs)  # type: ignore[arg-type]


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="engine_logprobs has shape"):
        rollout_is_weights(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask has shape"):
        mismatch_stats(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="affected has shape"):
        mismatch_stats(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 2, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------- metrics


def test_mismatch_metrics_hand_values() -> None:
    # r = old - engine at the three masked tokens: ln 2, -ln 4, 0; the fourth position is padding
    old = _lp([[LN(2.0), -LN(4.0)], [0.0, 7.0]])
    engine = torch.zeros_like(old)
    mask = torch.tensor([[1, 1], [1, 0]])
    _, affected = rollout_is_weights(old, engine, mask, mode="icepop")  # the 1/4 token is outside [0.5, 5]
    m = mismatch_stats(old, engine, mask, affected).metrics()
    r = [LN(2.0), -LN(4.0), 0.0]
    assert m[LOGP_DIFF_MEAN] == pytest.approx(sum(abs(x) for x in r) / 3)
    assert m[LOGP_DIFF_MAX] == pytest.approx(LN(4.0))
    assert m[KL_K1] == pytest.approx(-sum(r) / 3)
    assert m[KL_K3] == pytest.approx(sum(math.exp(x) - x - 1 for x in r) / 3)
    assert m[IS_RATIO_MEAN] == pytest.approx((2.0 + 0.25 + 1.0) / 3)
    assert m[IS_RATIO_MIN] == pytest.approx(0.25)
    assert m[IS_RATIO_MAX] == pytest.approx(2.0)
    assert m[FRAC_CLIPPED] == pytest.approx(1 / 3)
    assert all(isinstance(v, float) for v in m.values())
    # without a correction nothing is counted as clipped
    assert mismatch_stats(old, engine, mask).metrics()[FRAC_CLIPPED] == 0.0


def test_k3_is_non_negative_and_k1_unbiased_sign() -> None:
    g = torch.Generator().manual_seed(1)
    old, engine = -torch.rand(4, 9, generator=g, dtype=F64) * 3, -torch.rand(4, 9, generator=g, dtype=F64) * 3
    m = mismatch_stats(old, engine, torch.ones_like(old)).metrics()
    assert m[KL_K3] >= 0.0
    assert m[KL_K1] == pytest.approx(float((engine - old).mean()))


def test_no_tokens_gives_neutral_figures() -> None:
    for old in (torch.zeros(0, 4), torch.zeros(2, 3)):
        m = mismatch_stats(old, old - 1.0, torch.zeros_like(old)).metrics()
        assert m == {
            LOGP_DIFF_MEAN: 0.0,
            LOGP_DIFF_MAX: 0.0,
            KL_K1: 0.0,
            KL_K3: 0.0,
            IS_RATIO_MEAN: 1.0,
            IS_RATIO_MIN: 1.0,
            IS_RATIO_MAX: 1.0,
            FRAC_CLIPPED: 0.0,
        }
    assert MismatchStats.empty().metrics()[IS_RATIO_MAX] == 1.0


def test_merging_splits_is_exact_sum_and_count_and_true_max() -> None:
    """Micro-batches (and ranks) of different token counts merge into the whole batch's figures: token-weighted,
    not an average of averages, and the max/min over every token."""
    g = torch.Generator().manual_seed(2)
    old, engine = -torch.rand(7, 6, generator=g, dtype=F64) * 2, -torch.rand(7, 6, generator=g, dtype=F64) * 2
    mask = torch.rand(7, 6, generator=g) < 0.6
    mask[3] = False  # an empty row
    _, affected = rollout_is_weights(old, engine, mask, mode="tis", tis_clip=1.3)
    whole = mismatch_stats(old, engine, mask, affected).metrics()
    merged = MismatchStats.empty()
    for rows in (slice(0, 1), slice(1, 4), slice(4, 7)):
        merged = merged.merged(mismatch_stats(old[rows], engine[rows], mask[rows], affected[rows]))
    got = merged.metrics()
    for key, value in whole.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    for key in (LOGP_DIFF_MAX, IS_RATIO_MIN, IS_RATIO_MAX):
        assert got[key] == whole[key]
    # an average of the three parts' means would differ: the parts hold different token counts
    parts = [mismatch_stats(old[r], engine[r], mask[r]).metrics()[LOGP_DIFF_MEAN] for r in (slice(0, 1), slice(1, 7))]
    assert sum(parts) / 2 != pytest.approx(whole[LOGP_DIFF_MEAN])


# ----------------------------------------------------------------------------------------------- the loss


def _loss_and_grad(
    lp0: torch.Tensor, old: torch.Tensor | None, adv: torch.Tensor, mask: torch.Tensor, **kwargs: object
) -> tuple[torch.Tensor, torch.Tensor]:
    lp = lp0.clone().requires_grad_(True)
    loss, _ = policy_loss(lp, old, adv, mask, **kwargs)  # type: ignore[arg-type]
    (grad,) = torch.autograd.grad(loss, lp)
    return loss.detach(), grad


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(6, 5, generator=g, dtype=F64) * 3
    old = lp + 0.3 * torch.randn(6, 5, generator=g, dtype=F64)
    adv = torch.randn(6, generator=g, dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0] * 5, [1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    return lp, old, adv, mask


@pytest.mark.parametrize("mode", CORRECTION_MODES)
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_identical_logprobs_leave_loss_and_gradient_unchanged(mode: str, ratio_level: str, agg: str) -> None:
    lp, old, adv, mask = _batch(3)
    weights, _ = rollout_is_weights(old, old.clone(), mask, mode=mode)  # engine == old
    kwargs = {"loss_agg_mode": agg, "ratio_level": ratio_level, "clip_ratio_low": 0.1, "clip_ratio_high": 0.1}
    base_loss, base_grad = _loss_and_grad(lp, old, adv, mask, **kwargs)
    loss, grad = _loss_and_grad(lp, old, adv, mask, rollout_is_weights=weights, **kwargs)
    assert torch.equal(loss, base_loss)
    assert torch.equal(grad, base_grad)


def test_weights_scale_each_tokens_policy_gradient_term() -> None:
    """REINFORCE form (-A * lp * w): loss and gradient are the weighted ones, masked tokens get no gradient."""
    lp = _lp([[-1.0, -2.0, -0.5], [-0.3, -0.7, -0.2]])
    adv = _lp([[1.0, -2.0]])[0]
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    old = lp.clone()
    engine = old - torch.log(_lp([[3.0, 1.0, 0.2], [1.5, 6.0, 1.0]]))  # ratios old / engine
    w, affected = rollout_is_weights(old, engine, mask, mode="icepop")
    torch.testing.assert_close(w, _lp([[3.0, 1.0, 0.0], [1.5, 0.0, 0.0]]))
    assert affected.sum() == 2
    loss, grad = _loss_and_grad(lp, None, adv, mask, rollout_is_weights=w)
    expected = -(1.0 * (-1.0 * 3.0 + -2.0 * 1.0) + -2.0 * (-0.3 * 1.5)) / 5  # token-mean over all 5 tokens
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=F64))
    torch.testing.assert_close(grad, _lp([[-3.0, -1.0, 0.0], [3.0, 0.0, 0.0]]) / 5)
    # TIS instead truncates the 3.0 and 6.0 ratios at 2.0
    w, _ = rollout_is_weights(old, engine, mask, mode="tis")
    _, grad = _loss_and_grad(lp, None, adv, mask, rollout_is_weights=w)
    torch.testing.assert_close(grad, _lp([[-2.0, -1.0, -0.2], [3.0, 4.0, 0.0]]) / 5)


def test_weights_apply_to_the_clipped_surrogate() -> None:
    lp = _lp([[-1.0, -1.0]])
    old = _lp([[-1.0, -1.0]])
    adv = _lp([[1.0]])[0]
    w = _lp([[2.0, 0.0]])
    loss, grad = _loss_and_grad(lp, old, adv, torch.ones(1, 2), rollout_is_weights=w)
    # ratio 1: per-token objective -A * r * w = [-2, 0], token-mean -1; gradient -A * r * w / 2
    torch.testing.assert_close(loss, torch.tensor(-1.0, dtype=F64))
    torch.testing.assert_close(grad, _lp([[-1.0, 0.0]]))


def test_masked_tokens_keep_their_place_in_the_denominator() -> None:
    """A dropped token changes the numerator only (as TRL does): the loss's normalisation is untouched."""
    lp = _lp([[-1.0, -1.0, -1.0, -1.0]])
    adv = _lp([[1.0]])[0]
    w = _lp([[1.0, 1.0, 0.0, 0.0]])
    for agg, expected in (("token-mean", 2 / 4), ("seq-mean-token-mean", 2 / 4), ("seq-mean-token-sum", 2.0)):
        loss, _ = _loss_and_grad(lp, None, adv, torch.ones(1, 4), rollout_is_weights=w, loss_agg_mode=agg)
        torch.testing.assert_close(loss, torch.tensor(expected, dtype=F64))


@pytest.mark.parametrize("agg", LOSS_AGG_MODES)
@pytest.mark.parametrize("mode", ["tis", "icepop", "seq_mask_tis"])
def test_corrected_loss_is_split_invariant(agg: str, mode: str) -> None:
    """Micro-batches with the global denominator reproduce the full batch's gradient with the weights on."""
    lp, old, adv, mask = _batch(4)
    engine = old - 0.6 * torch.randn(old.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    w, affected = rollout_is_weights(old, engine, mask, mode=mode, seq_mask_low=0.5, seq_mask_high=2.0)
    assert affected.any() and (w[mask.bool()] > 0).any()  # the correction does something here
    kwargs = {"loss_agg_mode": agg, "max_response_length": 5}
    _, full = _loss_and_grad(lp, old, adv, mask, rollout_is_weights=w, **kwargs)
    parts = (slice(0, 2), slice(2, 3), slice(3, 6))
    denominator = data_parallel_denominator(sum(loss_denominator(mask[p], agg) for p in parts))
    grad = torch.zeros_like(lp)
    for p in parts:
        _, g = _loss_and_grad(
            lp[p], old[p], adv[p], mask[p], rollout_is_weights=w[p], loss_scale_denominator=denominator, **kwargs
        )
        grad[p] = g
    torch.testing.assert_close(grad, full)


def test_weights_shape_is_checked() -> None:
    lp, old, adv, mask = _batch(6)
    with pytest.raises(ValueError, match="rollout_is_weights has shape"):
        policy_loss(lp, old, adv, mask, rollout_is_weights=torch.ones(6, 4, dtype=F64))
