"""A scripted policy (fixed outputs) and chat templates, for the multi-turn unit tests."""

from __future__ import annotations

import copy
from typing import Any

from grpo_dist.rollout.multi_turn import BatchedSampler, run_trajectories
from grpo_dist.rollout.trajectory import Trajectory
from grpo_dist.types import Prompt


def encode(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False).input_ids)


class Script:
    """A policy that says fixed things: turn t of every sample is ``turns[t]`` (token ids). Records the ids
    it was given at each call."""

    def __init__(self, tok: Any, turns: list[list[int]], finish: str = "stop") -> None:
        self.tok, self.turns, self.finish = tok, turns, finish
        self.received: list[list[list[int]]] = []
        self.budgets: list[list[int]] = []

    def __call__(self, trajectories: list[Trajectory], budget: list[int], seeds: list[int]):
        self.received.append([t.input_ids for t in trajectories])
        self.budgets.append(list(budget))
        out = []
        for t, room in zip(trajectories, budget):
            full = self.turns[len(t.turns)]
            ids = full[:room]
            finish = "length" if len(ids) < len(full) else self.finish  # as an engine at max_tokens
            out.append((ids, [-0.25] * len(ids), self.tok.decode(ids), finish))
        return out


def rollout(prompts: list[Prompt], *, generate: Script, **kwargs: Any) -> list[Trajectory]:
    """``run_trajectories`` with a scripted policy, batched (each call of ``generate`` one engine call)."""
    return run_trajectories(prompts, sampler=BatchedSampler(generate), **kwargs).trajectories


def calc_prompt(tok: Any, text: str = "37*48=") -> Prompt:
    return Prompt(prompt_id=7, token_ids=[tok.bos_token_id, *encode(tok, text)], text=text, ground_truth="1776")


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
FORGETFUL = (  # drops earlier assistant turns once a later one exists: history is rewritten
    "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}<|{{ m['role'] }}|>{{ m['content'] }}</s>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def chat_tok(tok: Any, template: str) -> Any:
    t = copy.deepcopy(tok)
    t.chat_template = template
    t.add_special_tokens({"eos_token": "</s>"})
    return t
