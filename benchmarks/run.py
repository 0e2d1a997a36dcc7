"""Run the throughput benchmarks: ``python benchmarks/run.py {rollout,learner,sync,e2e,all} [--quick] [--out FILE]``.

The same as ``grpo-dist bench ...``; everything lives in ``grpo_dist.bench``. Run it from the repository
root: results go to ``benchmarks/results/`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import sys

from grpo_dist.bench import main

if __name__ == "__main__":  # vLLM and Ray start processes that re-import the main module
    sys.exit(main())
