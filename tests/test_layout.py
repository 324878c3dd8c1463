"""The package tree tells the phases a job goes through, and dependencies point one way:

    config (resolve) <- data, models <- training <- inference
    config <- submit (TorchX side: never training, data, models or torch)

Every import of a recjobs module counts, the lazy ones inside functions too: a cycle hidden in a
function is still a cycle a newcomer has to untangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "recjobs"

# Which phases each phase may import (besides itself and the shared top-level modules).
SHARED = {
    "recjobs",
    "recjobs.errors",
    "recjobs.atomic",
    "recjobs.file_kind",
    "recjobs.holdings",
    "recjobs.streams",
    "recjobs.distributed",
}
ALLOWED = {
    "config": set(),
    "data": {"config"},
    "models": {"config"},
    "training": {"config", "data", "models"},
    "inference": {"config", "data", "models", "training"},
    "submit": {"config"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recjobs"):
            found.add(node.module)
            # `from recjobs.x import y` where y is a module
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if candidate in MODULES:
                    found.add(candidate)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("recjobs"))
    return found


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}
GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _phase(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_the_right_way(module):
    phase = _phase(module)
    if phase is None:
        return  # cli, __main__, errors, atomic: the top level
    for target in GRAPH[module]:
        target_phase = _phase(target)
        if target_phase is None:
            assert target in SHARED, f"{module} imports {target}"
        else:
            assert target_phase == phase or target_phase in ALLOWED[phase], (
                f"{module} ({phase}) imports {target} ({target_phase})"
            )


def test_no_import_cycles():
    # Packages import their own submodules (`recjobs.data` re-exports); an edge to a package's
    # __init__ counts as an edge to the package, so only module-to-module edges are followed.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in GRAPH.get(node, ()):
            if nxt not in GRAPH or _is_parent(nxt, node):
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def _is_parent(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def test_each_phase_is_a_package_with_a_docstring():
    for phase in ALLOWED:
        init = ROOT / phase / "__init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} says nothing"
    top_level = sorted(p.stem for p in ROOT.glob("*.py"))
    assert top_level == [
        "__init__",
        "__main__",
        "atomic",
        "cli",
        "distributed",
        "errors",
        "file_kind",
        "holdings",
        "streams",
    ], top_level
