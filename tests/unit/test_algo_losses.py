"""Policy loss: hand-computed objectives for every option, masking, empty responses, validation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_dist.algo import LOSS_AGG_MODES, aggregate_loss, kl_penalty, policy_loss

F64 = torch.float64


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.clone().requires_grad_(True)


def _grad(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, x)
    return g


# Unequal lengths (3, 1 and an empty row) so that every aggregation mode gives a different number.
VALUES = _t([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [7.0, 7.0, 7.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
EXPECTED_AGG = {
    "token-mean": (1 + 2 + 3 + 4) / 4,
    "seq-mean-token-mean": (6 / 3 + 4 / 1) / 2,
    "seq-mean-token-sum": (6 + 4) / 2,
    "seq-mean-token-sum-norm": (6 / 4 + 4 / 4) / 2,  # max_response_length = 4
}


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_each_loss_agg_mode_hand_computed(mode: str) -> None:
    got = aggregate_loss(VALUES, MASK, mode, max_response_length=4)
    torch.testing.assert_close(got, torch.tensor(EXPECTED_AGG[mode], dtype=F64))
    # REINFORCE form with A = -1 makes the per-token objective -A * lp equal to lp
    lp = _leaf(VALUES)
    loss, metrics = policy_loss(lp, None, -torch.ones(3, dtype=F64), MASK, loss_agg_mode=mode, max_response_length=4)
    torch.testing.assert_close(loss, torch.tensor(EXPECTED_AGG[mode], dtype=F64))
    assert metrics["pg_loss"] == pytest.approx(EXPECTED_AGG[mode])
    assert metrics["num_tokens"] == 4.0
    assert metrics["num_sequences"] == 2.0


def test_global_denominator_replaces_the_local_count() -> None:
    got = aggregate_loss(VALUES, MASK, "token-mean", loss_scale_denominator=8.0)
    torch.testing.assert_close(got, torch.tensor(10 / 8, dtype=F64))
    got = aggregate_loss(VALUES, MASK, "seq-mean-token-mean", loss_scale_denominator=5.0)
    torch.testing.assert_close(got, torch.tensor(6 / 5, dtype=F64))


def test_reinforce_form_value_and_gradient() -> None:
    lp = _leaf(_t([[-1.0, -2.0], [-0.5, -4.0]]))
    adv = torch.tensor([2.0, -1.0], dtype=F64)
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, metrics = policy_loss(lp, None, adv, mask)
    # -(2*-1 + 2*-2 + -1*-0.5) / 3
    torch.testing.assert_close(loss, torch.tensor(5.5 / 3, dtype=F64))
    torch.testing.assert_close(_grad(loss, lp), _t([[-2 / 3, -2 / 3], [1 / 3, 0.0]]))
    assert metrics["clip_fraction"] == 0.0
    assert metrics["ratio_mean"] == 1.0
    assert metrics["approx_kl"] == 0.0
    assert metrics["kl"] == 0.0


def test_clip_higher_asymmetric_bounds_hand_example() -> None:
    ratios = [1.5, 0.5, 0.5, 1.1]
    lp = _leaf(torch.log(_t([ratios])))
    old = torch.zeros(1, 4, dtype=F64)
    adv = _t([[1.0, -1.0, 1.0, -2.0]])  # per-token advantages
    mask = torch.ones(1, 4)
    loss, m = policy_loss(lp, old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.28)
    # per token: max(-A r, -A clip(r, 0.8, 1.28)) = [-1.28 (high clip), 0.8 (low clip), -0.5, 2.2]
    torch.testing.assert_close(loss, torch.tensor((-1.28 + 0.8 - 0.5 + 2.2) / 4, dtype=F64))
    # clipped tokens get no gradient; the others d(-A r)/d lp = -A r
    torch.testing.assert_close(_grad(loss, lp), _t([[0.0, 0.0, -0.5 / 4, 2.2 / 4]]))
    assert m["clip_fraction"] == pytest.approx(0.5)
    assert m["clip_fraction_low"] == pytest.approx(0.25)
    assert m["clip_fraction_high"] == pytest.approx(0.25)
    assert m["ratio_mean"] == pytest.approx(sum(ratios) / 4)
    assert m["ratio_max"] == pytest.approx(1.5)
    assert m["approx_kl"] == pytest.approx(sum(0.5 * math.log(r) ** 2 for r in ratios) / 4)
    # the symmetric default clips the first token at 1.2 instead of 1.28
    sym, _ = policy_loss(lp, old, adv, mask)
    torch.testing.assert_close(sym, torch.tensor((-1.2 + 0.8 - 0.5 + 2.2) / 4, dtype=F64))


def test_dual_clip_hand_example() -> None:
    lp = _leaf(torch.log(_t([[5.0, 2.0, 5.0]])))
    old = torch.zeros(1, 3, dtype=F64)
    adv = _t([[-1.0, -1.0, 1.0]])
    loss, m = policy_loss(lp, old, adv, torch.ones(1, 3), clip_ratio_c=3.0)
    # [min(max(5, 1.2), 3), min(max(2, 1.2), 3), max(-5, -1.2)] = [3, 2, -1.2]: dual clip only for A < 0
    torch.testing.assert_close(loss, torch.tensor((3.0 + 2.0 - 1.2) / 3, dtype=F64))
    torch.testing.assert_close(_grad(loss, lp), _t([[0.0, 2.0 / 3, 0.0]]))
    assert m["dual_clip_fraction"] == pytest.approx(1 / 3)
    assert m["clip_fraction"] == pytest.approx(1 / 3)
    without, _ = policy_loss(lp, old, adv, torch.ones(1, 3))
    torch.testing.assert_close(without, torch.tensor((5.0 + 2.0 - 1.2) / 3, dtype=F64))


def test_gspo_sequence_ratio_hand_example() -> None:
    old = torch.zeros(2, 3, dtype=F64)
    lp = _leaf(torch.log(_t([[1.2, 1.0, 50.0], [2.0, 2.0, 2.0]])))  # 50.0 is at a masked position
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, -1.0], dtype=F64)
    loss, m = policy_loss(lp, old, adv, mask, ratio_level="sequence", loss_agg_mode="seq-mean-token-mean")
    s0 = math.sqrt(1.2)  # exp(mean(log 1.2, log 1)), inside [0.8, 1.2]
    s1 = 2.0  # A < 0 and r > 1 + eps: the unclipped branch is the larger one
    torch.testing.assert_close(loss, torch.tensor((-s0 + s1) / 2, dtype=F64))
    # GSPO gradient: d(-A_i s_i)/d lp_t = -A_i s_i / |y_i|, times 1/num_sequences
    expected = _t([[-s0 / 4, -s0 / 4, 0.0], [s1 / 6, s1 / 6, s1 / 6]])
    torch.testing.assert_close(_grad(loss, lp), expected)
    assert m["ratio_mean"] == pytest.approx((2 * s0 + 3 * s1) / 5)
    assert m["ratio_max"] == pytest.approx(2.0)
    # a sequence ratio above 1 + eps with A > 0 is clipped as a whole
    lp2 = _leaf(torch.log(_t([[2.0, 2.0, 1.0]])))
    loss2, m2 = policy_loss(lp2, old[:1], torch.ones(1, dtype=F64), mask[:1], ratio_level="sequence")
    torch.testing.assert_close(loss2, torch.tensor(-1.2, dtype=F64))
    torch.testing.assert_close(_grad(loss2, lp2), torch.zeros(1, 3, dtype=F64))
    assert m2["clip_fraction"] == 1.0


def _gspo_sequence_objective(
    lp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, low: float, high: float
) -> torch.Tensor:
    """Independent implementation of GSPO's sequence-level objective (paper form, seq-mean)."""
    valid = mask.bool()
    n = valid.sum(-1)
    s = torch.exp(torch.where(valid, lp - old, 0.0).sum(-1) / n.clamp(min=1))  # [B]
    per_seq = torch.maximum(-adv * s, -adv * s.clamp(1 - low, 1 + high))  # [B]
    keep = n > 0
    return per_seq[keep].sum() / keep.sum().clamp(min=1)


