"""The dependency graph of programs (`depends_on`): the rules a set of programs must keep
and the orders it implies. Pure: names in, names out.

A graph is checked as a whole (programs.json, and the programs as an add, edit or remove
would leave them), because a single spec cannot know whether the names it depends on
exist or whether it closes a cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .spec import ProgramSpec


@dataclass(frozen=True, slots=True)
class Unmet:
    """One dependency that does not hold: `db (healthy)`, and why it never will on its
    own (`blocked`: "migrate exited 3"), if so."""

    name: str
    condition: str
    blocked: str | None = None

    def __str__(self) -> str:
        return f"{self.name} ({self.condition})"


class GraphError(ValueError):
    """A set of programs whose dependencies cannot hold; `program` is the one that names
    the bad dependency (its `depends_on` is the field to blame)."""

    def __init__(self, message: str, program: str) -> None:
        super().__init__(message)
        self.program = program


def check_graph(specs: Iterable[ProgramSpec]) -> None:
    """Every name a program depends on exists, and there is no cycle."""
    edges = {spec.name: list(spec.depends_on) for spec in specs}
    for name, needs in edges.items():
        for need in needs:
            if need not in edges:
                raise GraphError(f"'{name}' depends on '{need}', which is not a program", name)
    cycle = find_cycle(edges)
    if cycle:
        raise GraphError(f"a dependency cycle: {' -> '.join(cycle)}", cycle[0])


def find_cycle(edges: Mapping[str, list[str]]) -> list[str] | None:
    """A cycle as its names, the first one repeated at the end, or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(edges, WHITE)
    for root in sorted(edges):
        if color[root] != WHITE:
            continue
        # Iterative depth-first search: a long chain must not hit the recursion limit.
        path: list[str] = [root]
        stack = [iter(edges[root])]
        color[root] = GREY
        while stack:
            step = next(stack[-1], None)
            if step is None:
                stack.pop()
                color[path.pop()] = BLACK
                continue
            if step not in color:
                continue
            if color[step] == GREY:
                return [*path[path.index(step):], step]
            if color[step] == WHITE:
                color[step] = GREY
                path.append(step)
                stack.append(iter(edges[step]))
    return None


def dependents_of(specs: Iterable[ProgramSpec], name: str) -> list[str]:
    """The programs that name `name` in their depends_on."""
    return sorted(spec.name for spec in specs if name in spec.depends_on)


def stop_waves(specs: Iterable[ProgramSpec]) -> list[list[str]]:
    """The order of a shutdown, as groups stopped together: a program is stopped only after
    every program that depends on it; among those free to stop, the highest priority
    number goes first (pmd's reverse-priority order, unchanged for programs without
    dependencies). Names not in the set are ignored."""
    by_name = {spec.name: spec for spec in specs}
    waiting_on: dict[str, set[str]] = {name: set() for name in by_name}
    for spec in by_name.values():
        for need in spec.depends_on:
            if need in waiting_on:
                waiting_on[need].add(spec.name)  # `need` waits until spec has stopped
    waves: list[list[str]] = []
    left = set(by_name)
    while left:
        free = [n for n in left if not waiting_on[n] & left]
        if not free:  # a cycle (refused on the way in): stop the rest together
            free = list(left)
        top = max(by_name[n].priority for n in free)
        wave = sorted(n for n in free if by_name[n].priority == top)
        waves.append(wave)
        left -= set(wave)
    return waves
