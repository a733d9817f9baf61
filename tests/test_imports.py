"""The package imports cleanly: every module on its own, and no module imports itself back."""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import jhproxy_routes

PACKAGE = Path(jhproxy_routes.__file__).parent


def modules() -> list[str]:
    return ["jhproxy_routes"] + [m.name for m in pkgutil.walk_packages([str(PACKAGE)], "jhproxy_routes.")]


def source(module: str) -> Path:
    return Path(importlib.util.find_spec(module).origin)


def imported(module: str, known: set[str]) -> set[str]:
    """The package's modules that ``module`` imports (``from .x import``, ``import
    jhproxy_routes.x``, at any depth in the file, also inside functions)."""
    is_package = source(module).name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(source(module).read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [f"{base}.{alias.name}" for alias in node.names]
            found.update(name for name in names if name in known)
            if not any(name in known for name in names):
                found.add(base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in known and name != module}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules, the first again at the end), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for target in sorted(graph[module]):
            cycle = visit(target, [*path, module])
            if cycle:
                return cycle
        done.add(module)
        return None

    return next((cycle for module in sorted(graph) if (cycle := visit(module, []))), None)


def import_graph() -> dict[str, set[str]]:
    known = set(modules())
    return {module: imported(module, known) for module in known}


def test_no_import_cycles():
    graph = import_graph()
    assert graph["jhproxy_routes.wiring"] >= {"jhproxy_routes.handlers"}  # the walk sees imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_handlers_reach_the_store_and_the_routes_through_the_settings_service():
    handlers = import_graph()["jhproxy_routes.handlers"]
    assert "jhproxy_routes.settings" in handlers
    assert not handlers & {"jhproxy_routes.routes", "jhproxy_routes.store", "jhproxy_routes.audit"}


def test_find_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


# where a process first enters the package: the config file, the proxy class (by name or entry
# point), the sidecar, the CLI and its check, the seed's spawner
ENTRY_POINTS = [
    "jhproxy_routes",
    "jhproxy_routes.proxy",
    "jhproxy_routes.sidecar.__main__",
    "jhproxy_routes.cli",
    "jhproxy_routes.check",
    "jhproxy_routes.spawners",
]


def test_every_entry_point_imports_in_a_fresh_interpreter():
    """Each way in, first and alone, in a fresh interpreter (the graph test above keeps every
    other order free of cycles)."""
    assert set(ENTRY_POINTS) <= set(modules())
    runs = {
        module: subprocess.Popen([sys.executable, "-c", f"import {module}"], stderr=subprocess.PIPE, text=True)
        for module in ENTRY_POINTS
    }
    for module, run in runs.items():
        _, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, f"import {module}:\n{stderr[-2000:]}"