@pytest.mark.parametrize("mean_log_ratio", [19.5, 20.0])
def test_gspo_gradient_inside_the_clamp_is_the_unclamped_one(mean_log_ratio: float) -> None:
    """A < 0 without dual clip takes the unclipped branch: up to the clamp (bound included) the loss and
    its gradient are the paper's sequence objective's."""
    old = torch.zeros(2, 3, dtype=F64)
    lp = _leaf(_t([[mean_log_ratio - 1.0, mean_log_ratio + 1.0, 0.0], [-0.5, -0.2, -0.1]]))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([-1.0, 0.5], dtype=F64)
    loss, _ = policy_loss(lp, old, adv, mask, ratio_level="sequence", loss_agg_mode="seq-mean-token-mean")
    expected = _gspo_sequence_objective(lp, old, adv, mask, 0.2, 0.2)
    torch.testing.assert_close(loss, expected)
    grad = _grad(loss, lp)
    torch.testing.assert_close(grad, _grad(expected, lp))
    assert grad[0, 0] == pytest.approx(math.exp(mean_log_ratio) / 2 / 2)  # s_0 / |y_0| / 2 sequences


@pytest.mark.parametrize("agg", LOSS_AGG_MODES)
def test_gspo_gradient_past_the_clamp_is_zero(agg: str) -> None:
    """Mean log ratio 25 (past +-LOG_RATIO_CLAMP = 20): the value is the clamped ratio exp(20) (finite), and no
    gradient flows through that sequence, for A < 0 (unclipped branch, no dual clip) and for A > 0."""
    old = torch.zeros(3, 2, dtype=F64)
    lp = _leaf(_t([[24.0, 26.0], [-25.0, -25.0], [-0.3, -0.1]]))  # sequence means 25, -25, -0.2
    adv = torch.tensor([-1.0, 1.0, 1.0], dtype=F64)
    mask = torch.ones(3, 2)
    loss, _ = policy_loss(lp, old, adv, mask, ratio_level="sequence", loss_agg_mode=agg, max_response_length=2)
    assert torch.isfinite(loss)
    grad = _grad(loss, lp)
    assert torch.equal(grad[:2], torch.zeros(2, 2, dtype=F64))
    assert (grad[2] != 0).all()  # the sequence inside the clamp still learns
    # the clamped sequence contributes exp(20) (A = -1), not exp(25): e.g. token-mean (2 e^20 + ...) / 6
    if agg == "token-mean":
        lp_only = _leaf(lp.detach()[:1])
        alone, _ = policy_loss(lp_only, old[:1], adv[:1], mask[:1], ratio_level="sequence", loss_agg_mode=agg)
        torch.testing.assert_close(alone, torch.tensor(math.exp(20.0), dtype=F64))
        assert torch.equal(_grad(alone, lp_only), torch.zeros(1, 2, dtype=F64))


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**16), b=st.integers(1, 5), t=st.integers(1, 6), low=st.sampled_from([0.1, 0.2]))
def test_gspo_matches_the_sequence_objective_value_and_gradient(seed: int, b: int, t: int, low: float) -> None:
    g = torch.Generator().manual_seed(seed)
    lp = _leaf(-torch.rand(b, t, generator=g, dtype=F64) * 3)
    old = lp.detach() + torch.randn(b, t, generator=g, dtype=F64) * 0.3
    adv = torch.randn(b, generator=g, dtype=F64)
    mask = torch.rand(b, t, generator=g) < 0.7
    loss, _ = policy_loss(
        lp, old, adv, mask, ratio_level="sequence", loss_agg_mode="seq-mean-token-mean", clip_ratio_low=low
    )
    expected = _gspo_sequence_objective(lp, old, adv, mask, low, 0.2)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(_grad(loss, lp), _grad(expected, lp))


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    b=st.integers(1, 5),
    t=st.integers(1, 5),
    mode=st.sampled_from(LOSS_AGG_MODES),
    clip_ratio_c=st.sampled_from([None, 2.0]),
)
def test_gspo_equals_token_level_for_length_one_responses(
    seed: int, b: int, t: int, mode: str, clip_ratio_c: float | None
) -> None:
    g = torch.Generator().manual_seed(seed)
    lp = _leaf(-torch.rand(b, t, generator=g, dtype=F64) * 3)
    old = lp.detach() + torch.randn(b, t, generator=g, dtype=F64) * 0.5
    adv = torch.randn(b, generator=g, dtype=F64)
    mask = torch.zeros(b, t, dtype=torch.bool)
    mask[torch.arange(b), torch.randint(0, t, (b,), generator=g)] = True  # one response token per row
    kwargs = {"loss_agg_mode": mode, "max_response_length": t, "clip_ratio_c": clip_ratio_c}
    seq, m_seq = policy_loss(lp, old, adv, mask, ratio_level="sequence", **kwargs)  # type: ignore[arg-type]
    tok, m_tok = policy_loss(lp, old, adv, mask, ratio_level="token", **kwargs)  # type: ignore[arg-type]
    torch.testing.assert_close(seq, tok)
    torch.testing.assert_close(_grad(seq, lp), _grad(tok, lp))
    assert m_seq["clip_fraction"] == m_tok["clip_fraction"]


