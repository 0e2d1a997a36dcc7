"""The update does not depend on how a step's batch is cut: any micro-batch budget, packed or padded, over
any number of ranks gives the gradient one process computes on the whole mini-batch, for every
``loss_agg_mode``. Ranks are simulated in-process (each a worker with its world size) and their gradients
averaged as DeepSpeed's all-reduce does; the metrics are combined as ``LearnerGroup`` combines them."""

from __future__ import annotations

import pytest
import torch

from grpo_dist.config import apply_overrides, parse_config
from grpo_dist.learner.batch import TrainBatch
from grpo_dist.learner.group import combine_rank_metrics
from grpo_dist.learner.work import MicroBatching, merge_rows, split_step
from grpo_dist.learner.worker import LearnerWorker
from tests.unit.fake_engine import FakeEngine

LENGTHS = [9, 3, 6, 2, 8, 4, 7, 5]  # prompt of 2 tokens, then the response
MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def _batch() -> TrainBatch:
    g = torch.Generator().manual_seed(0)
    n, width = len(LENGTHS), max(LENGTHS)
    ids = torch.randint(0, 7, (n, width), generator=g)
    attention = (torch.arange(width)[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    ids = ids * attention
    mask = torch.zeros(n, width - 1)
    for i, length in enumerate(LENGTHS):
        mask[i, 1 : length - 1] = 1.0
    mask[3] = 0.0  # a sample the reward policy masked out: it must count for nothing anywhere
    adv = torch.randn(n, generator=g)
    old = -torch.rand(n, width - 1, generator=g) * mask
    return TrainBatch(ids, attention, mask, adv, old.clone(), old_logprobs=old)


def _gradient(mode: str, num_ranks: int, cut: MicroBatching) -> tuple[torch.Tensor, dict[str, float]]:
    cfg = parse_config(
        apply_overrides(
            {},
            [
                f"learner.num_ranks={num_ranks}",
                "data.train_batch_size=4",
                "learner.mini_batch_size=2",  # two mini-batches: two optimizer steps, gradients summed here
                "rollout.num_generations=2",
                "algo.kl_coef=0",
                f"algo.loss_agg_mode={mode}",
                "data.max_response_length=8",
            ],
        )
    )
    works = split_step(_batch(), num_ranks=num_ranks, num_minibatches=2, cut=cut, loss_agg_mode=mode)
    total, metrics = None, []
    for rank, work in enumerate(works):
        worker = LearnerWorker(cfg=cfg, rank=rank, world_size=num_ranks, model_path="unused", device="cpu")
        worker.engine = FakeEngine()
        worker._global_mismatch = lambda m: m.metrics()  # type: ignore[method-assign]  # one process: no all-reduce
        metrics.append(worker.train(work, step=1))
        grad = torch.cat([p.grad.flatten() for p in worker.engine.module.parameters()])
        total = grad if total is None else total + grad
    assert total is not None
    return total / num_ranks, combine_rank_metrics(metrics)  # DeepSpeed averages the ranks' gradients


CUTS = [
    MicroBatching(max_tokens=None, max_sequences=1, padded=True),
    MicroBatching(max_tokens=None, max_sequences=3, padded=False),
    MicroBatching(max_tokens=10, max_sequences=None, padded=False),
    MicroBatching(max_tokens=12, max_sequences=None, padded=True),
]


@pytest.mark.parametrize("mode", MODES)
def test_gradient_and_loss_are_the_same_for_every_cut_and_rank_count(mode: str) -> None:
    whole = MicroBatching(max_tokens=None, max_sequences=len(LENGTHS), padded=True)
    ref, ref_metrics = _gradient(mode, 1, whole)
    assert ref.abs().max() > 0
    for num_ranks in (1, 2, 3):
        for cut in CUTS:
            got, metrics = _gradient(mode, num_ranks, cut)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7, msg=f"{num_ranks} ranks, {cut}")
            loss, ref_loss = metrics["learner/loss"], ref_metrics["learner/loss"]
            assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-7), (num_ranks, cut)
            assert metrics["learner/loss_tokens"] == ref_metrics["learner/loss_tokens"]


def test_a_rank_without_sequences_runs_zero_weight_passes() -> None:
    # 8 sequences, 2 mini-batches of 4 over 5 ranks: one rank per mini-batch holds nothing and runs a placeholder
    works = split_step(_batch(), num_ranks=5, num_minibatches=2, cut=CUTS[0], loss_agg_mode="token-mean")
    assert {len(mini) for w in works for mini in w.micro_batches} == {1}  # every rank: one pass per mini-batch
    assert any(rows == [] for w in works for mini in w.micro_batches for rows in mini)
    ref, _ = _gradient("token-mean", 1, CUTS[0])
    got, _ = _gradient("token-mean", 5, CUTS[0])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


def test_logprob_rows_come_back_in_the_step_order() -> None:
    batch = _batch()
    works = split_step(batch, num_ranks=3, num_minibatches=2, cut=CUTS[2], loss_agg_mode="token-mean")
    assert sorted(r for w in works for r in w.rows) == list(range(len(LENGTHS)))
    parts = [w.batch.input_ids[:, 1:].float() for w in works]  # each rank returns its rows
    merged = merge_rows(parts, works, batch.num_sequences, batch.input_ids.shape[1] - 1)
    assert torch.equal(merged, batch.input_ids[:, 1:].float())
