"""The operations both API families offer, over the supervisor: find a program, start,
stop, restart, reload, delete, reset, quick-start, add, edit, enable and disable."""

from .service import Service
from .tasks import OwnedTasks

__all__ = ["OwnedTasks", "Service"]