def test_kl_term_is_inside_the_per_token_objective() -> None:
    lp = _leaf(_t([[-1.0, -2.0], [-0.5, -9.0]]))
    ref = _t([[-1.5, -1.0], [-0.5, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    zero_adv = torch.zeros(2, dtype=F64)
    loss, m = policy_loss(lp, None, zero_adv, mask, ref_logprobs=ref, kl_coef=0.1)
    k3 = [math.exp(-0.5) - 0.5, math.e - 2.0, 0.0]
    torch.testing.assert_close(loss, torch.tensor(0.1 * sum(k3) / 3, dtype=F64))
    assert m["kl"] == pytest.approx(sum(k3) / 3)
    # d k3 / d lp = 1 - exp(ref - lp)
    expected = 0.1 / 3 * (1 - torch.exp(ref - lp.detach())) * mask
    torch.testing.assert_close(_grad(loss, lp), expected)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_term_uses_the_same_aggregation(mode: str, estimator: str) -> None:
    g = torch.Generator().manual_seed(3)
    lp = -torch.rand(3, 4, generator=g, dtype=F64)
    old = lp + 0.1 * torch.randn(3, 4, generator=g, dtype=F64)
    ref = lp + 0.3 * torch.randn(3, 4, generator=g, dtype=F64)
    adv = torch.randn(3, generator=g, dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    common = {"loss_agg_mode": mode, "max_response_length": 4}
    with_kl, m = policy_loss(lp, old, adv, mask, ref_logprobs=ref, kl_coef=0.05, kl_estimator=estimator, **common)  # type: ignore[arg-type]
    without, _ = policy_loss(lp, old, adv, mask, **common)  # type: ignore[arg-type]
    expected = 0.05 * aggregate_loss(kl_penalty(lp, ref, estimator), mask, mode, max_response_length=4)
    torch.testing.assert_close(with_kl - without, expected)
    valid = mask.bool()
    assert m["kl"] == pytest.approx(kl_penalty(lp, ref, estimator)[valid].mean().item())


def test_entropy_bonus_hand_example() -> None:
    lp = _t([[-1.0, -1.0], [-1.0, -1.0]])
    ent = _leaf(_t([[1.0, 2.0], [3.0, 100.0]]))
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, m = policy_loss(lp, None, torch.zeros(2, dtype=F64), mask, entropy=ent, entropy_coef=0.01)
    torch.testing.assert_close(loss, torch.tensor(-0.01 * 2.0, dtype=F64))  # token-mean entropy is 6 / 3
    assert m["entropy"] == pytest.approx(2.0)
    torch.testing.assert_close(_grad(loss, ent), _t([[-0.01 / 3, -0.01 / 3], [-0.01 / 3, 0.0]]))
    no_bonus, m2 = policy_loss(lp, None, torch.zeros(2, dtype=F64), mask, entropy=ent)
    assert no_bonus.item() == 0.0
    assert m2["entropy"] == pytest.approx(2.0)  # the metric is reported even without a bonus


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    b=st.integers(1, 4),
    t=st.integers(1, 6),
    mode=st.sampled_from(LOSS_AGG_MODES),
    ratio_level=st.sampled_from(["token", "sequence"]),
)
def test_ratio_one_means_no_clipping_and_reinforce_gradient(
    seed: int, b: int, t: int, mode: str, ratio_level: str
) -> None:
    g = torch.Generator().manual_seed(seed)
    lp = _leaf(-torch.rand(b, t, generator=g, dtype=F64) * 3)
    adv = torch.randn(b, generator=g, dtype=F64) * 2
    mask = torch.rand(b, t, generator=g) < 0.7
    kw = {"loss_agg_mode": mode, "max_response_length": t, "clip_ratio_c": 3.0, "ratio_level": ratio_level}
    clipped, m = policy_loss(lp, lp.detach(), adv, mask, **kw)  # type: ignore[arg-type]
    reinforce, _ = policy_loss(lp, None, adv, mask, **kw)  # type: ignore[arg-type]
    assert m["clip_fraction"] == 0.0
    assert m["dual_clip_fraction"] == 0.0
    assert m["approx_kl"] == 0.0
    if mask.any():
        assert m["ratio_mean"] == pytest.approx(1.0)
        assert m["ratio_max"] == pytest.approx(1.0)
    # at ratio 1 the surrogate's value is -agg(A) (REINFORCE's is -agg(A * lp)); the gradients are equal
    adv_tok = adv.unsqueeze(-1).expand(b, t)
    torch.testing.assert_close(clipped, aggregate_loss(-adv_tok, mask, mode, max_response_length=t))
    torch.testing.assert_close(reinforce, aggregate_loss(-adv_tok * lp, mask, mode, max_response_length=t))
    torch.testing.assert_close(_grad(clipped, lp), _grad(reinforce, lp))


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    b=st.integers(1, 4),
    t=st.integers(1, 6),
    mode=st.sampled_from(LOSS_AGG_MODES),
    ratio_level=st.sampled_from(["token", "sequence"]),
    token_adv=st.booleans(),
    garbage=st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e6, -3.0]),
)
def test_masked_positions_change_neither_loss_nor_gradient(
    seed: int, b: int, t: int, mode: str, ratio_level: str, token_adv: bool, garbage: float
) -> None:
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(b, t, generator=g, dtype=F64) * 3
    old = lp + torch.randn(b, t, generator=g, dtype=F64) * 0.3
    ref = lp + torch.randn(b, t, generator=g, dtype=F64) * 0.3
    ent = torch.rand(b, t, generator=g, dtype=F64)
    adv = torch.randn((b, t) if token_adv else (b,), generator=g, dtype=F64)
    mask = torch.rand(b, t, generator=g) < 0.6
    kw = {
        "loss_agg_mode": mode,
        "ratio_level": ratio_level,
        "max_response_length": t,
        "clip_ratio_c": 3.0,
        "kl_coef": 0.1,
        "entropy_coef": 0.01,
    }

    def run(lp_: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        x = _leaf(lp_)
        old_, ref_, ent_, adv_ = rest
        loss, m = policy_loss(x, old_, adv_, mask, ref_logprobs=ref_, entropy=ent_, **kw)  # type: ignore[arg-type]
        return loss, _grad(loss, x), m

    base_loss, base_grad, base_m = run(lp, old, ref, ent, adv)
    dirty = [torch.where(mask, x, garbage) for x in (lp, old, ref, ent)]
    dirty_adv = torch.where(mask, adv, garbage) if token_adv else adv
    loss, grad, m = run(*dirty, dirty_adv)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, base_loss)
    torch.testing.assert_close(grad, base_grad)
    assert torch.equal(grad[~mask], torch.zeros_like(grad[~mask]))
    assert m == pytest.approx(base_m)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
