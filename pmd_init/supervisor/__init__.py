"""Programs, their state machines, spawning, restart policy, boot order, quick-start and
TTLs. What a program is (ProgramSpec) and its states (ProgramState) are pmd_init.model's."""

from .errors import Conflict, Invalid, NotFound, OperationFailed, SupervisorError
from .events import Event, EventBus, HealthEvent, StateEvent
from .instance import Instance
from .program import Program
from .supervisor import Supervisor

__all__ = [
    "Conflict", "Event", "EventBus", "HealthEvent", "Instance", "Invalid", "NotFound",
    "OperationFailed", "Program", "StateEvent", "Supervisor", "SupervisorError",
]
