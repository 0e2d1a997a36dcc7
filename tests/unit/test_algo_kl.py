"""KL estimators: hand values, non-negativity, unbiasedness and numerical safety."""

from __future__ import annotations

import math

import pytest
import torch

from grpo_dist.algo import LOG_RATIO_CLAMP, kl_penalty

LP = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64)
REF = torch.tensor([[-1.5, -1.0, -0.5]], dtype=torch.float64)


def test_k1_hand_values() -> None:
    torch.testing.assert_close(kl_penalty(LP, REF, "k1"), torch.tensor([[0.5, -1.0, 0.0]], dtype=torch.float64))


def test_k2_hand_values() -> None:
    torch.testing.assert_close(kl_penalty(LP, REF, "k2"), torch.tensor([[0.125, 0.5, 0.0]], dtype=torch.float64))


def test_k3_hand_values() -> None:
    # ref - lp = [-0.5, 1.0, 0.0] -> exp(x) - x - 1
    expected = torch.tensor([[math.exp(-0.5) - 0.5, math.exp(1.0) - 2.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(kl_penalty(LP, REF, "k3"), expected)
    torch.testing.assert_close(kl_penalty(LP, REF), expected)  # k3 is the default


def test_k3_is_non_negative_and_zero_only_at_equality() -> None:
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(64, 16, generator=g, dtype=torch.float64) * 5
    ref = -torch.rand(64, 16, generator=g, dtype=torch.float64) * 5
    assert (kl_penalty(lp, ref, "k3") > 0).all()
    assert torch.equal(kl_penalty(lp, lp, "k3"), torch.zeros_like(lp))


def test_k1_and_k3_are_unbiased_estimates_of_kl() -> None:
    # sample tokens from p, estimate KL(p || q) from the sampled tokens' log-probs only
    g = torch.Generator().manual_seed(1)
    logp = torch.log_softmax(torch.randn(8, generator=g, dtype=torch.float64), dim=0)
    logq = torch.log_softmax(torch.randn(8, generator=g, dtype=torch.float64), dim=0)
    exact = (logp.exp() * (logp - logq)).sum()
    tokens = torch.multinomial(logp.exp(), 200_000, replacement=True, generator=g)
    for kind in ("k1", "k3"):
        estimate = kl_penalty(logp[tokens], logq[tokens], kind).mean()
        torch.testing.assert_close(estimate, exact, atol=0.01, rtol=0.02)


def test_k3_clamps_the_log_ratio_so_extremes_stay_finite() -> None:
    lp = torch.tensor([-200.0, 0.0, -1.0], requires_grad=True)
    ref = torch.tensor([0.0, -200.0, -1.0])
    kl = kl_penalty(lp, ref, "k3")
    kl.sum().backward()
    assert torch.isfinite(kl).all()
    assert lp.grad is not None
    assert torch.isfinite(lp.grad).all()
    c = LOG_RATIO_CLAMP
    torch.testing.assert_close(kl[0], torch.tensor(math.exp(c) - c - 1.0))
    torch.testing.assert_close(kl[1], torch.tensor(math.exp(-c) + c - 1.0))


def test_gradients_match_closed_forms() -> None:
    lp = LP.clone().requires_grad_(True)
    for kind, expected in (
        ("k1", torch.ones_like(LP)),
        ("k2", LP - REF),
        ("k3", 1.0 - torch.exp(REF - LP)),
    ):
        (grad,) = torch.autograd.grad(kl_penalty(lp, REF, kind).sum(), lp)
        torch.testing.assert_close(grad, expected)


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"kind='k4'.*\['k1', 'k2', 'k3'\]"):
        kl_penalty(LP, REF, "k4")
    with pytest.raises(ValueError, match=r"ref_logprobs has shape \(1, 2\)"):
        kl_penalty(LP, REF[:, :2], "k1")
