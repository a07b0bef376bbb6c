"""The layout keeps the data flow readable and the arrows one way: the imports of pipeline/, deployments/ and
bench/ (every `import`, also inside functions) form no cycle; pipeline never imports deployments; nothing
outside tests/ imports tests; pipeline's top level stays small."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

PACKAGES = ("pipeline", "deployments", "bench")
INTERNAL = ("pipeline", "deployments", "bench", "tests")
MAX_TOP_LEVEL_MODULES = 8


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((REPO_ROOT / package).rglob("*.py"))


def known_modules() -> set[str]:
    return {module_name(path) for package in INTERNAL for path in (REPO_ROOT / package).rglob("*.py")}


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The internal modules `path` imports: `from a.b import c` counts a.b.c when that is a module, else a.b."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] in INTERNAL)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = known_modules()
    return {module_name(path): imports_of(path, modules) for path in source_files()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path a -> ... -> a, or None (iterative DFS with colours)."""
    state: dict[str, int] = {}
    for root in graph:
        if state.get(root):
            continue
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph.get(root, ()))))]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                path = [name for name, _ in stack]
                return [*path[path.index(child):], child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def test_the_walker_sees_imports_inside_functions_and_finds_cycles() -> None:
    modules = known_modules()
    assert "pipeline.intake.matting" in imports_of(REPO_ROOT / "pipeline" / "run" / "runner.py", modules)
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    assert find_cycle(graph) is None


def test_pipeline_never_imports_deployments(graph: dict[str, set[str]]) -> None:
    offenders = {module: sorted(i for i in imported if i.startswith("deployments"))
                 for module, imported in graph.items() if module.startswith("pipeline")}
    assert {module: names for module, names in offenders.items() if names} == {}


def test_nothing_outside_tests_imports_tests(graph: dict[str, set[str]]) -> None:
    offenders = {module: sorted(i for i in imported if i.startswith("tests")) for module, imported in graph.items()}
    assert {module: names for module, names in offenders.items() if names} == {}


def test_nothing_edits_sys_path() -> None:
    """A `sys.path` edit is how bench/ once reached into tests/; scripts run from their own directory."""
    offenders = [str(path.relative_to(REPO_ROOT)) for path in source_files() if "sys.path" in path.read_text()]
    assert offenders == []


def test_pipeline_top_level_is_small() -> None:
    modules = sorted(p.name for p in (REPO_ROOT / "pipeline").glob("*.py") if p.name != "__init__.py")
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules


def test_the_library_and_its_cli_import_without_ray_or_the_serve_shells() -> None:
    code = ("import sys, pipeline.cli.main, pipeline.run.runner, pipeline.run.stages; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'deployments')))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True, timeout=120).stdout.strip()
    assert loaded == "[]"
