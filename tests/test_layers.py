"""Imports flow one way, engine <- programs <- benchmarks, rl <- doctor, and no module imports itself round a
cycle. The doctor runs programs, benchmarks and rl as a user does: it may import any of them, and nothing it.

Read from the source with `ast` (nothing is imported), function-level imports included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = {"engine": 0, "programs": 1, "benchmarks": 2, "rl": 2, "doctor": 3}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """The project modules `module` imports, resolved to module names (a package's own name for `from P
    import name` where name is not a module is kept as P)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> project modules it imports, for every module of the layered packages under `root`."""
    files = {
        module_name(path, root): path for package in LAYERS for path in sorted((root / package).rglob("*.py"))
    }
    graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        names = imported(tree, module, path.name == "__init__.py")
        graph[module] = {name for name in names if name in files and name != module}
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a higher layer, or of a sibling package on the same layer (benchmarks and rl)."""

    def package(module: str) -> str:
        return module.split(".")[0]

    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if package(target) != package(module) and LAYERS[package(target)] >= LAYERS[package(module)]
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_imports_flow_one_way_and_never_in_a_cycle():
    graph = import_graph(REPO)
    assert "programs.core.prompts" in graph and graph["programs.a2r"], "the walk found no project imports"
    assert upward_imports(graph) == []
    assert cycles(graph) == []


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in LAYERS:
        (root / package).mkdir(exist_ok=True)
    return root


@pytest.mark.parametrize(
    "source",
    [
        "from benchmarks.cost import x",  # a plain upward import
        "def f():\n    import rl.reward",  # hidden inside a function
        "from benchmarks import cost",  # a module imported through its package
    ],
)
def test_an_upward_import_is_caught(tmp_path, source):
    root = write(
        tmp_path,
        {
            "programs/low.py": source,
            "benchmarks/cost.py": "x = 1",
            "rl/reward.py": "",
            "benchmarks/__init__.py": "",
        },
    )
    assert upward_imports(import_graph(root)) != []


def test_benchmarks_and_rl_do_not_import_each_other(tmp_path):
    root = write(tmp_path, {"rl/a.py": "import benchmarks.b", "benchmarks/b.py": ""})
    assert upward_imports(import_graph(root)) == ["rl.a imports benchmarks.b"]


def test_the_doctor_imports_every_floor_and_nothing_imports_it(tmp_path):
    files = {"doctor/checks.py": "import rl.a\nfrom benchmarks import b\nimport programs.c\nimport engine.d"}
    files |= {
        "rl/a.py": "",
        "benchmarks/b.py": "",
        "programs/c.py": "",
        "engine/d.py": "import doctor.checks",
    }
    assert upward_imports(import_graph(write(tmp_path, files))) == ["engine.d imports doctor.checks"]


def test_a_cycle_is_caught(tmp_path):
    root = write(
        tmp_path,
        {"programs/a.py": "from programs.b import y\nx = 1", "programs/b.py": "from .a import x\ny = 2"},
    )
    assert cycles(import_graph(root)) == [["programs.a", "programs.b"]]
