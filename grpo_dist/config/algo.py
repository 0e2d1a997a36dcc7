"""The algorithm's section: named presets (GRPO, Dr. GRPO, DAPO, GSPO), advantage and loss settings, and
the rollout correction."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from grpo_dist.config.base import Section

PRESETS: dict[str, dict[str, Any]] = {
    # DeepSeekMath (Shao et al. 2024): per-sequence token mean, std-scaled advantages, k3 KL at 0.04,
    # symmetric clip 0.2.
    "grpo": {
        "loss_agg_mode": "seq-mean-token-mean",
        "norm_adv_by_std": True,
        "baseline": "mean",
        "kl_coef": 0.04,
        "kl_estimator": "k3",
        "clip_ratio_low": 0.2,
        "clip_ratio_high": 0.2,
        "ratio_level": "token",
        "dynamic_sampling": False,
    },
    # Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): no std scaling, no per-length
    # normalisation (token sums divided by a constant max length), no KL.
    "dr_grpo": {
        "loss_agg_mode": "seq-mean-token-sum-norm",
        "norm_adv_by_std": False,
        "baseline": "mean",
        "kl_coef": 0.0,
        "kl_estimator": "k3",
        "clip_ratio_low": 0.2,
        "clip_ratio_high": 0.2,
        "ratio_level": "token",
        "dynamic_sampling": False,
    },
    # DAPO (Yu et al. 2025): clip-higher (0.2 / 0.28), token-level loss, no KL, dynamic sampling.
    # Its soft overlong punishment is the ``overlong`` reward function (see configs/dapo.yaml).
    "dapo": {
        "loss_agg_mode": "token-mean",
        "norm_adv_by_std": True,
        "baseline": "mean",
        "kl_coef": 0.0,
        "kl_estimator": "k3",
        "clip_ratio_low": 0.2,
        "clip_ratio_high": 0.28,
        "ratio_level": "token",
        "dynamic_sampling": True,
    },
    # GSPO (Zheng et al. 2025): length-normalised sequence-level ratio, clip range 3e-4 / 4e-4, no KL.
    "gspo": {
        "loss_agg_mode": "seq-mean-token-mean",
        "norm_adv_by_std": True,
        "baseline": "mean",
        "kl_coef": 0.0,
        "kl_estimator": "k3",
        "clip_ratio_low": 3e-4,
        "clip_ratio_high": 4e-4,
        "ratio_level": "sequence",
        "dynamic_sampling": False,
    },
}


class RolloutCorrectionConfig(Section):
    """How the learner corrects for the rollout engines' sampling distribution not being exactly its own
    (kernels and precision differ), with ``rho_t = exp(old_t - engine_t)`` the token importance ratio of
    the learner's old logprobs to the engine's (formulas in ``grpo_dist.algo.rollout_correction``). Each
    step the ``rollout_corr/*`` metrics report the mismatch, whatever the mode."""

    mode: Literal["none", "tis", "icepop", "seq_mask_tis"] = "tis"
    """``none``; ``tis``: each token's policy-gradient term times ``min(rho_t, tis_clip)``; ``icepop``: times
    ``rho_t`` where ``icepop_low <= rho_t <= icepop_high``, dropped elsewhere; ``seq_mask_tis``: the ``tis``
    weights, with whole sequences dropped whose geometric-mean ratio ``exp(mean_t log rho_t)`` is outside
    ``[seq_mask_low, seq_mask_high]``. On by default because TRL (1.16) applies a correction by default
    (``vllm_importance_sampling_correction``); token ``tis`` rather than TRL's sequence-level default
    because a sequence's product ratio grows or shrinks exponentially with its length (long completions get
    masked or dominate), while a token weight is bounded by ``tis_clip`` at any length. Where engine and
    learner agree (``rho_t = 1``) every mode leaves the loss and its gradient unchanged."""
    tis_clip: float = Field(2.0, gt=0.0)
    """Upper truncation of the token weight in ``tis`` and ``seq_mask_tis`` (2.0, verl's default threshold
    and the TIS paper's)."""
    icepop_low: float = Field(0.5, ge=0.0)
    """``icepop``: tokens whose ratio is below this are dropped (IcePop's 0.5)."""
    icepop_high: float = Field(5.0, gt=0.0)
    """``icepop``: tokens whose ratio is above this are dropped (IcePop's 5.0)."""
    seq_mask_low: float = Field(0.999, ge=0.0)
    """``seq_mask_tis``: sequences whose geometric-mean ratio is below this are dropped (verl's geometric
    rejection default, 0.999)."""
    seq_mask_high: float = Field(1.001, gt=0.0)
    """``seq_mask_tis``: sequences whose geometric-mean ratio is above this are dropped (verl: 1.001)."""
    bypass: bool = False
    """Use the engines' logprobs as the PPO anchor (old logprobs): no learner pass recomputes them. Takes
    precedence over ``learner.recompute_old_logprobs`` (which need not be changed). The clipped ratio is
    then ``pi_theta / pi_engine`` itself, so ``mode`` must be ``none``; the ``rollout_corr/*`` metrics then
    compare the learner's current logprobs (as each micro-batch is first trained on) with the engine's."""

    @model_validator(mode="after")
    def _check_bands(self) -> RolloutCorrectionConfig:
        for low, high in (("icepop_low", "icepop_high"), ("seq_mask_low", "seq_mask_high")):
            if getattr(self, low) >= getattr(self, high):
                raise ValueError(f"{low} = {getattr(self, low)} must be < {high} = {getattr(self, high)}")
        return self


class AlgoConfig(Section):
    preset: Literal["grpo", "dr_grpo", "dapo", "gspo"] = "grpo"
    """A named recipe filling the fields below (see ``PRESETS``); keys set explicitly win."""
    baseline: Literal["mean", "loo"] = "mean"
    """Group baseline: the group mean (GRPO) or leave-one-out mean (RLOO)."""
    norm_adv_by_std: bool = True
    """Divide advantages by the group's std (``scale_rewards`` is accepted as an alias)."""
    adv_eps: float = Field(1e-6, gt=0.0)
    """Added to the group std before dividing."""
    std_correction: int = Field(0, ge=0, le=1)
    """Bessel correction of the group std that ``norm_adv_by_std`` divides by: 0, the population std
    (ddof 0, grpo-dist's behaviour so far: existing runs reproduce), or 1, the sample std (ddof 1, as verl
    and TRL compute it with ``torch.std``). For a group of G valid samples the ddof-1 advantages are
    ``sqrt((G - 1) / G)`` times the ddof-0 ones (0.707 for G = 2, 0.935 for G = 8): only the scale of each
    group's advantages changes, which with Adam mostly acts as a learning-rate change. No effect when
    ``norm_adv_by_std`` is false."""
    kl_coef: float = Field(0.04, ge=0.0)
    """Weight of the KL penalty to the frozen reference model (0 disables the reference model)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token KL estimator; k3 = exp(ref-lp) - (ref-lp) - 1 is DeepSeekMath's."""
    clip_ratio_low: float = Field(0.2, ge=0.0, lt=1.0)
    """Lower clip: ratio >= 1 - clip_ratio_low."""
    clip_ratio_high: float = Field(0.2, ge=0.0)
    """Upper clip: ratio <= 1 + clip_ratio_high (DAPO's clip-higher raises it)."""
    clip_ratio_c: float | None = Field(None, gt=1.0)
    """Dual-clip bound for negative advantages (None disables)."""
    loss_agg_mode: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "seq-mean-token-mean"
    """How token losses become one number: over all tokens (DAPO), per sequence then over sequences
    (DeepSeekMath), or per-sequence sums over ``max_response_length`` (Dr. GRPO)."""
    ratio_level: Literal["token", "sequence"] = "token"
    """Importance ratio per token (PPO/GRPO) or per sequence, length-normalised (GSPO)."""
    entropy_coef: float = Field(0.0, ge=0.0)
    """Entropy bonus weight."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups whose rewards are all equal and sample more prompts."""
    max_sampling_rounds: int = Field(3, ge=1)
    """Most generation rounds per step when ``dynamic_sampling`` refills the batch."""
    rollout_correction: RolloutCorrectionConfig = Field(default_factory=RolloutCorrectionConfig)
    """Correction for the rollout engines' logprobs differing from the learner's (see its fields)."""

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "scale_rewards" in data:
            if "norm_adv_by_std" in data:
                raise ValueError("set one of scale_rewards / norm_adv_by_std (they are aliases)")
            data["norm_adv_by_std"] = data.pop("scale_rewards")
        preset = data.get("preset", "grpo")
        if preset not in PRESETS:
            return data  # the Literal check reports it with the allowed names
        return {**PRESETS[preset], **data}
