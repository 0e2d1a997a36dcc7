"""`init-model`: deterministic from its seed, and loadable by transformers and by vLLM like a hub model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_dist.embedded import EMBEDDED_MODEL
from grpo_dist.models.warmstart import WarmStartSpec

pytestmark = pytest.mark.slow

QUICK = WarmStartSpec(num_steps=8, batch_size=16)


def _build(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from grpo_dist.models.assets import ensure_embedded_model

    monkeypatch.setenv("GRPO_DIST_CACHE", str(cache))
    return ensure_embedded_model(EMBEDDED_MODEL, warm=QUICK)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    with pytest.MonkeyPatch.context() as mp:
        first = _build(tmp_path_factory.mktemp("cache-a"), mp)
        second = _build(tmp_path_factory.mktemp("cache-b"), mp)
    return first, second


def test_build_is_deterministic(built: tuple[Path, Path]) -> None:
    first, second = built
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert not (first / "base").exists()  # the random-init intermediate is not left behind


def test_loads_in_transformers(built: tuple[Path, Path]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = built[0]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = torch.tensor([[tok.bos_token_id, *tok("12+34=", add_special_tokens=False).input_ids]])
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.shape[1]
    assert tok.decode(tok("12+34=57", add_special_tokens=False).input_ids) == "12+34=57"
    assert json.loads((path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


_VLLM_SCRIPT = """
import sys
from vllm import LLM, SamplingParams
llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, kv_cache_memory_bytes=64 << 20,
          max_model_len=64, seed=0)
out = llm.generate(["12+34="], SamplingParams(max_tokens=4, temperature=0.0), use_tqdm=False)
print("VLLM_OK", len(out[0].outputs[0].token_ids))
"""


def test_loads_in_vllm(built: tuple[Path, Path]) -> None:
    env = os.environ | {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "TORCHDYNAMO_DISABLE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }
    if not _vllm_available():
        pytest.skip("vLLM is not installed")
    result = subprocess.run(
        [sys.executable, "-c", _VLLM_SCRIPT, str(built[0])], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "VLLM_OK" in result.stdout


def _vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None
