"""The tool-calling recipe's policy: the embedded architecture, warm-started to call the calculator some of
the time.

As for the embedded default (``warmstart``), GRPO needs a policy that is weak but not hopeless. On
``a*b=`` with two 2-digit operands, a fraction ``direct_fraction`` of the demonstrations writes the
product at once, which a model this small cannot compute in one step (it learns to guess the digits); the
others ask ``<calculator>a*b</calculator>``, read ``<result>p</result>`` and copy ``p``. The model starts
out calling the calculator about as often as the demonstrations did, and only the reward tells it that
calling it is what gets products right: the recipe measures how fast GRPO makes the call a habit.

The demonstrations are made by the rollout's own code: ``run_trajectories`` with the real ``ToolEnv`` and
``PlainRenderer``, driven by a scripted policy. The warm start therefore sees exactly the token layout the
engines will produce (the environment's tokens are the renderer's, and stay out of the loss as they do in
training), and the tokenizer is trained with the tool's tags so that they get tokens of their own.
"""

from __future__ import annotations

import logging
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpo_dist.embedded import EMBEDDED_MODEL, EmbeddedModelSpec
from grpo_dist.models.out_dir import write_model_dir
from grpo_dist.models.warmstart import Example, WarmStartSpec, fit
from grpo_dist.types import Prompt

logger = logging.getLogger(__name__)

TOOL_CORPUS = ["<calculator>37*48</calculator><result>1776</result>1776"] * 50
"""Tokenizer text for the tags, so that ``<calculator>`` is three tokens rather than twelve bytes."""

MAX_PROMPT_TOKENS = 64


@dataclass(frozen=True)
class ToolWarmStartSpec:
    direct_fraction: float = 0.7
    """Fraction of demonstrations that answer without the calculator."""
    warm: WarmStartSpec = field(default_factory=lambda: WarmStartSpec(num_steps=600))


def calculator_script(prompt: Prompt, direct: bool) -> list[str]:
    """The demonstration's model turns for ``prompt`` (a row of ``MultiplicationTask``)."""
    info = prompt.extra_info
    if direct:
        return [str(prompt.ground_truth)]
    return [f"<calculator>{info['a']}{info['op']}{info['b']}</calculator>", str(prompt.ground_truth)]


def calculator_demonstrations(
    prompts: list[Prompt], tokenizer: Any, *, direct_fraction: float, seed: int
) -> list[Example]:
    """One demonstration per prompt, through the rollout's trajectory code: ``(ids, loss mask)`` from the
    prompt's ``<bos>`` on, the model's turns in the loss (a final answer ends with ``<eos>``)."""
    from grpo_dist.envs.tools import ToolEnv
    from grpo_dist.rollout.multi_turn import BatchedSampler, run_trajectories
    from grpo_dist.rollout.trajectory import Budgets, PlainRenderer

    rng = random.Random(seed)
    scripts = [calculator_script(p, rng.random() < direct_fraction) for p in prompts]

    def scripted(trajectories, budgets, seeds):
        out = []
        for t in trajectories:
            script = scripts[t.index]
            text = script[len(t.turns)]
            last = len(t.turns) == len(script) - 1
            ids = list(tokenizer(text, add_special_tokens=False).input_ids) + ([tokenizer.eos_token_id] if last else [])
            out.append((ids, [0.0] * len(ids), text, "stop"))
        return out

    rollout = run_trajectories(
        prompts,
        sampler=BatchedSampler(scripted),
        make_env=lambda: ToolEnv(tools=["calculator"]),
        renderer=PlainRenderer(tokenizer),
        budgets=Budgets(max_turns=2, max_total_tokens=256),
    )
    examples = []
    for t in rollout.trajectories:
        if len(t.turns) != len(scripts[t.index]):
            raise RuntimeError(f"row {t.prompt.prompt_id}: the demonstration ended after {len(t.turns)} turn(s)")
        examples.append(([*t.prompt.token_ids, *t.token_ids], [0] * len(t.prompt.token_ids) + t.loss_mask))
    return examples


def build_calculator_model(
    out_dir: Path,
    train_file: Path,
    spec: ToolWarmStartSpec = ToolWarmStartSpec(),
    model_spec: EmbeddedModelSpec = EMBEDDED_MODEL,
) -> dict[str, float]:
    """Build the recipe's model into the new directory ``out_dir`` from the problems of ``train_file`` (the
    training split: the held-out problems must stay unseen)."""
    from grpo_dist.data import load_rows
    from grpo_dist.data.prompts import build_prompts
    from grpo_dist.models.builder import build_model

    stats: dict[str, float] = {}

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        base = tmp / "base"
        build_model(base, model_spec, extra_corpus=TOOL_CORPUS)
        tokenizer = AutoTokenizer.from_pretrained(base)
        rows, _ = load_rows([str(train_file)])
        prompts, _ = build_prompts(rows, tokenizer, max_prompt_length=MAX_PROMPT_TOKENS, apply_chat_template="never")
        bad = [p.prompt_id for p in prompts if not {"a", "b", "op"} <= p.extra_info.keys()]
        if bad:
            raise ValueError(
                f"{train_file}: row {bad[0]} has no extra_info a, op, b (write it with "
                "`grpo-dist write-data multiplication`)"
            )
        examples = calculator_demonstrations(
            prompts, tokenizer, direct_fraction=spec.direct_fraction, seed=spec.warm.seed
        )
        stats.update(fit(base, tmp, examples, spec.warm))
        shutil.rmtree(base)

    write_model_dir(out_dir, build)
    logger.info(
        "calculator model built in %s: warm start loss %.3f in %.0f s", out_dir, stats["loss"], stats["seconds"]
    )
    return stats
