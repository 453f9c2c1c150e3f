"""Whether boot has finished, for an orchestrator's startup probe (`/startupz`).

Boot has finished when every enabled boot program has started at least once or has
settled where it will stay without help: FATAL, or blocked by a dependency that failed.
A program still in its `delay_seconds`, or waiting for a dependency that is on its way,
has not. Readiness (`/readyz`) is a different question: a program may start and then take
a while to be ready, or never be.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..model.states import ProgramState
from .depends import NotReady

if TYPE_CHECKING:
    from .program import Program


def not_started(program: Program) -> NotReady | None:
    """Why a boot program has not started yet, or None when it has (or has settled)."""
    waiting = program.waiting_for()
    if waiting is not None:
        names, blocked = waiting
        if blocked:
            return None  # settled: it will not start without someone's help
        return NotReady(program.name, program.id, ProgramState.STOPPED.value,
                        f"waiting for {', '.join(names)}")
    for inst in program.instances.values():
        if inst.started_at is None and inst.state != ProgramState.FATAL:
            where = f"{inst.name}: " if inst.port is not None else ""
            return NotReady(program.name, program.id, inst.state.value,
                            f"{where}not started yet")
    return None
