"""Group-relative advantages: hand-computed values, shapes, zero-variance groups and argument errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_dist.algo import compute_advantages, group_reward_std, zero_std_group_mask


def test_seed_worked_example_one_group_of_four() -> None:
    # mean 1, population std 1 -> (r - 1) / (1 + eps)
    adv = compute_advantages(torch.tensor([2.0, 0.0, 2.0, 0.0]), group_size=4)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 1.0, -1.0]), atol=1e-5, rtol=0)


def test_uses_population_std_not_sample_std() -> None:
    # [0, 1, 2]: mean 1, population std sqrt(2/3) (sample std would be 1)
    adv = compute_advantages(torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64), eps=0.0)
    s = math.sqrt(2 / 3)
    torch.testing.assert_close(adv, torch.tensor([[-1 / s, 0.0, 1 / s]], dtype=torch.float64))


def test_without_std_scaling_is_mean_centred() -> None:
    adv = compute_advantages(torch.tensor([[1.0, 2.0, 6.0]]), scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([[-2.0, -1.0, 3.0]]))


def test_rloo_leave_one_out_hand_example() -> None:
    # [0, 1, 2]: baselines are the means of the others: 1.5, 1.0, 0.5
    r = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)
    adv = compute_advantages(r, baseline="loo", scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([[-1.5, 0.0, 1.5]], dtype=torch.float64))
    scaled = compute_advantages(r, baseline="loo", eps=0.0)
    torch.testing.assert_close(scaled, adv / math.sqrt(2 / 3))


def test_rloo_is_rescaled_mean_baseline() -> None:
    r = torch.tensor([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0], dtype=torch.float64)
    loo = compute_advantages(r, group_size=4, baseline="loo", scale_by_std=False)
    mean = compute_advantages(r, group_size=4, baseline="mean", scale_by_std=False)
    torch.testing.assert_close(loo, mean * 4 / 3)


def test_flat_and_grouped_inputs_agree_and_keep_shape() -> None:
    r = torch.tensor([[1.0, 0.0, 0.5], [2.0, 2.0, 3.0]])
    grouped = compute_advantages(r)
    flat = compute_advantages(r.flatten(), group_size=3)
    assert grouped.shape == (2, 3)
    assert flat.shape == (6,)
    torch.testing.assert_close(flat, grouped.flatten())
    assert compute_advantages(r, group_size=3).shape == (2, 3)


@pytest.mark.parametrize("baseline", ["mean", "loo"])
@pytest.mark.parametrize("scale_by_std", [True, False])
@pytest.mark.parametrize("value", [0.0, 1.0, 0.1, -3.7, 1e-8])
def test_zero_variance_group_gives_exact_zero(baseline: str, scale_by_std: bool, value: float) -> None:
    # 0.1 * 7 does not average back to exactly 0.1 in float32; the result must still be exactly 0
    r = torch.tensor([[value] * 7, [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]])
    adv = compute_advantages(r, baseline=baseline, scale_by_std=scale_by_std, eps=0.0)
    assert torch.equal(adv[0], torch.zeros(7))
    assert torch.isfinite(adv).all()
    assert adv[1].abs().sum() > 0


def test_integer_and_list_rewards_are_accepted() -> None:
    adv = compute_advantages([1, 0, 1, 0], group_size=2)
    assert adv.dtype == torch.float32
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 1.0, -1.0]), atol=1e-5, rtol=0)
    assert compute_advantages(torch.tensor([[1.0, 2.0]], dtype=torch.float64)).dtype == torch.float64


def test_group_reward_std_and_zero_std_mask() -> None:
    r = torch.tensor([2.0, 0.0, 2.0, 0.0, 0.3, 0.3, 0.3, 0.3])
    torch.testing.assert_close(group_reward_std(r, group_size=4), torch.tensor([1.0, 0.0]))
    assert group_reward_std(r, group_size=4)[1].item() == 0.0
    assert zero_std_group_mask(r, group_size=4).tolist() == [False, True]
    assert zero_std_group_mask(r.view(2, 4)).float().mean().item() == 0.5  # frac_reward_zero_std


@pytest.mark.parametrize(
    ("rewards", "group_size", "match"),
    [
        (torch.ones(4, 1), None, "group size 1"),
        (torch.ones(4), 1, "group size 1"),
        (torch.ones(4), None, "group_size is required"),
        (torch.ones(6), 4, "group_size=4"),
        (torch.ones(6), 0, "group_size=0"),
        (torch.ones(2, 3), 2, "group_size=2"),
        (torch.ones(2, 3, 4), None, "shape"),
        (torch.tensor([1.0, float("nan")]), 2, "finite"),
        (torch.tensor([[1.0, float("inf")]]), None, "finite"),
    ],
)
def test_invalid_rewards_are_rejected(rewards: torch.Tensor, group_size: int | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compute_advantages(rewards, group_size)


def test_invalid_options_are_rejected() -> None:
    r = torch.tensor([[0.0, 1.0]])
    with pytest.raises(ValueError, match=r"baseline='median'.*\['mean', 'loo'\]"):
        compute_advantages(r, baseline="median")
    with pytest.raises(ValueError, match=r"eps=-0\.1"):
        compute_advantages(r, eps=-0.1)
    with pytest.raises(ValueError, match="group size 1"):
        group_reward_std(torch.ones(3, 1))


@settings(max_examples=50, deadline=None)
@given(
    groups=st.lists(
        st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0]), min_size=5, max_size=5), min_size=1, max_size=6
    ),
    baseline=st.sampled_from(["mean", "loo"]),
    scale_by_std=st.booleans(),
)
def test_properties_of_random_groups(groups: list[list[float]], baseline: str, scale_by_std: bool) -> None:
    r = torch.tensor(groups, dtype=torch.float64)  # [P, 5], many ties and constant groups
    adv = compute_advantages(r, baseline=baseline, scale_by_std=scale_by_std, eps=0.0)
    flat = compute_advantages(r.flatten(), group_size=5, baseline=baseline, scale_by_std=scale_by_std, eps=0.0)
    assert adv.shape == r.shape
    assert flat.shape == (r.numel(),)
    torch.testing.assert_close(flat.view_as(adv), adv)
    assert torch.isfinite(adv).all()
    constant = zero_std_group_mask(r)
    assert torch.equal(adv[constant], torch.zeros_like(adv[constant]))
    varied = adv[~constant]
    torch.testing.assert_close(varied.mean(dim=-1), torch.zeros(varied.shape[0], dtype=torch.float64))
    if scale_by_std and baseline == "mean":
        torch.testing.assert_close(varied.std(dim=-1, correction=0), torch.ones(varied.shape[0], dtype=torch.float64))


def test_masked_group_advantages_ignore_invalid_samples() -> None:
    from grpo_dist.algo import masked_group_advantages

    nan = float("nan")
    rewards = torch.tensor([[2.0, 0.0, 2.0, 0.0], [1.0, nan, 3.0, 5.0], [nan, 1.0, nan, nan]])
    valid = ~torch.isnan(rewards)
    adv = masked_group_advantages(rewards, valid)
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=adv.dtype), atol=1e-5)
    # group 1 is normalised over {1, 3, 5}: mean 3, population std sqrt(8/3)
    std = (8 / 3) ** 0.5
    expected = torch.tensor([-2 / (std + 1e-6), 0.0, 0.0, 2 / (std + 1e-6)], dtype=adv.dtype)
    assert torch.allclose(adv[1], expected)
    assert torch.equal(adv[2], torch.zeros(4, dtype=adv.dtype))  # one valid sample: no relative signal
    assert not torch.isnan(adv).any()


# --------------------------------------------------------------------------------------- std_correction


def test_sample_std_correction_hand_example() -> None:
    # [0, 1, 2]: sample std (ddof 1) is 1, so the advantages are r - mean
    adv = compute_advantages(torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64), eps=0.0, std_correction=1)
    torch.testing.assert_close(adv, torch.tensor([[-1.0, 0.0, 1.0]], dtype=torch.float64))


def test_group_of_two_is_scaled_by_sqrt_one_half() -> None:
    r = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    ddof0 = compute_advantages(r, std_correction=0)
    ddof1 = compute_advantages(r, std_correction=1)
    torch.testing.assert_close(ddof0, torch.tensor([[1.0, -1.0]], dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(ddof1, torch.tensor([[0.7071, -0.7071]], dtype=torch.float64), atol=1e-4, rtol=0)
    exact = compute_advantages(r, eps=0.0, std_correction=1) / compute_advantages(r, eps=0.0)
    torch.testing.assert_close(exact, torch.full((1, 2), math.sqrt(1 / 2), dtype=torch.float64))


@pytest.mark.parametrize("baseline", ["mean", "loo"])
@pytest.mark.parametrize("g", [2, 3, 8])
def test_ddof1_is_sqrt_g_minus_1_over_g_times_ddof0(baseline: str, g: int) -> None:
    r = torch.randn(5, g, generator=torch.Generator().manual_seed(g), dtype=torch.float64)
    ddof0 = compute_advantages(r, eps=0.0, baseline=baseline, std_correction=0)
    ddof1 = compute_advantages(r, eps=0.0, baseline=baseline, std_correction=1)
    torch.testing.assert_close(ddof1, ddof0 * math.sqrt((g - 1) / g))
    torch.testing.assert_close(
        group_reward_std(r, std_correction=1), group_reward_std(r, std_correction=0) * math.sqrt(g / (g - 1))
    )
    # without std scaling the correction has nothing to act on
    torch.testing.assert_close(
        compute_advantages(r, scale_by_std=False, std_correction=1), compute_advantages(r, scale_by_std=False)
    )


def test_std_correction_is_exact_zero_for_identical_rewards() -> None:
    r = torch.tensor([[0.3, 0.3, 0.3]])
    assert torch.equal(compute_advantages(r, std_correction=1), torch.zeros(1, 3))
    assert group_reward_std(r, std_correction=1).item() == 0.0


@pytest.mark.parametrize("std_correction", [0, 1])
def test_masked_groups_with_std_correction(std_correction: int) -> None:
    from grpo_dist.algo import masked_group_advantages

    nan = float("nan")
    rewards = torch.tensor([[1.0, nan, 3.0, 5.0], [nan, 1.0, nan, nan], [1.0, 0.0, nan, nan]])
    valid = ~torch.isnan(rewards)
    adv = masked_group_advantages(rewards, valid, eps=0.0, std_correction=std_correction)
    # group 0 over {1, 3, 5}: sum of squares 8 over (3 - ddof)
    std = (8 / (3 - std_correction)) ** 0.5
    torch.testing.assert_close(adv[0], torch.tensor([-2 / std, 0.0, 0.0, 2 / std], dtype=adv.dtype))
    assert torch.equal(adv[1], torch.zeros(4, dtype=adv.dtype))  # a group of one valid sample: no NaN, zeros
    # two valid samples of four: the factor is that of G = 2
    factor = math.sqrt(1 / 2) if std_correction else 1.0
    torch.testing.assert_close(adv[2], torch.tensor([factor, -factor, 0.0, 0.0], dtype=adv.dtype))


@pytest.mark.parametrize("bad", [2, -1, True])
def test_invalid_std_correction_is_rejected(bad: int) -> None:
    from grpo_dist.algo import masked_group_advantages

    r = torch.tensor([[0.0, 1.0]])
    with pytest.raises(ValueError, match=r"std_correction=.*allowed values are \[0, 1\]"):
        compute_advantages(r, std_correction=bad)
    with pytest.raises(ValueError, match="std_correction"):
        group_reward_std(r, std_correction=bad)
    with pytest.raises(ValueError, match="std_correction"):
        masked_group_advantages(r, torch.ones(1, 2, dtype=torch.bool), std_correction=bad)
