"""The package's modules import each other in one direction only: no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "fastws"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """Every fastws module ``path`` imports, at the top, in a function or under TYPE_CHECKING."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    if path.suffix == ".pyx":
        # Cython: only the Python-level imports matter here (cimports are of other packages)
        source = "\n".join(line for line in path.read_text().splitlines()
                           if line.lstrip().startswith(("import ", "from ")) and " cimport " not in line)
    else:
        source = path.read_text()
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from . import auth`` imports the submodule fastws.auth
            targets = [f"{mod}.{alias.name}" if f"{mod}.{alias.name}" in modules else mod for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = [p for p in SRC.rglob("*") if p.suffix in (".py", ".pyx") and "__pycache__" not in p.parts]
    names = {_module_name(p): p for p in files}
    modules = set(names)
    graph = {name: _imports(path, name, modules) for name, path in names.items()}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_graph_sees_the_package() -> None:
    graph = import_graph()
    assert "fastws.server" in graph and "fastws._core" in graph
    assert "fastws.node" in graph["fastws.server"]
    assert "fastws.exceptions" in graph["fastws._core"]


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_check_finds_a_cycle() -> None:
    with pytest.raises(AssertionError):
        assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is None
    assert find_cycle({"a": {"b"}, "b": set()}) is None


ARCHITECTURE = SRC.parent.parent / "docs" / "architecture.md"


def _documented_arrows() -> list[tuple[str, str]]:
    """The ``a ──► b, c ──► d`` lines of docs/architecture.md's import diagram, as (a, b) pairs."""
    text = ARCHITECTURE.read_text()
    block = text.split("## Who imports whom", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    arrows = []
    for line in block.splitlines():
        steps = [part.split("(")[0].strip() for part in line.split("──►")]
        for src, dsts in zip(steps, steps[1:], strict=False):
            for dst in dsts.split(","):
                arrows.append((src.strip(), dst.strip()))
    return arrows


def test_architecture_doc_draws_only_real_imports() -> None:
    graph = import_graph()
    arrows = _documented_arrows()
    assert len(arrows) > 30
    for src, dst in arrows:
        a, b = f"fastws.{src}", f"fastws.{dst}"
        assert a in graph and b in graph, f"docs/architecture.md names a module that does not exist: {src} or {dst}"
        importers = [m for m in graph if m == a or m.startswith(a + ".")]  # a package: any of its modules
        assert any(b in graph[m] or any(d.startswith(b + ".") for d in graph[m]) for m in importers), \
            f"docs/architecture.md draws {src} ──► {dst}, which is no import"


def test_architecture_doc_names_existing_modules() -> None:
    table = ARCHITECTURE.read_text().split("## The parts", 1)[1].split("##", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) > 10
    for line in rows:
        for name in line.split("|")[1].replace("`", "").split(","):
            if name.strip():
                assert (SRC / name.strip()).exists(), f"docs/architecture.md names {name.strip()}"
