"""The code's layout: data goes one way. No import cycle among the project's modules, counting imports inside
functions too (they hide a cycle from import time, not from the design)."""
from __future__ import annotations

import ast

from tests.conftest import REPO

PACKAGES = ("tfsb", "spec", "exporter", "server", "deploy", "loadtests", "demo", "benchmarks")


def _modules() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = (path, ast.parse(path.read_text()))
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the project's modules it imports (anywhere in it), each import resolved to the longest module
    name that exists (`from loadtests import report` is loadtests.report)."""
    modules = _modules()

    def resolve(name: str):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, tree) in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                found = resolve(target)
                if found and found != name:
                    graph[name].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
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


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_the_projects_modules():
    graph = import_graph()
    assert "loadtests.measure.session" in graph["loadtests.commands.bench"], "the graph sees imports"
    assert "server.grpc_api" in graph["server.app"], "the graph sees imports inside functions"
    assert cycles(graph) == []


ROOMS = ("drive", "analyze", "measure", "report", "commands")  # loadtests' subpackages, lowest first


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where a room of loadtests imports a room above it."""
    def room(module: str):
        parts = module.split(".")
        return ROOMS.index(parts[1]) if parts[0] == "loadtests" and len(parts) > 1 and parts[1] in ROOMS else None

    return sorted((name, target) for name, targets in graph.items() for target in targets
                  if room(name) is not None and room(target) is not None and room(target) > room(name))


def test_the_measuring_side_imports_only_downward():
    """drive (inside every generator process) <- analyze <- measure <- report <- commands: data goes one way."""
    graph = import_graph()
    assert upward_imports({"loadtests.drive.a": {"loadtests.report.b"}, "loadtests.report.b": set()}) == [
        ("loadtests.drive.a", "loadtests.report.b")]
    assert upward_imports(graph) == []
    at_top = sorted(name for name in graph if name.startswith("loadtests.") and name.count(".") == 1
                    and name.split(".")[1] not in ROOMS)
    assert at_top == ["loadtests.__main__", "loadtests.locustfile"], at_top  # the CLI and Locust's entry only


def test_the_load_generator_side_never_imports_tensorflow_at_import_time():
    """Every Locust process imports drive/: a TensorFlow import there would cost each one seconds and memory."""
    import subprocess
    import sys

    code = ("import sys, importlib, pkgutil, loadtests.drive as d\n"
            "for m in pkgutil.iter_modules(d.__path__): importlib.import_module('loadtests.drive.' + m.name)\n"
            "print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


def function_level_imports() -> list[tuple[str, int, str, bool]]:
    """(module, line, imported project module, says why) for every import of a project module inside a
    function; it says why when a comment on its line, or on the comment lines right above its run of imports,
    says it is deferred."""
    found = []
    modules = _modules()
    for name, (path, tree) in modules.items():
        lines = path.read_text().splitlines()
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and not node.level:
                    targets = [node.module or ""]
                elif isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                else:
                    continue
                for target in targets:
                    if target.split(".")[0] not in PACKAGES:
                        continue
                    said, row = "deferred" in lines[node.lineno - 1], node.lineno - 2
                    while not said and row >= 0 and lines[row].strip().startswith(("#", "from ", "import ")):
                        said = "deferred" in lines[row] and lines[row].strip().startswith("#")
                        row -= 1
                    found.append((name, node.lineno, target, said))
    return sorted(set(found))


def test_an_import_inside_a_function_defers_a_heavy_one_and_says_so():
    """Imports at the top show what a module needs; one inside a function hides it, so it is kept only where it
    defers a heavy import (TensorFlow, or a room a process never needs), with a comment saying so."""
    found = function_level_imports()
    assert ("server.app", next(line for name, line, target, _ in found if name == "server.app"), "server.grpc_api",
            True) in found  # the finder sees them, and their comments
    assert len(found) < 30, found
    assert [f for f in found if not f[3]] == []
