"""The DeepSpeed learner group on its own: a non-finite loss skips the update (weights untouched) and is
counted; a finite one moves the weights."""

from __future__ import annotations

import pytest
import torch

from tests.integration.conftest import TINY_CONFIG

pytestmark = pytest.mark.slow


def _batch(tokenizer, num: int, *, nan: bool):  # -> TrainBatch
    from grpo_dist.learner.batch import collate
    from grpo_dist.types import Completion, Prompt, RolloutGroup, ScoredGroup

    groups = []
    for p in range(num // 2):
        prompt = Prompt(prompt_id=p, token_ids=[tokenizer.bos_token_id, *tokenizer(f"{p}+1=").input_ids], text="")
        comps = [Completion(tokenizer(str(p + d)).input_ids, [0.0], "stop", "") for d in (1, 2)]
        groups.append(ScoredGroup(RolloutGroup(prompt, comps, 0, 0, p), [1.0, 0.0], {"r": [1.0, 0.0]}, [True, True]))
    adv = torch.tensor([1.0, -1.0] * (num // 2))
    if nan:
        adv[0] = float("nan")
    return collate(groups, adv, pad_token_id=tokenizer.pad_token_id)


def test_nonfinite_loss_skips_the_update(local_ray: None, tiny_assets: dict[str, str]) -> None:
    from transformers import AutoTokenizer

    from grpo_dist.config import load_config
    from grpo_dist.learner.group import LearnerGroup
    from grpo_dist.placement import RolePlacement, role_specs

    cfg = load_config(
        TINY_CONFIG,
        [
            f"model.path={tiny_assets['model']}",
            "learner.zero_stage=2",
            "algo.kl_coef=0.0",
            "learner.lr=1e-2",
            "learner.mini_batch_size=4",
        ],
    )
    tok = AutoTokenizer.from_pretrained(tiny_assets["model"])
    placement = RolePlacement(role_specs(cfg, "cpu")["learner"], timeout_s=60)
    group = LearnerGroup(cfg, placement=placement, model_path=tiny_assets["model"], device="cpu")
    try:
        probe = [[tok.bos_token_id, *tok("12+3=15").input_ids]]
        before = group.sequence_token_logprobs(probe)
        n = cfg.data.train_batch_size * cfg.rollout.num_generations
        bad = group.train(_batch(tok, n, nan=True), step=1)
        assert bad["learner/num_skipped_updates"] == 1.0
        assert bad["consecutive_nonfinite"] == 1.0
        assert group.sequence_token_logprobs(probe) == before  # bit-identical: nothing was applied
        good = group.train(_batch(tok, n, nan=False), step=2)
        assert good["learner/num_skipped_updates"] == 0.0
        assert good["consecutive_nonfinite"] == 0.0
        assert torch.isfinite(torch.tensor(good["learner/grad_norm"]))
        assert group.sequence_token_logprobs(probe) != before
    finally:
        group.shutdown()


def test_real_deepspeed_update_is_the_same_for_any_cut_and_rank_count(
    local_ray: None, tiny_assets: dict[str, str]
) -> None:
    """ZeRO-2 with unmanaged accumulation over a varying number of micro-batches: one rank with one
    sequence per padded pass, and two ranks packed under a token budget, report the same loss and the same
    pre-clip gradient norm for the same batch (the update DeepSpeed applies is then the same)."""
    from transformers import AutoTokenizer

    from grpo_dist.config import load_config
    from grpo_dist.learner.group import LearnerGroup
    from grpo_dist.placement import RolePlacement, role_specs

    tok = AutoTokenizer.from_pretrained(tiny_assets["model"])
    base = [
        f"model.path={tiny_assets['model']}",
        "learner.zero_stage=2",
        "algo.kl_coef=0.0",
        "learner.mini_batch_size=4",
    ]
    cuts = {
        "1 rank, padded, 1 sequence per pass": [
            "learner.num_ranks=1",
            "learner.packing=false",
            "learner.micro_batch_size=1",
        ],
        "2 ranks, packed, 24-token budget": ["learner.num_ranks=2", "learner.ppo_max_token_len_per_gpu=24"],
    }
    results = {}
    for name, extra in cuts.items():
        cfg = load_config(TINY_CONFIG, [*base, *extra])
        placement = RolePlacement(role_specs(cfg, "cpu")["learner"], timeout_s=60)
        group = LearnerGroup(cfg, placement=placement, model_path=tiny_assets["model"], device="cpu")
        try:
            n = cfg.data.train_batch_size * cfg.rollout.num_generations
            results[name] = group.train(_batch(tok, n, nan=False), step=1)
        finally:
            group.shutdown()
    one, two = results.values()
    assert two["learner/micro_batches_per_rank"] < one["learner/micro_batches_per_rank"]
    assert one["learner/grad_norm"] > 0
    assert two["learner/grad_norm"] == pytest.approx(one["learner/grad_norm"], rel=1e-5)
    assert two["learner/loss"] == pytest.approx(one["learner/loss"], rel=1e-5, abs=1e-8)
