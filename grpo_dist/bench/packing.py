"""``bench packing``: the learner on a skewed mix of answer lengths, packed rows against padded ones.

Real GRPO answers are mostly short with a long tail, so right-padded micro-batches compute mostly padding.
Here the same batch (SmolLM2-135M-Instruct, the real model of the recipes; most answers 8-48 tokens, a
quarter 128-256) goes through ``LearnerGroup`` in the demo layout (2 ZeRO-1 ranks, 1 thread each), once
per variant: padded micro-batches of 8 sequences, packed micro-batches of the same 8, and packed under a
token budget. Each variant starts from the same weights, so their first updates must agree: the record
keeps each variant's logprobs of the batch against the padded ones (goal: within 1e-5 in float32, next to
the padded path's own difference when only its micro-batch split changes: float32 rounding), the
spread of the first step's gradient norm and loss, and for the packed path the largest change in the other
sequences' logprobs when one sequence is altered (goal: 0). Variants run one after the other (two groups
of this model do not fit in memory together), each timed over ``reps`` steps after a warm-up step.
"""

from __future__ import annotations

import time
from typing import Any

from grpo_dist.bench.common import Settings, bench_config, model_facts, private_ray, settle
from grpo_dist.bench.memory import MemorySampler, peak_rss_mb
from grpo_dist.bench.records import best, figure
from grpo_dist.metric_names import (
    LEARNER_GRAD_NORM,
    LEARNER_LOSS,
    LEARNER_MICRO_BATCHES_PER_RANK,
    LEARNER_PADDING_FRACTION,
    LEARNER_PADDING_SAVED_FRACTION,
)

NUM_PROMPTS, GROUP = 4, 8
SHORT, LONG, LONG_SHARE = (8, 48), (128, 256), 0.25
VARIANTS: dict[str, list[str]] = {
    "padded, 8 sequences per micro-batch": ["learner.packing=false", "learner.micro_batch_size=8"],
    "packed, 8 sequences per micro-batch": ["learner.packing=true", "learner.micro_batch_size=8"],
    "packed, 2048-token budget": ["learner.packing=true", "learner.max_tokens_per_micro_batch=2048"],
}
PADDED = next(iter(VARIANTS))


def skewed_batch(vocab_size: int, seed: int = 0) -> Any:
    """``NUM_PROMPTS`` groups of ``GROUP``: one prompt of 30-50 tokens per group, answers mostly short."""
    import torch

    from grpo_dist.learner.batch import TrainBatch

    g = torch.Generator().manual_seed(seed)

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=g))

    rows = []
    for _ in range(NUM_PROMPTS):
        prompt = torch.randint(3, vocab_size, (draw(30, 50),), generator=g)
        for _ in range(GROUP):
            long = float(torch.rand(1, generator=g)) < LONG_SHARE
            answer = torch.randint(3, vocab_size, (draw(*(LONG if long else SHORT)),), generator=g)
            rows.append((len(prompt), torch.cat([prompt, answer])))
    n, width = len(rows), max(len(r) for _, r in rows)
    ids = torch.zeros((n, width), dtype=torch.long)
    attention = torch.zeros_like(ids)
    mask = torch.zeros((n, width - 1))
    for i, (plen, r) in enumerate(rows):
        ids[i, : len(r)] = r
        attention[i, : len(r)] = 1
        mask[i, plen - 1 : len(r) - 1] = 1.0
    adv = torch.randn(n, generator=g)
    return TrainBatch(ids, attention, mask, adv, torch.zeros_like(mask))


def _altered_first(batch: Any) -> Any:
    """``batch`` with sequence 0's answer reversed (the others untouched)."""
    from dataclasses import replace

    ids = batch.input_ids.clone()
    n = int(batch.attention_mask[0].sum())
    ids[0, :n] = ids[0, :n].flip(0)
    return replace(batch, input_ids=ids)


def noise_floor(path: str, batch: Any) -> dict[str, float]:
    """How far the padded float32 path moves from itself when only the micro-batch split changes (8 vs 4
    vs 1 sequences): the rounding a packed-vs-padded comparison cannot beat (different matmul shapes sum
    in different orders). One process, plain transformers."""
    import torch
    from transformers import AutoModelForCausalLM

    from grpo_dist.learner.forward import ForwardSettings, token_outputs

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    mask = batch.loss_mask.bool()

    def run(micro: int) -> torch.Tensor:
        out = torch.zeros(mask.shape)
        with torch.no_grad():
            for start in range(0, batch.num_sequences, micro):
                sub = batch.select(slice(start, start + micro)).trimmed()
                settings = ForwardSettings(packing=False, temperature=1.0, chunk_size=1024, fused_head=False)
                lp, _ = token_outputs(model, sub.input_ids, sub.attention_mask, settings)
                out[start : start + micro, : lp.shape[1]] = lp
        return out

    ref = run(8)
    return {f"padded 8 vs {m} per micro-batch": float((run(m) - ref)[mask].abs().max()) for m in (4, 1)}


