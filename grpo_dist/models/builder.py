"""Build a small causal LM and its tokenizer from scratch, saved like any Hugging Face model.

The tokenizer is a byte-level BPE trained with the ``tokenizers`` library on text of the embedded task;
digits are always split one per token (so that arithmetic is learnable digit by digit). The model is a
Llama-architecture ``LlamaForCausalLM`` with random weights drawn from a fixed seed. Everything is
deterministic from the spec: building twice gives byte-identical weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from grpo_dist.embedded import EmbeddedModelSpec

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
# A plain template: each message as "role: content" lines, then the assistant's turn.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def train_tokenizer(corpus: Iterable[str], vocab_size: int):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, clean_up_tokenization_spaces=False
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tokenizer_corpus(seed: int) -> list[str]:
    """Text the tokenizer is trained on: task problems and answers plus chat-template words."""
    import random

    from grpo_dist.tasks.arithmetic import AdditionTask

    rng = random.Random(seed)
    task = AdditionTask()
    lines = []
    for _ in range(2000):
        row = task.row(rng)
        lines.append(row["prompt"] + row["ground_truth"])
    lines += ["system: user: assistant: The answer is \\boxed{} #### Question Answer"] * 50
    return lines


def build_model(out_dir: Path, spec: EmbeddedModelSpec, extra_corpus: Sequence[str] = ()) -> Path:
    """Build tokenizer + random-init Llama model into ``out_dir`` (overwrites); returns ``out_dir``.
    ``extra_corpus``: more tokenizer training text (a task's own words, so that they get tokens of their own)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer([*tokenizer_corpus(spec.seed), *extra_corpus], spec.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
