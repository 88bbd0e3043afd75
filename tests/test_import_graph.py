"""The shape of the house (issue 12): ntkit's import graph, read from the source with ``ast`` (nothing is imported).

- No cycle between ntkit's packages (``ntkit.layers``, ``ntkit.linalg``, ``ntkit.tiling``, ...: the top-level
  subpackages and modules), counting every import, and no cycle between modules among the imports that run when a
  module is loaded.
- No private name crosses a package boundary: no ``_x`` module or ``_x`` symbol of one top-level package is
  imported by another, except the shared top-level private modules that docs/architecture.md declares shared
  (``SHARED_PRIVATE``, checked against that document), and even from those only public names.

Which imports count:

- Imports under ``if TYPE_CHECKING:`` are left out: they never run, and annotations may legitimately point
  anywhere.
- Function-local (lazy) imports are kept apart from module-level ones. For the package graph they count: a lazy
  import is still a dependency, and a cycle hidden inside a function is the tangle issue 12 removed (the layering
  "description -> kernel -> solver -> analysis -> figure" is about what depends on what, not about when it is
  loaded). For the module graph they do not count: that graph is about import-time safety, and deferring an import
  into the function that needs it is exactly how a module avoids loading its dependency's whole package.
- ``import a.b.c`` and ``from a.b import c`` reach module ``a.b.c`` when it exists (else the package ``a.b``);
  the implicit import of parent packages is not an edge (every submodule would otherwise import its own
  ``__init__``, which imports it back).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "ntkit"

# Top-level private modules that docs/architecture.md declares shared by several packages. Only public names of
# these may be imported from other packages; test_shared_private_modules_are_the_documented_ones keeps this list
# and the document in step.
SHARED_PRIVATE = frozenset(
    {
        "ntkit._artifacts",
        "ntkit._loss",
        "ntkit._spectral",
        "ntkit._validation",
        "ntkit._warnings",
    }
)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported ntkit module (or package)
    names: tuple[str, ...]  # the names taken from it by `from target import ...` (empty for `import target`)
    line: int
    lazy: bool  # inside a function (or a class body's method): runs only when called

    def where(self) -> str:
        return f"{self.source}:{self.line}"


def module_files(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package is its ``__init__.py``)."""
    modules = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_imports(node: ast.AST, lazy: bool = False):
    """Yield (import node, lazy) for every import that can run: none under ``if TYPE_CHECKING:``."""
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for stmt in node.orelse:  # the `else:` of a TYPE_CHECKING test does run
            yield from _walk_imports(stmt, lazy)
        return
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node, lazy
        return
    lazy = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
    for child in ast.iter_child_nodes(node):
        yield from _walk_imports(child, lazy)


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` written in ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node, lazy in _walk_imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    found.append(Import(module, alias.name, (), node.lineno, lazy))
            continue
        target = _resolve(module, is_package, node.level, node.module)
        if target != PACKAGE and not target.startswith(PACKAGE + "."):
            continue
        plain = []
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            if sub in modules:  # `from pkg import submodule`: an import of that module
                found.append(Import(module, sub, (), node.lineno, lazy))
            else:
                plain.append(alias.name)
        if plain or len(node.names) == 0:
            found.append(Import(module, target, tuple(plain), node.lineno, lazy))
    return found


def all_imports(src: Path = SRC) -> list[Import]:
    modules = module_files(src)
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


def top_package(module: str) -> str:
    """The unit that owns a module: ``ntkit.layers.base`` -> ``ntkit.layers``; ``ntkit.tiling`` is its own."""
    return ".".join(module.split(".")[:2])


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (or a self-loop), by Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                components.append(sorted(component))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return components


def _cycle_reports(links: list[tuple[str, str, str]]) -> list[str]:
    """Each cycle of the graph of (from, to, where) links as one line naming all its links."""
    edges: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for a, b, at in links:
        edges.setdefault(a, set()).add(b)
        where.setdefault((a, b), at)
    return [
        "; ".join(
            f"{a} -> {b} ({where[a, b]})"
            for a in component
            for b in sorted(edges.get(a, set()) & set(component))
        )
        for component in _cycles(edges)
    ]


def package_cycles(imports: list[Import]) -> list[str]:
    """Cycles between top-level packages, lazy imports included."""
    return _cycle_reports(
        [
            (top_package(i.source), top_package(i.target), i.where())
            for i in imports
            if top_package(i.source) != top_package(i.target) and i.target != PACKAGE
        ]
    )


def module_cycles(imports: list[Import]) -> list[str]:
    """Cycles between modules among the imports that run when a module is loaded."""
    return _cycle_reports(
        [(i.source, i.target, i.where()) for i in imports if not i.lazy and i.source != i.target]
    )


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def private_crossings(imports: list[Import], shared: frozenset[str] = SHARED_PRIVATE) -> list[str]:
    """Imports of another top-level package's private module or private name."""
    bad = []
    for imp in imports:
        own, theirs = top_package(imp.source), top_package(imp.target)
        if own == theirs:
            continue
        tail = imp.target.split(".")[1:]  # the parts below `ntkit`
        if theirs in shared:
            tail = tail[1:]  # the shared module itself may be named; what lies below it may not be private
        private_modules = [p for p in tail if _private(p)]
        private_names = [n for n in imp.names if _private(n)]
        if private_modules or private_names:
            what = imp.target + (f" import {', '.join(private_names)}" if private_names else "")
            bad.append(f"{imp.where()}: {what}")
    return bad


# --- the checks -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return all_imports()


def test_the_graph_is_read(imports):
    # a reader that found nothing would pass every check below
    modules = module_files()
    assert len(modules) > 50
    assert any(i.source == "ntkit.layers.kernel" and i.target == "ntkit.tiling" for i in imports)
    assert any(i.lazy for i in imports) and any(not i.lazy for i in imports)


def test_no_cycle_between_packages(imports):
    assert package_cycles(imports) == []


def test_no_import_time_cycle_between_modules(imports):
    assert module_cycles(imports) == []


def test_no_private_name_crosses_a_package(imports):
    assert private_crossings(imports) == []


def test_shared_private_modules_are_the_documented_ones():
    text = " ".join((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8").split())
    declared = re.search(r"the public names of the shared private modules: ([^.]*)\.", text)
    assert declared, "docs/architecture.md no longer lists the shared private modules"
    documented = {f"{PACKAGE}.{name}" for name in re.findall(r"`(_\w+)`", declared.group(1))}
    assert documented == SHARED_PRIVATE
    assert SHARED_PRIVATE <= set(module_files())


# --- the checks catch what they are meant to catch ----------------------------------------------------------------


def _plant(tmp_path: Path, files: dict[str, str]) -> list[Import]:
    for rel, body in files.items():
        path = tmp_path / PACKAGE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    return all_imports(tmp_path)


BASE = {"__init__.py": "", "a/__init__.py": "", "b/__init__.py": "", "_shared.py": "x = 1\n_y = 2\n"}


def test_a_planted_package_cycle_is_found(tmp_path):
    imports = _plant(
        tmp_path,
        {**BASE, "a/m.py": "from ..b import n\n", "b/n.py": "def f():\n    from ..a import m\n"},
    )
    (cycle,) = package_cycles(imports)
    assert "ntkit.a -> ntkit.b" in cycle and "ntkit.b -> ntkit.a" in cycle
    assert module_cycles(imports) == []  # the way back is lazy: no import-time cycle


def test_a_planted_module_cycle_is_found(tmp_path):
    imports = _plant(tmp_path, {**BASE, "a/m.py": "from . import n\n", "a/n.py": "from .m import f\n"})
    assert package_cycles(imports) == []
    (cycle,) = module_cycles(imports)
    assert "ntkit.a.m -> ntkit.a.n" in cycle and "ntkit.a.n -> ntkit.a.m" in cycle


def test_type_checking_imports_are_left_out(tmp_path):
    body = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..b import n\n"
    imports = _plant(tmp_path, {**BASE, "a/m.py": body, "b/n.py": "from ..a import m\n"})
    assert package_cycles(imports) == []


def test_a_planted_private_crossing_is_found(tmp_path):
    imports = _plant(
        tmp_path,
        {
            **BASE,
            "a/_m.py": "_z = 1\nz = 2\n",
            "a/m.py": "from ._m import _z\n",  # within its own package: fine
            "b/n.py": "from ..a._m import z\nfrom ..a.m import _z\nimport ntkit.a._m\n",
            "b/o.py": "from .._shared import x\nfrom .._shared import _y\nfrom ..a import _m\n",
        },
    )
    found = private_crossings(imports, shared=frozenset({"ntkit._shared"}))
    assert found == [
        "ntkit.b.n:1: ntkit.a._m",
        "ntkit.b.n:2: ntkit.a.m import _z",
        "ntkit.b.n:3: ntkit.a._m",
        "ntkit.b.o:2: ntkit._shared import _y",
        "ntkit.b.o:3: ntkit.a._m",
    ]
    # an undeclared shared module is private to itself
    assert "ntkit.b.o:1: ntkit._shared" in private_crossings(imports, shared=frozenset())
