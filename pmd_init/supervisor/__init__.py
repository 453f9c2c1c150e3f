"""Programs, their states, spawning, restart policy, boot order, quick-start and TTLs."""

from .errors import Conflict, Invalid, NotFound, OperationFailed, SupervisorError
from .events import EventBus, StateEvent
from .instance import Instance
from .program import Program
from .spec import HealthCheckSpec, PortRange, ProgramSpec, WebhooksSpec
from .states import ProgramState
from .supervisor import Supervisor, validation_to_invalid

__all__ = [
    "Conflict", "EventBus", "HealthCheckSpec", "Instance", "Invalid", "NotFound",
    "OperationFailed", "PortRange", "Program", "ProgramSpec", "ProgramState", "StateEvent",
    "Supervisor", "SupervisorError", "WebhooksSpec", "validation_to_invalid",
]
