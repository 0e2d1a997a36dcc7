"""grpo-dist: distributed GRPO training of language models on Ray, vLLM and DeepSpeed."""

__version__ = "0.1.0"
