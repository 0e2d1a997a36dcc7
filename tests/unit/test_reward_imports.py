"""Importing the built-in rewards stays light, and built-ins named by import path still resolve for real.

``grpo_dist.reward.builtins`` is imported by ``grpo-dist validate`` and in the scorer's child process;
``BUILTINS`` names each built-in by ``module:function`` so that the ``code_exec`` sandbox (and anything
heavier) is imported only when a config selects it.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_dist.reward import sandbox
from grpo_dist.reward.builtins import BUILTINS, FunctionSpec, resolve

HEAVY_MODULES = (
    "grpo_dist.reward.sandbox",
    "grpo_dist.reward.sandbox_launcher",
    "grpo_dist.reward.code_exec",
    "ray",
)


def test_importing_builtins_loads_no_sandbox_and_no_ray() -> None:
    script = (
        "import json, sys\n"
        "import grpo_dist.reward.builtins\n"
        f"print(json.dumps([m for m in {list(HEAVY_MODULES)!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == []


def test_builtins_table_names_each_function_by_its_own_path() -> None:
    assert set(BUILTINS) == {"code_exec", "env_reward", "exact_match", "format", "overlong"}
    for name, path in BUILTINS.items():
        module_name, _, attr = path.partition(":")
        fn = getattr(importlib.import_module(module_name), attr)
        assert f"{fn.__module__}:{fn.__qualname__}" == path, name


def test_resolve_code_exec_returns_the_real_function_and_checks_its_kwargs() -> None:
    from grpo_dist.reward.code_exec import code_exec

    assert resolve(FunctionSpec("code_exec", kwargs={"timeout_s": 2, "memory_mb": 256})) is code_exec
    with pytest.raises(ValueError, match=r"kwargs\.memory_mb = 8"):
        resolve(FunctionSpec("code_exec", kwargs={"memory_mb": 8}))
    with pytest.raises(ValueError, match=r"cannot call .*code_exec.*memroy_mb"):
        resolve(FunctionSpec("code_exec", kwargs={"memroy_mb": 256}))
    # The same kwargs check applies when a path names the built-in.
    with pytest.raises(ValueError, match=r"kwargs\.memory_mb = 8"):
        resolve(FunctionSpec("mine", path="grpo_dist.reward.code_exec:code_exec", kwargs={"memory_mb": 8}))


def test_launcher_imports_the_standard_library_only() -> None:
    """It runs as ``python -I -S -B`` (no site-packages, its directory not on ``sys.path``)."""
    tree = ast.parse(Path(sandbox._LAUNCHER).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported, "no imports found: is _LAUNCHER the launcher?"
    assert {name.split(".")[0] for name in imported} <= set(sys.stdlib_module_names)
