"""Per-token estimators of KL(pi_theta || pi_ref) from log-probs of tokens sampled from pi_theta.

The exact KL needs the full vocabulary distribution of both models at every position; these Monte Carlo
estimators need only the two log-probs of the sampled token (names follow J. Schulman's note
"Approximating KL Divergence"). With ``log_ratio = ref - logprobs``:

* ``k1 = -log_ratio``: unbiased but high variance, and negative for individual tokens.
* ``k2 = 0.5 * log_ratio**2``: biased, low variance, non-negative; its gradient is that of a squared error.
* ``k3 = exp(log_ratio) - log_ratio - 1``: unbiased, non-negative and low variance; the estimator
  DeepSeekMath puts inside GRPO's per-token objective.
"""

from __future__ import annotations

import torch

from grpo_dist.algo._checks import check_choice, check_same_shape

KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")

LOG_RATIO_CLAMP = 20.0
"""k3 exponentiates the log-ratio, so it is clamped to [-20, 20] first: exp(20) ~ 5e8 is still finite in
float32 and bf16, while a policy that far from the reference on a token is broken anyway. The clamp
zeroes the gradient of such outlier tokens instead of letting one inf turn the whole loss into NaN."""


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL estimate, same shape as the inputs; differentiable with respect to ``logprobs``."""
    check_choice("kind", kind, KL_ESTIMATORS)
    check_same_shape("ref_logprobs", ref_logprobs, "logprobs", logprobs)
    log_ratio = ref_logprobs - logprobs  # [B, T] log(pi_ref / pi_theta)
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(log_ratio) - log_ratio - 1.0
