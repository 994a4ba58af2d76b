"""The tree keeps its plan: no import circles, pipeline/ knows nothing of the daemon, empty __init__ files."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("daemon", "pipeline")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if "migrations" not in path.parts and not path.parent.is_symlink():
                found[module_name(path)] = path
    return found


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports at run time, at any depth in the file (a deferred import is still a
    dependency); imports only for type checkers (`if TYPE_CHECKING:`) are not."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {name for name in names if name in modules and name.split(".")[0] in PACKAGES}


def graph() -> dict[str, set[str]]:
    modules = sources()
    return {name: imports(path, modules) - {name} for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles():
    assert cycles(graph()) == []


def test_the_cycle_finder_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_pipeline_never_imports_the_daemon():
    upward = {name: sorted(t for t in targets if t.startswith("daemon"))
              for name, targets in graph().items() if name.startswith("pipeline")}
    assert {name: targets for name, targets in upward.items() if targets} == {}


def holds_code(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def test_every_init_holds_no_code():
    # The intake-only daemon imports packages without torch: an __init__ that imports would break that.
    # daemon/ sets __version__; the backend registry is its package's one deliberate exception.
    assert sorted(str(p.relative_to(REPO)) for p in sources().values()
                  if p.name == "__init__.py" and holds_code(p)) == ["daemon/__init__.py",
                                                                   "pipeline/backends/__init__.py"]
