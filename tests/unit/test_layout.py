"""The shape of the package: small files, dependencies pointing one way, light commands staying light.

The import graph is read from the source (``ast``), counting imports inside functions too (a lazy import
is still a dependency), but not those under ``if TYPE_CHECKING:`` (annotations only).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "grpo_dist"
MAX_LINES = 500
LONG_FILE_MARKER = "Longer than 500 lines because"
ROLE_PACKAGES = ("grpo_dist.rollout", "grpo_dist.reward", "grpo_dist.learner", "grpo_dist.sync")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(name: str) -> set[str]:
    """The grpo_dist modules that module ``name`` imports (a ``from pkg import name`` that names a submodule
    counts as that submodule)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imported_modules(name) for name in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(GRAPH):
        if v not in index:
            connect(v)
    return out


def _reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in GRAPH[todo.pop()]:
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def _is_package_init(module: str, package: str) -> bool:
    """``module`` is ``package`` itself or one of its submodules; parents of a module are not its imports."""
    return module == package or module.startswith(package + ".")


def test_no_import_cycles() -> None:
    assert _cycles() == [], "import cycles (each list imports itself round)"


def test_files_stay_small_or_say_why() -> None:
    long_files = []
    for _name, path in MODULES.items():
        lines = path.read_text().count("\n")
        if lines > MAX_LINES:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            if LONG_FILE_MARKER not in doc:
                long_files.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert long_files == [], (
        f"files over {MAX_LINES} lines whose docstring does not say '{LONG_FILE_MARKER} ...': {long_files}"
    )


def test_config_imports_no_role_package() -> None:
    for name in [m for m in MODULES if _is_package_init(m, "grpo_dist.config")]:
        roles = sorted(m for m in _reachable(name) if any(_is_package_init(m, r) for r in ROLE_PACKAGES))
        assert roles == [], f"{name} reaches role packages {roles}"
        assert "grpo_dist.controller" not in _reachable(name)


def test_builtin_reward_names_are_the_rewards_builtins() -> None:
    from grpo_dist.config import BUILTIN_REWARD_NAMES
    from grpo_dist.reward.builtins import BUILTINS

    assert sorted(BUILTIN_REWARD_NAMES) == sorted(BUILTINS)


HEAVY = (
    "ray",
    "vllm",
    "deepspeed",
    "grpo_dist.reward.worker",
    "grpo_dist.reward.pool",
    "grpo_dist.reward.scorer",
    "grpo_dist.reward.sandbox",
    "grpo_dist.reward.code_exec",
    "grpo_dist.rollout.engine",
    "grpo_dist.learner.worker",
    "grpo_dist.controller",
)


@pytest.mark.parametrize("config", ["demo.yaml", "smollm2_135m_instruct.yaml", "dapo.yaml"])
def test_validate_loads_no_actor_or_sandbox_code(config: str, tmp_path: Path) -> None:
    """``grpo-dist validate`` (with its file checks) on a shipped config, in a fresh interpreter."""
    code = (
        "import sys\n"
        "from grpo_dist.cli import main\n"
        f"code = main(['validate', {str(ROOT / 'configs' / config)!r}])\n"
        f"loaded = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "print('LOADED', loaded, 'EXIT', code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False
    )
    assert "LOADED" in proc.stdout, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("LOADED [] EXIT"), f"{line}\n{proc.stderr[-2000:]}"
