"""Where pmd_init keeps its settings and its state, read from the source with `ast`.

Settings are passed, not read (docs/architecture.md): settings.py reads the environment
once, for pid1; cli/ is the `pmd` client, which has settings of its own; pid1/main.py takes
the programs' base environment and owns the re-exec marker. No other module reads the
environment, and nothing at all reads it while being imported.

State lives in objects with an owner, not in modules: no module (and no class body, where
an attribute is shared by every instance) holds an instance of a pmd class that can change
(a frozen dataclass, a frozen pydantic model, an enum or a NamedTuple is a value, not
state), a container at module or class level is a constant table named in capitals, and
no function changes a name that a module binds (no `global`, no item assignment, no
mutating method).

Each rule has an allow-list, empty unless a comment beside an entry says why; an entry
the code no longer needs fails `test_allow_lists_are_still_needed`: strike it then.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass

from tests.test_layout import MODULES, PACKAGE, REPO  # one reading of the package's modules

ROOT = "pmd_init"

#: The modules that may read the environment (a package name covers its modules).
# pid1.compat is settings.py for tini's and dumb-init's command lines (TINI_*, DUMB_INIT_*).
# pid1.entry is pid1.main's first step (the boot plan), taken before pid1.main's imports.
READS_ENVIRONMENT = ("pmd_init.settings", "pmd_init.cli", "pmd_init.pid1.main",
                     "pmd_init.pid1.compat", "pmd_init.pid1.entry")

#: (module, function) -> why it reads the environment anyway.
ENVIRONMENT_EXCEPTIONS: dict[tuple[str, str], str] = {
    # PMD_WEBHOOK_ALLOW_LOOPBACK, a switch only tests turn on. The rules it opens run in
    # WebhooksSpec's validators, which have no settings (see the function's comment).
    ("pmd_init.model.webhook_rules", "loopback_allowed"): "test-only switch, read per call",
    # PMD_WEBHOOK_ALLOW_LOCAL, what --webhook-allow-local sets: the same rules, read alike.
    ("pmd_init.model.webhook_rules", "local_allowed"): "operator switch, read per call",
}

#: (module, name) of module- or class-level state the rules below would refuse.
STATE_EXCEPTIONS: dict[tuple[str, str], str] = {
    # Each API module's blueprint is a JsonBlueprint (api/context.py): a sanic Blueprint,
    # made and filled at import as any blueprint is, whose subclass only spares sanic the
    # reading of every handler's source file (docs/performance.md, "Memory").
    **{(f"pmd_init.api.{name}", "bp"): "a sanic blueprint, routes fixed at import"
       for name in ("daemon", "execs", "metrics", "openapi", "probes", "process", "signals",
                    "ui", "ws")},
}

#: What the os module offers to read or change the environment.
ENVIRONMENT_NAMES = frozenset({"environ", "environb", "getenv", "getenvb", "putenv",
                               "unsetenv"})
#: Calls that make a new mutable container.
CONTAINER_CALLS = frozenset({"dict", "list", "set", "bytearray", "defaultdict", "deque",
                             "OrderedDict", "Counter", "ChainMap", "array",
                             "WeakValueDictionary", "WeakKeyDictionary", "WeakSet"})
#: Methods that change a container (of the standard library's containers).
MUTATORS = frozenset({"append", "appendleft", "extend", "extendleft", "insert", "pop",
                      "popleft", "popitem", "remove", "discard", "add", "update",
                      "setdefault", "clear", "sort", "reverse", "rotate",
                      "difference_update", "intersection_update",
                      "symmetric_difference_update", "__setitem__", "__delitem__"})
CONSTANT_NAME = re.compile(r"_?[A-Z][A-Z0-9_]*|__all__")


TREES = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in MODULES.items()}


def _source_module(importer: str, node: ast.ImportFrom) -> str:
    """The module an import-from statement takes names from, as an absolute name."""
    if not node.level:
        return node.module or ""
    package = importer if MODULES[importer].name == "__init__.py" else \
        importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _imported_names(module: str) -> dict[str, tuple[str, str]]:
    """local name -> (module of pmd_init, name there) for every `from pmd_init... import`."""
    found = {}
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.ImportFrom):
            source = _source_module(module, node)
            if source == ROOT or source.startswith(ROOT + "."):
                for alias in node.names:
                    found[alias.asname or alias.name] = (source, alias.name)
    return found


IMPORTED = {name: _imported_names(name) for name in MODULES}
CLASSES = {name: {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
           for name, tree in TREES.items()}
#: Bases whose instances are values: enum members and named tuples.
VALUE_BASES = frozenset({"Enum", "IntEnum", "StrEnum", "Flag", "IntFlag", "NamedTuple"})


def pmd_class(module: str, name: str, depth: int = 0) -> tuple[str, ast.ClassDef] | None:
    """The module and definition of `name`, as module `module` sees it, when it is a class
    defined in pmd_init (also through a package's re-export)."""
    if name in CLASSES.get(module, {}):
        return module, CLASSES[module][name]
    origin = IMPORTED.get(module, {}).get(name)
    if origin is None or depth > 5:
        return None
    source, original = origin
    if f"{source}.{original}" in MODULES or source not in MODULES:  # a module
        return None
    return pmd_class(source, original, depth + 1)


def _frozen_keyword(call: ast.expr) -> bool:
    return isinstance(call, ast.Call) and any(
        k.arg == "frozen" and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in call.keywords)


def is_value_class(module: str, cls: ast.ClassDef, depth: int = 0) -> bool:
    """Whether instances of `cls` cannot change: a frozen dataclass, a pydantic model with
    a frozen config, an enum, a named tuple, or a subclass of one of them."""
    if any(_frozen_keyword(d) for d in cls.decorator_list):
        return True
    for node in cls.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "model_config" for t in node.targets):
            return _frozen_keyword(node.value)
    for base in cls.bases:
        name = base.id if isinstance(base, ast.Name) else \
            base.attr if isinstance(base, ast.Attribute) else None
        if name in VALUE_BASES:
            return True
        found = pmd_class(module, name) if name and depth < 5 else None
        if found is not None and is_value_class(*found, depth + 1):
            return True
    return False


