"""What a run asks of its engines, read off the config: the sampling of a training batch, and the two
samplings of the held-out evaluation (pass@k samples, and one greedy answer per prompt)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from grpo_dist.config import Config

if TYPE_CHECKING:
    from grpo_dist.rollout.engine import SamplingSpec

__all__ = ["eval_specs", "train_spec"]


def train_spec(cfg: Config) -> SamplingSpec:
    """``rollout.num_generations`` samples per prompt with the rollout's sampling settings."""
    from grpo_dist.rollout.engine import SamplingSpec

    r = cfg.rollout
    return SamplingSpec(
        n=r.num_generations,
        max_tokens=cfg.data.max_response_length,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        stop=tuple(r.stop),
        ignore_eos=r.ignore_eos,
    )


def eval_specs(cfg: Config) -> tuple[SamplingSpec, SamplingSpec]:
    """``eval.num_samples`` samples per held-out prompt at ``eval.temperature`` (pass@k), and one greedy
    answer (pass@1)."""
    from grpo_dist.rollout.engine import SamplingSpec

    max_tokens, stop = cfg.data.max_response_length, tuple(cfg.rollout.stop)
    sampled = SamplingSpec(n=cfg.eval.num_samples, max_tokens=max_tokens, temperature=cfg.eval.temperature, stop=stop)
    return sampled, SamplingSpec(n=1, max_tokens=max_tokens, greedy=True, stop=stop)