def _variant(cfg: Any, path: str, batch: Any, reps: int) -> dict[str, Any]:
    import ray

    from grpo_dist.learner.group import LearnerGroup
    from grpo_dist.placement import RolePlacement, role_specs

    placement = RolePlacement(role_specs(cfg, "cpu")["learner"], timeout_s=120)
    group = LearnerGroup(cfg, placement=placement, model_path=path, device="cpu")
    try:
        logprobs = group.compute_logprobs(batch)
        others_changed = None
        if group.packing:
            altered = group.compute_logprobs(_altered_first(batch))
            others_changed = float((altered[1:] - logprobs[1:]).mul(batch.loss_mask[1:]).abs().max())
        settle()
        first = group.train(batch, step=1)
        seconds = []
        with MemorySampler() as memory:
            for rep in range(reps):
                settle()
                t0 = time.perf_counter()
                group.train(batch, step=rep + 2)
                seconds.append(time.perf_counter() - t0)
        infos = ray.get([a.info.remote() for a in group.actors], timeout=60)
        peaks = [peak_rss_mb(int(i["pid"])) or 0.0 for i in infos]
    finally:
        group.shutdown()
    return {
        "seconds": seconds,
        "first_grad_norm": first[LEARNER_GRAD_NORM],
        "first_loss": first[LEARNER_LOSS],
        "padding_fraction": first[LEARNER_PADDING_FRACTION] + first[LEARNER_PADDING_SAVED_FRACTION],
        "micro_batches_per_rank": first[LEARNER_MICRO_BATCHES_PER_RANK],
        "logprobs": logprobs,
        "others_changed": others_changed,
        "rank_peak_rss_mb": peaks,
        "machine_peak_added_mb": memory.peak_added_mb,
    }


def bench_packing(s: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from grpo_dist.models.gguf import ensure_smollm2

    path = ensure_smollm2()
    facts = model_facts(path)
    batch = skewed_batch(facts["vocab_size"])
    tokens = float(batch.attention_mask.sum())
    base = ["algo.kl_coef=0.0", f"data.train_batch_size={NUM_PROMPTS}", f"learner.mini_batch_size={NUM_PROMPTS}"]
    base += [f"rollout.num_generations={GROUP}", "data.max_prompt_length=64", "data.max_response_length=256"]
    base += ["model.dtype=float32", *s.overrides]
    cfgs = {name: bench_config(path, [*base, *extra]) for name, extra in VARIANTS.items()}
    runs: dict[str, dict[str, Any]] = {}
    floor = noise_floor(str(path), batch)
    with private_ray(verbose=s.verbose):
        for name, cfg in cfgs.items():
            runs[name] = _variant(cfg, str(path), batch, s.reps)
    padded = runs[PADDED]
    mask = batch.loss_mask.bool()
    norms = [r["first_grad_norm"] for r in runs.values()]
    losses = [r["first_loss"] for r in runs.values()]
    figures = []
    for name, run in runs.items():
        if name == PADDED:
            continue
        lp_diff = float((run["logprobs"] - padded["logprobs"])[mask].abs().max())
        figures.append(
            figure(
                benchmark="packing",
                model="smollm2-135m",
                name=f"learner step, {name}",
                unit="trained tokens/s",
                value=tokens / best(run["seconds"]),
                bound=tokens / best(padded["seconds"]),
                bound_name=PADDED,
                note=(
                    f"{int(tokens)} real tokens, {padded['padding_fraction']:.0%} of the padded micro-batches is "
                    f"padding; {run['micro_batches_per_rank']:.0f} vs {padded['micro_batches_per_rank']:.0f} "
                    f"micro-batches per rank; peak RSS per rank {max(run['rank_peak_rss_mb']):.0f} vs "
                    f"{max(padded['rank_peak_rss_mb']):.0f} MB; logprobs vs padded max {lp_diff:.1e} (the padded "
                    f"path against itself split otherwise: up to {max(floor.values()):.1e}); another sequence "
                    f"altered: max change {run['others_changed']:.1e}"
                ),
                details={
                    "seconds": run["seconds"],
                    "padded_seconds": padded["seconds"],
                    "logprob_max_abs_diff_vs_padded": lp_diff,
                    "others_changed_when_one_altered": run["others_changed"],
                    "rank_peak_rss_mb": run["rank_peak_rss_mb"],
                    "padded_rank_peak_rss_mb": padded["rank_peak_rss_mb"],
                    "machine_peak_added_mb": run["machine_peak_added_mb"],
                    "padded_machine_peak_added_mb": padded["machine_peak_added_mb"],
                },
            )
        )
        figures.append(
            figure(
                benchmark="packing",
                model="smollm2-135m",
                name=f"learner peak memory per rank, {name}",
                unit="MB",
                value=max(run["rank_peak_rss_mb"]),
                bound=max(padded["rank_peak_rss_mb"]),
                bound_name=PADDED,
                higher_is_better=False,
                note="resident high-water mark of each learner rank's process (model loading included)",
            )
        )
    config = {
        **facts,
        "sequences": batch.num_sequences,
        "real_tokens": tokens,
        "lengths": [int(n) for n in batch.attention_mask.sum(dim=1)],
        "first_grad_norms": dict(zip(runs, norms)),
        "first_losses": dict(zip(runs, losses)),
        "grad_norm_rel_spread": (max(norms) - min(norms)) / max(abs(min(norms)), 1e-30),
        "fp32_noise_floor": floor,
        "configs": {name: cfg.to_dict() for name, cfg in cfgs.items()},
    }
    return config, figures
