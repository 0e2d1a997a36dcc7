#!/usr/bin/env bash
# Fetch what the learner's GPU check needs beyond PyTorch and transformers, for a machine that reaches no
# package registry: the DeepSpeed 0.19.8 wheel (built here from its source package) and the small wheels
# it and grpo-dist's config need, for CPython 3.12 on x86-64 Linux (about 7 MB in all). Run from anywhere;
# writes deploy/gpu-check/wheels/ (git-ignored). Then carry that folder along and run run.sh there.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-$here/../../.venv/bin/python}"
out="$here/wheels"
rm -rf "$out" && mkdir -p "$out"
"$py" -m pip download -q --dest "$out" --only-binary=:all: --no-deps --implementation cp --python-version "${PY_VERSION:-3.12}" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  einops hjson msgpack ninja py-cpuinfo psutil pydantic==2.14.4 pydantic-core==2.50.5 annotated-types \
  typing-inspection pyyaml
"$py" -m pip wheel -q --no-deps --wheel-dir "$out" deepspeed==0.19.8
du -sh "$out"