# ---- the environment -----------------------------------------------------------------


@dataclass(frozen=True)
class Read:
    module: str
    function: str  # the qualified name of the function it is in; "" at import time
    line: int

    def __str__(self) -> str:
        where = f" in {self.function}()" if self.function else " at import time"
        return f"{MODULES[self.module].relative_to(REPO)}:{self.line}{where}"


class _EnvironmentReads(ast.NodeVisitor):
    """Every use of os.environ, os.getenv and friends, with the function it is in. Code
    that runs at import (module and class bodies, decorators, default values) has none."""

    def __init__(self, module: str) -> None:
        self.module = module
        self.os_names: set[str] = set()
        self.direct: set[str] = set()  # `from os import environ`
        self.scope: list[str] = []
        self.in_function = 0
        self.found: list[Read] = []

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name in ("os", "posix"):
                self.os_names.add(alias.asname or alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module in ("os", "posix"):
            for alias in node.names:
                if alias.name in ENVIRONMENT_NAMES:
                    self.direct.add(alias.asname or alias.name)
                    self._found(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda,
                  name: str) -> None:
        # Decorators and default values run where the function is defined.
        for decorator in getattr(node, "decorator_list", []):
            self.visit(decorator)
        for default in [*node.args.defaults, *node.args.kw_defaults]:
            if default is not None:
                self.visit(default)
        self.scope.append(name)
        self.in_function += 1
        body = node.body if isinstance(node.body, list) else [node.body]
        for statement in body:
            self.visit(statement)
        self.in_function -= 1
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._function(node, node.name)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._function(node, node.name)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._function(node, "<lambda>")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if (node.attr in ENVIRONMENT_NAMES and isinstance(node.value, ast.Name)
                and node.value.id in self.os_names):
            self._found(node)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in self.direct:
            self._found(node)

    def _found(self, node: ast.expr | ast.stmt) -> None:
        function = ".".join(self.scope) if self.in_function else ""
        self.found.append(Read(self.module, function, node.lineno))


def environment_reads() -> list[Read]:
    found = []
    for module, tree in TREES.items():
        visitor = _EnvironmentReads(module)
        visitor.visit(tree)
        found += visitor.found
    return found


READS = environment_reads()


def _may_read(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in READS_ENVIRONMENT)


def test_only_settings_cli_and_pid1_read_the_environment() -> None:
    wrong = [str(r) for r in READS if not _may_read(r.module)
             and (r.module, r.function) not in ENVIRONMENT_EXCEPTIONS]
    assert not wrong, ("read the environment in settings.py and pass the value down "
                       "(docs/architecture.md, 'Settings are passed, not read'):\n"
                       + "\n".join(wrong))


def test_nothing_reads_the_environment_at_import() -> None:
    wrong = [str(r) for r in READS if not r.function]
    assert not wrong, "an import must not depend on the environment:\n" + "\n".join(wrong)


def test_settings_reads_the_environment() -> None:
    """The scan sees what it looks for: settings.py's reads are found."""
    assert any(r.module == "pmd_init.settings" for r in READS)


# ---- state -----------------------------------------------------------------------------


def _bodies(tree: ast.Module) -> Iterator[tuple[str, list[ast.stmt]]]:
    """The statements that run at import, by owner: the module ("") and each class."""
    def walk(owner: str, body: list[ast.stmt]) -> Iterator[tuple[str, list[ast.stmt]]]:
        yield owner, body
        for node in body:
            if isinstance(node, ast.ClassDef):
                yield from walk(f"{owner}.{node.name}".lstrip("."), node.body)
            elif isinstance(node, ast.If | ast.Try | ast.With):
                for block in ("body", "orelse", "finalbody"):
                    yield from walk(owner, getattr(node, block, []))
                for handler in getattr(node, "handlers", []):
                    yield from walk(owner, handler.body)
    yield from walk("", tree.body)


def _assignments(tree: ast.Module) -> Iterator[tuple[str, str, ast.expr, int]]:
    """(owner, name, value, line) of every name bound by assignment at import."""
    for owner, body in _bodies(tree):
        for node in body:
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            else:
                continue
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        yield owner, name.id, value, node.lineno


def _is_container(value: ast.expr) -> bool:
    if isinstance(value, ast.Dict | ast.List | ast.Set | ast.ListComp | ast.DictComp
                  | ast.SetComp):
        return True
    if isinstance(value, ast.Call):
        func = value.func
        called = func.id if isinstance(func, ast.Name) else \
            func.attr if isinstance(func, ast.Attribute) else None
        return called in CONTAINER_CALLS
    return False


def _pmd_instances(module: str, value: ast.expr) -> Iterator[str]:
    """The pmd classes `value` makes an instance of, outside any lambda (which runs later)."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Lambda):
            continue
        if isinstance(node, ast.Call):
            func = node.func
            found = None
            if isinstance(func, ast.Name):
                found = pmd_class(module, func.id)
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                origin = IMPORTED[module].get(func.value.id)
                target = f"{origin[0]}.{origin[1]}" if origin else ""
                found = pmd_class(target, func.attr) if target in MODULES else None
            if found is not None and not is_value_class(*found):
                yield found[1].name
        stack.extend(ast.iter_child_nodes(node))


@dataclass(frozen=True)
class Finding:
    module: str
    name: str  # `NAME`, or `Class.NAME` for a class attribute
    line: int
    what: str

    def __str__(self) -> str:
        return f"{MODULES[self.module].relative_to(REPO)}:{self.line}: {self.name} {self.what}"


def module_findings(module: str, tree: ast.Module) -> list[Finding]:
    found = []
    for owner, name, value, line in _assignments(tree):
        qualified = f"{owner}.{name}".lstrip(".")
        for cls in sorted(set(_pmd_instances(module, value))):
            found.append(Finding(module, qualified, line, f"is an instance of {cls}: "
                                 "let the object that needs it own it"))
        if _is_container(value) and not CONSTANT_NAME.fullmatch(name):
            found.append(Finding(module, qualified, line, "is a mutable container: a "
                                 "constant table is named in capitals, state has an owner"))
    return found + list(_changes_after_import(module, tree))


def _bound_at_import(module: str, tree: ast.Module) -> set[str]:
    names = {name for owner, name, _, _ in _assignments(tree) if not owner}
    # A name taken from another module of pmd_init is that module's state.
    return names | set(IMPORTED[module])


def _local_names(function: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> set[str]:
    args = function.args
    names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    names |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.id)
    return names


def _changes_after_import(module: str, tree: ast.Module) -> Iterator[Finding]:
    """Functions that rebind or change a name the module binds."""
    shared = _bound_at_import(module, tree)
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        candidates = shared - _local_names(function)
        for node in ast.walk(function):
            if isinstance(node, ast.Global):
                for name in node.names:
                    yield Finding(module, name, node.lineno, "is rebound through `global`")
            elif isinstance(node, ast.Subscript | ast.Attribute) and \
                    isinstance(node.ctx, ast.Store | ast.Del) and \
                    isinstance(node.value, ast.Name) and node.value.id in candidates:
                yield Finding(module, node.value.id, node.lineno, "is changed by a function")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in MUTATORS and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id in candidates:
                yield Finding(module, node.func.value.id, node.lineno,
                              f"is changed by a function (.{node.func.attr})")


FINDINGS = [f for module, tree in TREES.items() for f in module_findings(module, tree)]


def test_no_module_keeps_mutable_state() -> None:
    wrong = [str(f) for f in FINDINGS if (f.module, f.name) not in STATE_EXCEPTIONS]
    assert not wrong, "state belongs to an object with an owner:\n" + "\n".join(wrong)


SAMPLE = """\
import os
from dataclasses import dataclass
from .proctree import ProcessSampler
from .times import LineTimes
LEVEL = os.environ.get("LEVEL")
SAMPLER = ProcessSampler()
_SAVED: dict[str, LineTimes] = {}
cache = {}
TABLE = {"a": 1}
_RELOADING = False
def remember(path, times):
    _SAVED[path] = times
def claim(path, size=os.getenv("SIZE")):
    return _SAVED.pop(path, None)
def reload():
    global _RELOADING
    _RELOADING = True
def local():
    cache = {}
    cache["x"] = 1
    return TABLE.get("a"), os.environ["HOME"]
@dataclass(frozen=True)
class Point:
    x: int
    shared = []
ORIGIN = Point(0)
"""


def _scan_sample() -> tuple[list[Read], list[Finding]]:
    module = "pmd_init.supervisor.sample"
    tree = ast.parse(SAMPLE)
    MODULES[module] = PACKAGE / "supervisor" / "sample.py"
    TREES[module] = tree
    IMPORTED[module] = {"ProcessSampler": ("pmd_init.supervisor.proctree", "ProcessSampler"),
                        "LineTimes": ("pmd_init.logs.times", "LineTimes")}
    CLASSES[module] = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    try:
        visitor = _EnvironmentReads(module)
        visitor.visit(tree)
        return visitor.found, module_findings(module, tree)
    finally:
        del MODULES[module], TREES[module], IMPORTED[module], CLASSES[module]


def test_the_rules_catch_what_they_are_for() -> None:
    """The kinds of module state and environment reads this issue removed are all found
    in a sample, and values (a frozen dataclass, a constant table) are not."""
    reads, findings = _scan_sample()
    assert sorted((r.function, r.line) for r in reads) == [("", 5), ("", 13), ("local", 21)]
    assert sorted((f.name, f.line) for f in findings) == [
        ("Point.shared", 25), ("SAMPLER", 6), ("_RELOADING", 16), ("_SAVED", 12),
        ("_SAVED", 14), ("cache", 8)]


def test_allow_lists_are_still_needed() -> None:
    reads = {(r.module, r.function) for r in READS}
    assert set(ENVIRONMENT_EXCEPTIONS) <= reads, \
        f"no longer read there, strike it: {set(ENVIRONMENT_EXCEPTIONS) - reads}"
    findings = {(f.module, f.name) for f in FINDINGS}
    assert set(STATE_EXCEPTIONS) <= findings, \
        f"no longer found, strike it: {set(STATE_EXCEPTIONS) - findings}"
