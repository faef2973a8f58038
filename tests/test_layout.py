"""The package's layout as DESIGN.md states it, read from the source: no import cycle between its
modules, and no backend that reaches into another backend's modules (it imports the package)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "alexnet_deploy"
BACKENDS = "alexnet_deploy.backends."


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imported(module: str, node: ast.Import | ast.ImportFrom, is_package: bool) -> list[str]:
    """The package's modules an import statement loads (for `from P import m`, the module P.m)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's own package up
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    submodules = [f"{base}.{a.name}" for a in node.names]
    names = [m for m in submodules if m in MODULES]
    return names + [base] if len(names) < len(submodules) else names


def _imports() -> dict[str, set[str]]:
    """Every module's imports of the package's modules, at the top and inside functions alike (a
    deferred import closes a cycle as soon as it runs); a module's own parent packages left out, since
    Python imports those first anyway."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.update(m for m in _imported(module, node, path.name == "__init__.py")
                             if m in MODULES and m != module and not module.startswith(m + "."))
        graph[module] = found
    return graph


def test_the_reader_sees_the_imports_it_judges():
    graph = _imports()
    assert {"alexnet_deploy.bench.end_to_end", "alexnet_deploy.bench.loadgen"} <= \
        graph["alexnet_deploy.bench.harness"], "`from alexnet_deploy.bench import end_to_end, loadgen`"
    assert "alexnet_deploy.runtimes" in graph["alexnet_deploy.backends.onnx.layers"]


def test_no_import_cycle_in_the_package():
    try:
        graphlib.TopologicalSorter(_imports()).prepare()
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


def _backend(module: str) -> str | None:
    return module.split(".")[2] if module.startswith(BACKENDS) else None


def test_no_backend_imports_another_backends_modules():
    reach_ins = [f"{module} -> {target}"
                 for module, targets in _imports().items() if _backend(module)
                 for target in targets
                 if _backend(target) not in (None, _backend(module)) and target.count(".") > 2]
    assert not reach_ins, "import the other backend's package (its __init__ says what it offers): " + \
        "; ".join(sorted(reach_ins))
