#!/usr/bin/env bash
# The learner's GPU check (grpo_dist/bench/gpu_check.py) on a machine with one GPU, PyTorch, transformers
# and no DeepSpeed, Ray or vLLM: unpacks the wheels bundle.sh fetched into a temporary directory (a wheel is
# a zip; no pip or registry needed), then runs the check with a deadline. Usage: run.sh OUT.json [--small]
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:?usage: run.sh OUT.json [--small]}"
shift
wheels=deploy/gpu-check/wheels
ls "$wheels"/deepspeed-*.whl >/dev/null 2>&1 || { echo "no wheels in $wheels: run deploy/gpu-check/bundle.sh first" >&2; exit 2; }
site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT
for w in "$wheels"/*.whl; do python -m zipfile -e "$w" "$site"; done
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
timeout "${GPU_CHECK_TIMEOUT_S:-480}" python -m grpo_dist.bench.gpu_check --out "$out" "$@"
