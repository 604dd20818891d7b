"""The house rules that keep the code cheap to extend: imports point one way, and no module climbs back up."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGES = ("runner", "models", "datasets", "hydra_plugins")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each project module and the project modules it imports anywhere in its body (function-level imports too)."""
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {_module(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                    )
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:  # `import a.b.c` names a.b.c, or an attribute of a module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    found.add(t)
        graph[name] = found
    return graph


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert len(graph) > 50
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert circles == []


def test_the_layer_libraries_and_the_data_import_nothing_of_the_runner():
    graph = import_graph()
    for name, imports in graph.items():
        if name.split(".")[0] in ("models", "datasets"):
            assert not [m for m in imports if m.split(".")[0] in ("runner", "hydra_plugins")], name


def test_the_runner_modules_keep_their_jobs():
    # the plan never runs; training never touches files, plans or records; nothing but the CLI and the tuner hands
    # runs to Hydra; nothing imports the entry points
    graph = import_graph()
    assert not graph["runner.train"] & {"runner.plan", "runner.run", "runner.records", "runner.checkpoint"}
    assert not graph["runner.plan"] & {"runner.run", "runner.train", "runner.launch"}
    assert not {m for m, imports in graph.items() if "runner.__main__" in imports}
    assert {m for m, imports in graph.items() if "runner.launch" in imports} <= {"runner.__main__", "runner.tune",
                                                                                   "hydra_plugins.runner_sweeper"}
