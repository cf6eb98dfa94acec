"""No import circles in caml_rl/ and envs/ (installed as caml_rl.envs).

An edge is every ``import`` / ``from ... import`` statement in a module, at module level and inside
functions and methods alike (a function-level import only postpones a circle); imports under
``if TYPE_CHECKING:`` are not edges (they never run). ``from pkg import name`` is an edge to the
submodule ``pkg.name`` when there is one, else to ``pkg``; importing a submodule is not counted as
an edge to its parent package's ``__init__``. Imports through ``importlib`` are not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = {"caml_rl": ROOT / "caml_rl", "caml_rl.envs": ROOT / "envs"}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _targets(module: str, node: ast.Import | ast.ImportFrom, is_package: bool, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of caml_rl and caml_rl.envs it imports."""
    found = modules()
    known = set(found)
    graph: dict[str, set[str]] = {}
    for module, path in found.items():
        tree = ast.parse(path.read_text())
        skipped = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for stmt in node.body
            for inner in ast.walk(stmt)
        }
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in skipped:
                for target in _targets(module, node, path.name == "__init__.py", known):
                    while target not in known and "." in target:  # caml_rl.envs.base.X -> caml_rl.envs.base
                        target = target.rpartition(".")[0]
                    if target in known and target != module:
                        edges.add(target)
        graph[module] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_circle_finder_finds_a_function_level_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_level_imports_and_skips_type_checking_ones():
    graph = import_graph()
    assert "caml_rl.envs.mujoco_batch" in graph["caml_rl.envs.backend_factory"]  # imported inside make_simulator
    assert "caml_rl.envs.locomotion" not in graph["caml_rl.envs.locomotion_env"]  # only under TYPE_CHECKING
    assert "caml_rl.envs.base" in graph["caml_rl.envs.validation"]


def test_no_import_circles_in_caml_rl_and_envs():
    graph = import_graph()
    assert len(graph) > 50
    assert circles(graph) == []
