"""The layering, read from the source: ``schemas ← workers ← pipelines``, no cycles, and inside
``pipelines/`` nothing imports the commands and the control plane and the offline tools stay apart.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a lazy import
is still a dependency, only a later one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "workers", "pipelines")
LAYER = {name: rank for rank, name in enumerate(PACKAGES)}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def _imports(path: Path, modules: set[str]) -> set[str]:
    """First-party modules ``path`` imports, resolved to the module (not the package) where the
    imported name is a module of its own."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                for alias in node.names
            ]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    modules = set(sources)
    return {name: _imports(path, modules) - {name} for name, path in sources.items()}


def _area(module: str) -> str:
    """``pipelines.streaming.driver`` -> ``pipelines.streaming``; ``workers.loop`` -> ``workers``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "pipelines" and len(parts) > 2 else parts[0]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_the_packages_and_their_lazy_imports():
    graph = _graph()
    assert {"schemas.settings", "workers.loop", "pipelines.streaming.driver"} <= set(graph)
    # Imported inside a function: still an edge.
    assert "pipelines.bench.benchmark" in graph["pipelines.commands.bench"]


def test_no_cycles():
    assert _cycle(_graph()) is None, f"import cycle: {' -> '.join(_cycle(_graph()) or [])}"


def test_no_upward_imports():
    upward = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if LAYER[target.split(".")[0]] > LAYER[module.split(".")[0]]
    ]
    assert upward == []


# (importer area, imported area) pairs that must not exist inside pipelines/.
_FORBIDDEN = [
    *[(area, "pipelines.commands") for area in ("pipelines.streaming", "pipelines.kafka_tools")],
    *[(area, "pipelines.commands") for area in ("pipelines.offline", "pipelines.bench", "pipelines.soak")],
    ("pipelines.streaming", "pipelines.offline"),
    ("pipelines.offline", "pipelines.streaming"),
    *[(area, "pipelines.bench") for area in ("pipelines.streaming", "pipelines.offline", "pipelines.soak")],
    *[(area, "pipelines.soak") for area in ("pipelines.streaming", "pipelines.offline", "pipelines.bench")],
    ("pipelines.kafka_tools", "pipelines.streaming"),
    ("pipelines.kafka_tools", "pipelines.offline"),
]


@pytest.mark.parametrize(("importer", "imported"), _FORBIDDEN, ids=lambda area: area.split(".")[-1])
def test_pipelines_subpackages_keep_apart(importer: str, imported: str):
    crossing = sorted(
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if _area(module) == importer and _area(target) == imported
    )
    assert crossing == []


def test_pipelines_has_only_the_known_subpackages():
    areas = {
        _area(module) for module in _graph() if module.count(".") >= 2 and module.startswith("pipelines.")
    }
    assert areas == {
        "pipelines.streaming",
        "pipelines.kafka_tools",
        "pipelines.offline",
        "pipelines.bench",
        "pipelines.soak",
        "pipelines.commands",
    }


def test_the_kafka_python_internals_workers_use_are_all_there():
    """``workers/kafka_compat.py`` is the one module that touches kafka-python's internals; its
    self-check (also run when it is imported) names any the installed version lacks."""
    from workers import kafka_compat

    kafka_compat.self_check()
    private = [
        f"{module}: {node.attr}"
        for module, path in _sources().items()
        if module.startswith("workers.") and module != "workers.kafka_compat"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr
        in ("_client", "_subscription", "_fetcher", "_coordinator", "_sender", "_transaction_manager")
    ]
    assert private == []