def test_empty_responses_give_finite_loss_and_gradients(mode: str, ratio_level: str) -> None:
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(3, 4, generator=g, dtype=F64)
    old = lp + 0.2 * torch.randn(3, 4, generator=g, dtype=F64)
    adv = torch.randn(3, generator=g, dtype=F64)
    kw = {"loss_agg_mode": mode, "ratio_level": ratio_level, "max_response_length": 4, "kl_coef": 0.1}
    one_empty = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    x = _leaf(lp)
    loss, m = policy_loss(x, old, adv, one_empty, ref_logprobs=old, **kw)  # type: ignore[arg-type]
    grad = _grad(loss, x)
    assert torch.isfinite(loss)
    assert torch.isfinite(grad).all()
    assert all(math.isfinite(v) for v in m.values())
    # the empty row neither contributes nor dilutes: same as dropping it
    keep = torch.tensor([0, 2])
    x2 = _leaf(lp[keep])
    loss2, _ = policy_loss(x2, old[keep], adv[keep], one_empty[keep], ref_logprobs=old[keep], **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(loss, loss2)
    torch.testing.assert_close(grad[keep], _grad(loss2, x2))

    x3 = _leaf(lp)
    loss3, m3 = policy_loss(x3, old, adv, torch.zeros(3, 4), ref_logprobs=old, **kw)  # type: ignore[arg-type]
    assert loss3.item() == 0.0
    assert torch.equal(_grad(loss3, x3), torch.zeros_like(lp))
    assert m3["num_tokens"] == 0.0
    assert m3["ratio_mean"] == 1.0
    assert all(math.isfinite(v) for v in m3.values())


def test_zero_row_batch_is_legal() -> None:
    lp = torch.zeros(0, 3, requires_grad=True)
    loss, m = policy_loss(lp, torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 3), loss_agg_mode="seq-mean-token-mean")
    assert loss.item() == 0.0
    assert m["ratio_max"] == 1.0
    assert m["num_sequences"] == 0.0


