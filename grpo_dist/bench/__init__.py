"""``grpo-dist bench``: throughput of each phase against its bound, measured side by side in one run.

Every figure is a ratio of two measurements taken in the same run on the same machine:

- ``rollout``: generated tokens/s through the ``EnginePool`` (1 and 2 engines) vs a raw ``vllm.LLM`` in
  its own Ray actor with the same engine settings (in-process engine, dtype, KV cache size, prefix
  caching, logprobs mode, thread binding), on the same prompts with the same sampling.
- ``learner``: trained tokens/s of the DeepSpeed ``LearnerGroup`` (ZeRO 1, 2, 3 on 2 ranks) vs a plain
  single-process torch forward/backward/AdamW of the same model on the same token batch.
- ``sync``: seconds for ``WeightSync`` to publish the weights to every engine (``broadcast`` and
  ``object_store``) vs one raw gloo broadcast of the same number of bytes (and a raw object-store
  put + get), reported as GB/s.
- ``e2e``: samples/s of ``Controller.train_step`` on a demo-like config, with its per-phase split
  (``timing/*``), vs the ideal synchronous step: raw vLLM generate of the same prompts + one in-process
  weight reload + one plain torch train step on the generated sequences; fixed length on each model size,
  and natural (EOS) on the embedded task.
- ``trl``: samples/s of the same e2e workload vs TRL's ``GRPOTrainer`` run in a virtual environment of
  its own, in float32 and bfloat16.

Apart from e2e's natural mode, runs are in synthetic fixed-length mode (``ignore_eos``, fixed
``max_tokens``) so that every side does the same work. Each benchmark starts a private local Ray and
shuts it down afterwards. A ratio is always "grpo-dist's speed / the bound's speed": 1.0 means as fast
as the bound, below 1.0 behind it.

Layout: ``records`` (figures, ratios, JSON records, the table: pure), ``common`` (settings, models, a
private Ray), ``baselines`` (the bound of each figure, as Ray actors), one module per benchmark, ``cli``.
"""

from grpo_dist.bench.cli import main, main_bench

__all__ = ["main", "main_bench"]
