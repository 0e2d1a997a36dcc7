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
        before = group.sequence_logprobs(probe)
        n = cfg.data.train_batch_size * cfg.rollout.num_generations
        bad = group.train(_batch(tok, n, nan=True), step=1)
        assert bad["num_skipped_updates"] == 1.0
        assert bad["consecutive_nonfinite"] == 1.0
        assert group.sequence_logprobs(probe) == before  # bit-identical: nothing was applied
        good = group.train(_batch(tok, n, nan=False), step=2)
        assert good["num_skipped_updates"] == 0.0
        assert good["consecutive_nonfinite"] == 0.0
        assert torch.isfinite(torch.tensor(good["grad_norm"]))
        assert group.sequence_logprobs(probe) != before
    finally:
        group.shutdown()