def test_metrics_are_python_floats() -> None:
    lp = torch.zeros(2, 3, requires_grad=True)
    _, m = policy_loss(lp, torch.zeros(2, 3), torch.ones(2), torch.ones(2, 3), entropy=torch.ones(2, 3))
    expected = {
        "loss", "pg_loss", "kl", "approx_kl", "clip_fraction", "clip_fraction_low", "clip_fraction_high",
        "dual_clip_fraction", "ratio_mean", "ratio_max", "entropy", "num_tokens", "num_sequences",
    }  # fmt: skip
    assert set(m) == expected
    assert all(type(v) is float for v in m.values())


def test_loss_is_float32_for_float32_inputs_and_old_logprobs_get_no_gradient() -> None:
    lp = torch.zeros(2, 3, requires_grad=True)
    old = torch.zeros(2, 3, requires_grad=True)
    loss, _ = policy_loss(lp, old, torch.ones(2), torch.ones(2, 3))
    assert loss.dtype == torch.float32
    assert loss.dim() == 0
    loss.backward()
    assert old.grad is None


Z = torch.zeros(2, 3)
ONES = torch.ones(2, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss_agg_mode": "mean"}, r"loss_agg_mode='mean'.*'token-mean'"),
        ({"ratio_level": "seq"}, r"ratio_level='seq'.*\['token', 'sequence'\]"),
        ({"kl_estimator": "k5"}, r"kl_estimator='k5'.*\['k1', 'k2', 'k3'\]"),
        ({"clip_ratio_low": -0.1}, r"clip_ratio_low=-0\.1 must be >= 0"),
        ({"clip_ratio_high": -1.0}, r"clip_ratio_high=-1\.0 must be >= 0"),
        ({"clip_ratio_c": 1.0}, r"clip_ratio_c=1\.0 must be > 1"),
        ({"kl_coef": 0.1}, r"kl_coef=0\.1 > 0 needs ref_logprobs"),
        ({"kl_coef": -0.1, "ref_logprobs": Z}, r"kl_coef=-0\.1 must be >= 0"),
        ({"entropy_coef": 0.01}, r"entropy_coef=0\.01 != 0 needs entropy"),
        ({"loss_agg_mode": "seq-mean-token-sum-norm"}, "max_response_length is required"),
        ({"max_response_length": 0}, "max_response_length=0"),
        ({"loss_scale_denominator": 0.0}, r"loss_scale_denominator=0\.0 must be > 0"),
        ({"loss_scale_denominator": float("nan")}, "finite"),
        ({"ref_logprobs": torch.zeros(2, 4)}, r"ref_logprobs has shape \(2, 4\).*\(2, 3\)"),
        ({"entropy": torch.zeros(3)}, r"entropy has shape \(3,\)"),
    ],
)
def test_invalid_options_are_rejected(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        policy_loss(Z, Z, torch.ones(2), ONES, **kwargs)  # type: ignore[arg-type]


def test_invalid_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"logprobs must have shape \[B, T\]"):
        policy_loss(torch.zeros(6), None, torch.ones(6), torch.ones(6))
    with pytest.raises(ValueError, match=r"mask has shape \(2, 2\)"):
        policy_loss(Z, None, torch.ones(2), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"old_logprobs has shape \(3, 2\)"):
        policy_loss(Z, torch.zeros(3, 2), torch.ones(2), ONES)
    with pytest.raises(ValueError, match=r"advantages has shape \(3,\)"):
        policy_loss(Z, Z, torch.ones(3), ONES)
    with pytest.raises(ValueError, match=r"values must have shape \[B, T\]"):
        aggregate_loss(torch.zeros(3), torch.ones(3))
