"""The learner's GPU check: one bf16 learner step, packed and padded, and the logprob memory at a 150k
vocabulary, on a machine with one GPU, PyTorch, transformers and nothing else of the stack.

Run by ``deploy/gpu-check/run.sh`` (which installs the DeepSpeed wheel and its small dependencies brought
along into a temporary directory) as ``python -m grpo_dist.bench.gpu_check --out FILE``. No Ray, no vLLM:
the learner rank is ``LearnerWorker`` itself, a DeepSpeed world of one (nccl), driven with the same
``learner.work`` cut as in a run. The model has Qwen2.5-0.5B's shapes (151,936-token vocabulary, tied
embeddings) and random weights.

It reports, as JSON:

* ``head_memory``: the extra GPU memory (peak above the inputs) of the token logprobs and their backward
  at the 150k vocabulary for ``HEAD_TOKENS`` tokens: the fused chunked head (``algo.fused_head``) against
  the naive ``log_softmax(h @ W^T)`` on full float32 logits (goal: <= 0.5x), and their largest difference;
* ``learner``: per variant (padded micro-batches of 4 sequences; packed under a token budget) the step's
  seconds, real tokens/s, MFU (``6 * parameters * real tokens`` over the GPU's dense bf16 peak), peak GPU
  memory, and the packed logprobs against the padded ones;
* the attention path used (flash-attention's varlen kernel where installed, else sdpa per sequence).

``--small`` runs the same code at toy sizes (also on a CPU, with gloo): the check of the check.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HEAD_TOKENS, HEAD_HIDDEN, HEAD_VOCAB = 8192, 896, 151_936
H200_BF16_DENSE_FLOPS = 989.4e12  # NVIDIA's H200 SXM dense BF16 tensor-core peak
QWEN25_05B = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": HEAD_VOCAB,
    "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-6,
}
SMALL = {**QWEN25_05B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
SMALL |= {"num_key_value_heads": 2, "vocab_size": 2048}


def head_memory(device: str, *, tokens: int, hidden: int, vocab: int) -> dict[str, Any]:
    """Peak extra memory of logprobs + backward: fused chunked head vs naive full float32 logits."""
    from grpo_dist.algo.fused_head import head_token_logprobs

    g = torch.Generator(device=device).manual_seed(0)
    dt = torch.bfloat16
    h0 = (torch.randn(tokens, hidden, device=device, generator=g) * 0.5).to(dt)
    w0 = (torch.randn(vocab, hidden, device=device, generator=g) * 0.02).to(dt)
    y = torch.randint(0, vocab, (tokens,), device=device, generator=g)

    def naive(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        logits = (h @ w.t()).float()
        return torch.log_softmax(logits, dim=-1).gather(-1, y[:, None]).squeeze(-1)

    def fused(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return head_token_logprobs(h, w, y, chunk_size=1024)[0]

    out: dict[str, Any] = {"tokens": tokens, "hidden": hidden, "vocab": vocab, "dtype": "bfloat16"}
    results = {}
    for name, fn in (("naive", naive), ("fused", fused)):
        h = h0.clone().requires_grad_(True)
        w = w0.clone().requires_grad_(True)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        lp = fn(h, w)
        lp.sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()
            out[f"{name}_extra_bytes"] = torch.cuda.max_memory_allocated() - base
        out[f"{name}_seconds"] = time.perf_counter() - t0
        results[name] = (lp.detach().float(), h.grad.float(), w.grad.float())
        del h, w, lp
    out["max_abs_logprob_diff"] = float((results["naive"][0] - results["fused"][0]).abs().max())
    scale = float(results["naive"][2].abs().max())
    out["max_rel_weight_grad_diff"] = float((results["naive"][2] - results["fused"][2]).abs().max()) / scale
    if device == "cuda":
        out["ratio"] = out["fused_extra_bytes"] / out["naive_extra_bytes"]
        out["goal"] = 0.5
        out["meets_goal"] = out["ratio"] <= 0.5
    return out


def skewed_lengths(num: int, *, small: bool, seed: int = 0) -> list[tuple[int, int]]:
    """(prompt, answer) lengths: most answers short, a quarter long."""
    g = torch.Generator().manual_seed(seed)
    scale = 16 if small else 1

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low // scale, high // scale + 1, (1,), generator=g))

    return [
        (draw(100, 200), draw(1000, 3000) if float(torch.rand(1, generator=g)) < 0.25 else draw(50, 300))
        for _ in range(num)
    ]


def _batch(lengths: list[tuple[int, int]], vocab: int) -> Any:
    from grpo_dist.learner.batch import TrainBatch

    g = torch.Generator().manual_seed(1)
    n, width = len(lengths), max(p + a for p, a in lengths)
    ids = torch.zeros((n, width), dtype=torch.long)
    att = torch.zeros_like(ids)
    mask = torch.zeros((n, width - 1))
    for i, (p, a) in enumerate(lengths):
        ids[i, : p + a] = torch.randint(3, vocab, (p + a,), generator=g)
        att[i, : p + a] = 1
        mask[i, p - 1 : p + a - 1] = 1.0
    return TrainBatch(ids, att, mask, torch.randn(n, generator=g), torch.zeros_like(mask))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _model_dir(shapes: dict[str, Any], root: Path) -> Path:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from grpo_dist.models.zoo import tiny_tokenizer

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**shapes, bos_token_id=1, eos_token_id=2, pad_token_id=0))
    path = root / "model"
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)  # any tokenizer: the check feeds token ids directly
    AutoTokenizer.from_pretrained(path)
    return path


def learner_steps(device: str, *, small: bool, root: Path) -> dict[str, Any]:
    """One warm-up and one timed train step per variant on the same batch, from the same weights."""
    from grpo_dist.config import apply_overrides, parse_config
    from grpo_dist.learner.work import MicroBatching, split_step
    from grpo_dist.learner.worker import LearnerWorker

    shapes = SMALL if small else QWEN25_05B
    path = _model_dir(shapes, root)
    lengths = skewed_lengths(16 if small else 64, small=small)
    batch = _batch(lengths, shapes["vocab_size"])
    real_tokens = float(batch.attention_mask.sum())
    params = 0  # set from the learner rank below
    variants = {
        "padded, 4 sequences per micro-batch": (["learner.packing=false", "learner.micro_batch_size=4"], None),
        "packed, 16k-token budget": (["learner.packing=true"], 16384 // (16 if small else 1)),
    }
    out: dict[str, Any] = {"real_tokens": real_tokens, "sequences": batch.num_sequences, "variants": {}}
    logprobs = {}
    for name, (extra, budget) in variants.items():
        overrides = [
            f"model.path={path}",
            f"model.dtype={'bfloat16' if device == 'cuda' else 'float32'}",
            f"cluster.device={device}",
            "learner.num_ranks=1",
            "learner.zero_stage=1",
            "algo.kl_coef=0.0",
            "data.train_batch_size=1",
            "learner.mini_batch_size=1",
            f"rollout.num_generations={batch.num_sequences}",
            "data.max_prompt_length=256",
            f"data.max_response_length={max(a for _, a in lengths)}",
            *extra,
        ]
        if budget:
            overrides.append(f"learner.max_tokens_per_micro_batch={budget}")
        cfg = parse_config(apply_overrides({}, overrides))
        worker = LearnerWorker(cfg=cfg, rank=0, world_size=1, model_path=str(path), device=device)
        info = worker.setup("127.0.0.1", _free_port())
        params = info["num_params"]
        cut = MicroBatching(budget, None if budget else 4, padded=not worker.packing)
        (work,) = split_step(batch, num_ranks=1, num_minibatches=1, cut=cut, loss_agg_mode=cfg.algo.loss_agg_mode)
        logprobs[name] = worker.compute_logprobs(work)
        worker.train(work, step=1)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        worker.train(work, step=2)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        row = {
            "seconds": seconds,
            "real_tokens_per_s": real_tokens / seconds,
            "micro_batches": work.num_micro_batches,
            "attn_implementation": info["attn_implementation"],
            "packing": info["packing"],
        }
        if device == "cuda":
            row["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
            row["mfu"] = 6 * params * real_tokens / seconds / H200_BF16_DENSE_FLOPS
        out["variants"][name] = row
        _close(worker)
    padded, packed = logprobs.values()
    mask = batch.loss_mask.bool()
    out["max_abs_logprob_diff_packed_vs_padded"] = float((packed - padded)[mask].abs().max())
    out["mean_logprob_padded"] = float(padded[mask].mean())
    out["params"] = params
    out["mfu_formula"] = "6 * parameters * real tokens / seconds / 989.4e12 (H200 dense bf16)"
    return out


def _close(worker: Any) -> None:
    """Free a variant's engine; the process group stays for the next (DeepSpeed caches its groups)."""
    worker.engine = None
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="JSON file to write")
    p.add_argument("--small", action="store_true", help="toy sizes (a check of the check; runs on a CPU)")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    os.environ.setdefault("DS_ACCELERATOR", device)  # before DeepSpeed is imported
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "flash_attn": _has_flash_attn(),
    }
    t0 = time.perf_counter()
    head = (256, 64, 4096) if args.small else (HEAD_TOKENS, HEAD_HIDDEN, HEAD_VOCAB)
    report["head_memory"] = head_memory(device, tokens=head[0], hidden=head[1], vocab=head[2])
    with tempfile.TemporaryDirectory(prefix="gd-gpu-check-") as tmp:
        report["learner"] = learner_steps(device, small=args.small, root=Path(tmp))
    report["wall_s"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def _has_flash_attn() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


if __name__ == "__main__":
    raise SystemExit(main())
