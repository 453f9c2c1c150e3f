"""Programs, their state machines, spawning, restart policy, boot order, quick-start and
TTLs. What a program is (ProgramSpec) and its states (ProgramState) are pmd_init.model's.

The names below are re-exported on first use, not at import: pid1 reaches
`supervisor.spawn` for the main command before anything else, and importing this package
must not bring pydantic and every watcher along (a tini-style start needs none of them,
and a full start sets pydantic up only after its signal handlers are in).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import Conflict, Invalid, NotFound, OperationFailed, SupervisorError
    from .events import Event, EventBus, HealthEvent, StateEvent
    from .instance import Instance
    from .program import Program
    from .supervisor import Supervisor

#: Each re-exported name and the module that defines it.
EXPORTS = {
    "Conflict": "errors", "Invalid": "errors", "NotFound": "errors",
    "OperationFailed": "errors", "SupervisorError": "errors", "Event": "events",
    "EventBus": "events", "HealthEvent": "events", "StateEvent": "events",
    "Instance": "instance", "Program": "program", "Supervisor": "supervisor",
}

__all__ = [
    "Conflict", "Event", "EventBus", "HealthEvent", "Instance", "Invalid", "NotFound",
    "OperationFailed", "Program", "StateEvent", "Supervisor", "SupervisorError",
]


def __getattr__(name: str) -> Any:
    module = EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
