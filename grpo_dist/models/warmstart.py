"""Supervised warm start on noisy demonstrations: a policy that is weak but not hopeless.

A random-init model cannot be taught arithmetic by a 0/1 reward in minutes: it never samples a right
answer. So the embedded default first learns the task's *format* and its arithmetic from
demonstrations in which a fixed fraction of the answers are wrong in a systematic way (the true sum
plus one). The model ends up putting most of its mass on two candidate answers, the right one and the
off-by-one, preferring the wrong one as often as the demonstrations did; only the reward can tell it
which is right. That is the gap GRPO closes in the demo.

Plain single-process torch on the training split's prompts (never the held-out ones); deterministic
from the seed.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmStartSpec:
    num_steps: int = 1200
    batch_size: int = 128
    lr: float = 3e-3
    wrong_fraction: float = 0.6
    """Fraction of demonstrations whose answer is the sum plus one."""
    seed: int = 0


def noisy_answer(ground_truth: str, rng: random.Random, wrong_fraction: float) -> str:
    return str(int(ground_truth) + 1) if rng.random() < wrong_fraction else ground_truth


Example = tuple[list[int], list[int]]
"""A demonstration: token ids from ``<bos>`` on, and a loss mask (1 on the tokens the model must learn)."""


def answer_examples(tokenizer, prompts: list[str], answers: list[str]) -> list[Example]:
    """``<bos> prompt answer <eos>``, with the answer and eos in the loss."""
    out = []
    for prompt, answer in zip(prompts, answers, strict=True):
        p = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False).input_ids]
        a = [*tokenizer(answer, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
        out.append((p + a, [0] * len(p) + [1] * len(a)))
    return out


def _padded(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[N, L]`` ids and float loss masks."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.float32)
    for i, (row, m) in enumerate(examples):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(m)] = torch.tensor(m, dtype=torch.float32)
    return ids, mask


def warm_start(model_dir: Path, out_dir: Path, rows: list[dict], spec: WarmStartSpec) -> dict[str, float]:
    """Fine-tune the model in ``model_dir`` on noisy demonstrations of ``rows``; save to ``out_dir``."""
    from transformers import AutoTokenizer

    rng = random.Random(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    answers = [noisy_answer(r["ground_truth"], rng, spec.wrong_fraction) for r in rows]
    return fit(model_dir, out_dir, answer_examples(tokenizer, [r["prompt"] for r in rows], answers), spec)


def fit(model_dir: Path, out_dir: Path, examples: list[Example], spec: WarmStartSpec) -> dict[str, float]:
    """Supervised fine-tuning of the model in ``model_dir`` on ``examples`` (masked next-token loss, AdamW
    with warmup and linear decay); the model and tokenizer are saved to ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids, mask = _padded(examples, tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50) * (1 - s / spec.num_steps))
    generator = torch.Generator().manual_seed(spec.seed)
    model.train()
    start = time.perf_counter()
    loss_value = float("nan")
    for step in range(spec.num_steps):
        index = torch.randint(0, ids.shape[0], (spec.batch_size,), generator=generator)
        batch, m = ids[index], mask[index]
        logits = model(input_ids=batch, attention_mask=(batch != tokenizer.pad_token_id) | (m > 0)).logits
        lp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, batch[:, 1:, None])[..., 0]
        loss = -(lp * m[:, 1:]).sum() / m[:, 1:].sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        loss_value = loss.item()
        if step % 200 == 0:
            logger.info("warm start step %d/%d loss %.3f", step, spec.num_steps, loss_value)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return {"loss": loss_value, "seconds": time.perf_counter() - start}
