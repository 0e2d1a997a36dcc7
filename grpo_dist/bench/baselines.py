"""The bounds every figure is measured against, each in its own Ray actor: raw vLLM, plain torch, a raw
gloo broadcast, a raw object-store transfer, and the ideal synchronous step."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from typing import Any


def _llm(*, model_path: str, dtype: str, max_model_len: int, seed: int, kv_cache_gib: float, enforce_eager: bool):
    """A raw ``vllm.LLM`` with the engine settings grpo-dist's engines use on CPU."""
    from vllm import LLM

    from grpo_dist.rollout.engine import llm_kwargs

    return LLM(
        **llm_kwargs(
            model_path=model_path,
            dtype=dtype,
            device="cpu",
            max_model_len=max_model_len,
            seed=seed,
            kv_cache_gib=kv_cache_gib,
            enforce_eager=enforce_eager,
        )
    )


def _requests(
    prompts: list[list[int]],
    n: int,
    max_tokens: int,
    temperature: float,
    *,
    per_sample: bool,
    seed: int,
    seeds: Sequence[int] | None = None,
    ignore_eos: bool = True,
):
    """``(requests, params)`` for ``llm.generate``: one seeded request per completion (``per_sample``, as the
    grpo-dist engine asks; ``seeds`` gives each completion's seed, prompt by prompt, else they derive from
    ``seed``) or one request with ``n`` completions per prompt (the plain vLLM way)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    common = {"max_tokens": max_tokens, "temperature": temperature, "ignore_eos": ignore_eos, "logprobs": 0}
    if per_sample or seeds is not None:
        reqs = [TokensPrompt(prompt_token_ids=p) for p in prompts for _ in range(n)]
        if seeds is None:
            seeds = [seed * 1_000_003 + k for k in range(len(reqs))]
        if len(seeds) != len(reqs):
            raise ValueError(f"{len(seeds)} seeds for {len(reqs)} completions")
        return reqs, [SamplingParams(n=1, seed=int(x), **common) for x in seeds]
    return [TokensPrompt(prompt_token_ids=p) for p in prompts], SamplingParams(n=n, **common)


class RawVllm:
    """The rollout bound: ``vllm.LLM.generate`` timed inside its own process."""

    def __init__(self, **engine: Any) -> None:
        self.model_path = engine["model_path"]
        self.llm = _llm(**engine)

    def ready(self) -> int:
        return os.getpid()

    def reload_seconds(self, reps: int) -> list[float]:
        """Seconds of vLLM's own in-process weight reload (``reload_weights`` from tensors already in this
        process, then the prefix-cache reset grpo-dist also does): the engine-side floor of a sync."""
        from safetensors.torch import load_file

        state = load_file(os.path.join(self.model_path, "model.safetensors"))
        times = []
        for _ in range(reps + 1):  # the first is a warm-up
            t0 = time.perf_counter()
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(state.items())})
            self.llm.reset_prefix_cache()
            times.append(time.perf_counter() - t0)
        return times[1:]

    def generate(
        self, prompts: list[list[int]], n: int, max_tokens: int, temperature: float, per_sample: bool, seed: int
    ) -> dict[str, float]:
        reqs, params = _requests(prompts, n, max_tokens, temperature, per_sample=per_sample, seed=seed)
        t0 = time.perf_counter()
        outs = self.llm.generate(reqs, params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "tokens": float(sum(len(o.token_ids) for out in outs for o in out.outputs))}


def _plain_train_step(
    model: Any, optimizer: Any, batch: Any, micro: int, max_grad_norm: float, *, packed_tokens: int | None = None
) -> None:
    """One optimizer step of a plain policy-gradient loss over ``batch``: in padded micro-batches of
    ``micro`` sequences, or with ``packed_tokens`` in packed rows of at most that many tokens (the learner's
    forward path, ``learner.forward``, in this one process)."""
    import torch

    from grpo_dist.learner.forward import ForwardSettings, token_outputs
    from grpo_dist.learner.microbatch_plan import plan_micro_batches

    n = batch.input_ids.shape[0]
    denominator = float(batch.loss_mask.sum())
    if packed_tokens is None:
        cuts = [list(range(start, min(start + micro, n))) for start in range(0, n, micro)]
    else:
        lengths = [int(x) for x in batch.attention_mask.sum(dim=1)]
        (cuts,) = plan_micro_batches(lengths, num_ranks=1, max_tokens=packed_tokens)
    for rows in cuts:
        sub = batch.select(torch.tensor(rows, dtype=torch.long)).trimmed()
        if packed_tokens is None:
            ids, att = sub.input_ids, sub.attention_mask
            logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits[:, :-1].float()
            lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        else:
            settings = ForwardSettings(packing=True, temperature=1.0, chunk_size=1024)
            lp, _ = token_outputs(model, sub.input_ids, sub.attention_mask, settings)
        # the clipped-ratio surrogate at ratio 1 has this gradient: advantage x d logprob
        ratio_ = torch.exp(lp - lp.detach())
        loss = -(sub.advantages[:, None] * ratio_ * sub.loss_mask).sum() / denominator
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class PlainTorch:
    """The learner bound: one process, all cores, ``AutoModelForCausalLM`` + AdamW."""

    def __init__(self, *, model_path: str, lr: float, threads: int, seed: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        self.model.config.use_cache = False
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr)

    def train(self, batch: Any, micro: int, max_grad_norm: float) -> float:
        t0 = time.perf_counter()
        _plain_train_step(self.model, self.optimizer, batch, micro, max_grad_norm)
        return time.perf_counter() - t0


class GlooPeer:
    """The broadcast bound: one gloo broadcast of a single flat tensor between plain processes."""

    def address(self) -> tuple[str, int]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return "127.0.0.1", int(s.getsockname()[1])

    def join(self, host: str, port: int, rank: int, world_size: int, timeout_s: float = 120.0) -> bool:
        import datetime

        import torch.distributed as dist

        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=False)
        self.group = dist.ProcessGroupGloo(store, rank, world_size, timeout)
        self.rank = rank
        return True

    def broadcast(self, numel: int, reps: int) -> list[float]:
        import torch
        import torch.distributed as dist

        buf = torch.ones(numel) if self.rank == 0 else torch.empty(numel)
        flag = torch.zeros(1)
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        times = []
        for _ in range(reps + 1):  # the first is a warm-up
            self.group.broadcast([flag], opts).wait()  # line the peers up
            t0 = time.perf_counter()
            self.group.broadcast([buf], opts).wait()
            times.append(time.perf_counter() - t0)
        return times[1:]


class ObjectPeer:
    """The object-store bound: one ``ray.put`` of a flat array, one ``ray.get`` + copy into the receiver's
    own buffer (what a gloo broadcast also does: the bytes end in memory the receiver owns)."""

    def __init__(self, nbytes: int) -> None:
        import numpy as np

        self.buf = np.ones(nbytes, dtype=np.uint8)

    def put(self) -> tuple[list[Any], float]:
        import ray

        t0 = time.perf_counter()
        ref = ray.put(self.buf)
        return [ref], time.perf_counter() - t0

    def get(self, refs: list[Any]) -> float:
        import numpy as np
        import ray

        t0 = time.perf_counter()
        np.copyto(self.buf, ray.get(refs[0]))
        return time.perf_counter() - t0


class IdealStep:
    """The ideal synchronous step, in one process on all cores: raw vLLM generate, one plain torch train
    step on the generated sequences, one in-process weight reload (no transfer at all)."""

    def __init__(
        self, *, engine: dict[str, Any], lr: float, threads: int, seed: int, packed_tokens: int | None = None
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.llm = _llm(**engine)
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.packed_tokens = packed_tokens
        attn = None
        if packed_tokens is not None:
            from grpo_dist.learner.varlen_attention import register

            attn = register()
        self.model = AutoModelForCausalLM.from_pretrained(
            engine["model_path"], dtype=torch.float32, attn_implementation=attn
        )
        self.model.config.use_cache = False
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr)

    def ready(self) -> int:
        return os.getpid()

    def step(
        self,
        prompts: list[list[int]],
        n: int,
        max_tokens: int,
        temperature: float,
        micro: int,
        max_grad_norm: float,
        pad_id: int,
        seeds: Sequence[int] | None = None,
        ignore_eos: bool = True,
    ) -> dict[str, float]:
        """One step; with ``seeds`` (natural mode) the same seeded requests as grpo-dist's engines send."""
        import torch

        from grpo_dist.learner.batch import TrainBatch

        reqs, params = _requests(
            prompts, n, max_tokens, temperature, per_sample=False, seed=0, seeds=seeds, ignore_eos=ignore_eos
        )
        t0 = time.perf_counter()
        outs = self.llm.generate(reqs, params, use_tqdm=False)
        t1 = time.perf_counter()
        rows = [
            (len(out.prompt_token_ids), list(out.prompt_token_ids) + list(o.token_ids))
            for out in outs
            for o in out.outputs
        ]
        width = max(len(r) for _, r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        mask = torch.zeros((len(rows), width - 1))
        for i, (plen, r) in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            att[i, : len(r)] = 1
            mask[i, plen - 1 : len(r) - 1] = 1.0
        adv = torch.randn(len(rows))
        batch = TrainBatch(ids, att, mask, adv, torch.zeros_like(mask))
        _plain_train_step(self.model, self.optimizer, batch, micro, max_grad_norm, packed_tokens=self.packed_tokens)
        t2 = time.perf_counter()
        weights = ((k, v.detach()) for k, v in self.model.named_parameters())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()
        t3 = time.perf_counter()
        return {
            "generate_s": t1 - t0,
            "train_s": t2 - t1,
            "reload_s": t3 - t2,
            "step_s": t3 - t0,
            "samples": float(len(rows)),
            "tokens": float(sum(len(o.token_ids) for out in outs for o in out.outputs)),
        }
