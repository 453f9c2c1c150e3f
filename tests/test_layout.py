"""The dependency picture of pmd_init, read from the source with `ast`.

A room is a package under pmd_init/ (model, supervisor, ...) or a module at its top
(settings, __main__; `__init__` is pmd_init/__init__.py, the version). The tests hold:
every room imports only the rooms ALLOWED names, and there is no import cycle, neither
between rooms nor between modules.

Every import counts: at the top of a module, inside a function, and under
`if TYPE_CHECKING:`. A cycle that only the type checker follows is still two modules a
reader has to understand together. Importing `pmd_init.a.b` from outside `a` also runs
`a/__init__.py`, so that counts as importing `a` too.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "pmd_init"
ROOT = "pmd_init"

#: Which room may import which, lowest rooms first. README.md's Layout shows the same table.
ALLOWED: dict[str, set[str]] = {
    "__init__": set(),  # the version, and nothing else
    "model": set(),  # what a program is: the leaf everything builds on
    "logs": set(),
    "store": {"model"},
    "settings": {"__init__"},
    "supervisor": {"__init__", "model", "logs", "store"},
    "service": {"model", "logs", "store", "supervisor"},  # the operations both APIs share
    "api": {"__init__", "model", "logs", "settings", "supervisor", "service"},
    "pid1": {"__init__", "model", "logs", "settings", "store", "supervisor", "service", "api"},
    "__main__": {"pid1"},
    "cli": set(),  # the `pmd` client: the standard library only, so that it starts fast
}

#: Edges the code still has that the rules above forbid, each tolerated until the change
#: named beside it; the set only shrinks. A pair of rooms is a room edge, a pair of dotted
#: module names (relative to pmd_init) a module edge. An edge listed here that the code no
#: longer has fails `test_pending_edges_still_exist`: strike it in the same change.
PENDING: set[tuple[str, str]] = set()


# ---- reading the imports -------------------------------------------------------------


def _modules() -> dict[str, Path]:
    """Every module of pmd_init by its dotted name; a package is its __init__.py."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _base(importer: str, level: int) -> str:
    """The package a relative import of this level starts from."""
    package = importer if _is_package(importer) else importer.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return package


def _targets(importer: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The modules of pmd_init this import statement names (none for other packages)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                yield _existing(importer, alias.name)
        return
    if node.level:
        source = _base(importer, node.level)
        if node.module:
            source = f"{source}.{node.module}"
    else:
        source = node.module or ""
        if source != ROOT and not source.startswith(ROOT + "."):
            return
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        yield submodule if submodule in MODULES else _existing(importer, source)


def _existing(importer: str, name: str) -> str:
    assert name in MODULES, f"{importer} imports {name}, which is not a module of pmd_init"
    return name


def _with_packages(importer: str, target: str) -> Iterator[str]:
    """`target` and the packages above it that importing it runs, seen from `importer`."""
    yield target
    package = target.rpartition(".")[0]
    while package and package != ROOT:
        if importer != package and not importer.startswith(package + "."):
            yield package
        package = package.rpartition(".")[0]


def module_edges() -> set[tuple[str, str]]:
    """(importer, imported) for every import between modules of pmd_init."""
    edges = set()
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(name, node):
                    for imported in _with_packages(name, target):
                        if imported != name:
                            edges.add((_short(name), _short(imported)))
    return edges


def _short(name: str) -> str:
    """A module's name relative to pmd_init: `supervisor.spawn`; the root is `__init__`."""
    return "__init__" if name == ROOT else name.removeprefix(ROOT + ".")


def room(module: str) -> str:
    return module.partition(".")[0]


def room_edges(edges: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    return {(room(a), room(b)) for a, b in edges if room(a) != room(b)}


def cycles(edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _describe(component: list[str], edges: set[tuple[str, str]]) -> str:
    """One shortest cycle through the component's first member: `a -> b -> a`."""
    start = component[0]
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for a, b in sorted(edges):
                if a != node or b not in component:
                    continue
                if b == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return " -> ".join([start, *reversed(path[:-1]), start])
                if b not in came_from:
                    came_from[b] = node
                    following.append(b)
        frontier = following
    raise AssertionError(f"no cycle through {start}")


MODULE_EDGES = module_edges()
ROOM_EDGES = room_edges(MODULE_EDGES)


# ---- the rules -----------------------------------------------------------------------


def test_the_reader_sees_imports_of_every_kind():
    """The reader itself: a top-level, a function-level and a TYPE_CHECKING import, and
    the package a module from another room runs on the way."""
    assert ("store.programs", "model.spec") in MODULE_EDGES
    assert ("pid1.main", "api.server") in MODULE_EDGES  # inside a function
    assert ("supervisor.supervisor", "store.programs") in MODULE_EDGES  # TYPE_CHECKING
    assert ("supervisor.supervisor", "store") in MODULE_EDGES  # store/__init__.py runs
    assert ("api.server", "api.access") in MODULE_EDGES  # `from . import access`
    assert ("settings", "__init__") in MODULE_EDGES  # `from . import __version__`


def test_every_room_is_in_the_table():
    rooms = {room(_short(name)) for name in MODULES}
    assert rooms == set(ALLOWED), "add the new room to ALLOWED (and README.md's Layout)"


def test_the_table_is_a_layering():
    assert cycles((a, b) for a, allowed in ALLOWED.items() for b in allowed) == []


def test_the_model_imports_nothing_of_pmd():
    assert ALLOWED["model"] == set()
    assert sorted((a, b) for a, b in MODULE_EDGES if room(a) == "model" != room(b)) == []


def test_rooms_import_only_what_the_table_allows():
    forbidden = sorted((a, b) for a, b in ROOM_EDGES
                       if b not in ALLOWED[a] and (a, b) not in PENDING)
    assert forbidden == [], "\n".join(
        f"{a} imports {b}: " + ", ".join(sorted(f"{x} -> {y}" for x, y in MODULE_EDGES
                                                if (room(x), room(y)) == (a, b)))
        for a, b in forbidden)


def test_no_cycle_between_rooms():
    edges = ROOM_EDGES - PENDING
    found = cycles(edges)
    assert not found, "\n" + "\n".join(_describe(c, edges) for c in found)


def test_no_cycle_between_modules():
    edges = MODULE_EDGES - PENDING
    found = cycles(edges)
    assert not found, "\n" + "\n".join(_describe(c, edges) for c in found)


def test_pending_edges_still_exist():
    gone = sorted(PENDING - MODULE_EDGES - ROOM_EDGES)
    assert gone == [], "these edges are gone: strike them from PENDING"


def test_readme_shows_the_same_table():
    layout = (REPO / "README.md").read_text().partition("\n## Layout\n")[2].partition("\n## ")[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]*) \|$", layout, re.M)
    shown = {name: set(re.findall(r"`(\w+)`", imports)) for name, imports in rows}
    assert shown == ALLOWED
