"""A program: its spec and its instances (one, or one per port of its port range)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..model.graph import Unmet
from ..model.spec import ProgramSpec
from ..model.states import ACTIVE_STATES, RUNNING_STATES, ProgramState
from .instance import Instance

if TYPE_CHECKING:
    from .runtime import Runtime


class Program:
    __slots__ = ("runtime", "spec", "instances", "temporary_id", "created_at",
                 "expires_at", "finished_at", "_ttl_timer", "waiting", "__weakref__")

    def __init__(self, runtime: Runtime, spec: ProgramSpec,
                 temporary_id: str | None = None) -> None:
        self.runtime = runtime
        self.spec = spec
        self.temporary_id = temporary_id
        self.created_at: float | None = None
        self.expires_at: float | None = None
        self.finished_at: float | None = None
        self._ttl_timer: asyncio.TimerHandle | None = None
        #: While it waits for its dependencies (supervisor/depends.py): what does not hold.
        self.waiting: Callable[[], list[Unmet]] | None = None
        self.instances: dict[int | None, Instance] = {
            port: Instance(self, port, runtime) for port in spec.ports()
        }

    def new_instance(self, port: int | None) -> Instance:
        """A slot's next instance: after a change of ports, or a reload's replacement."""
        return Instance(self, port, self.runtime)

    @property
    def id(self) -> int | None:
        return self.spec.id

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def key(self) -> str:
        """How re-exec state and logs refer to this program."""
        return self.temporary_id or f"id:{self.spec.id}"

    @property
    def log_folder(self) -> str:
        return self.spec.name

    @property
    def is_ephemeral(self) -> bool:
        return self.temporary_id is not None

    def instance(self, port: int | None) -> Instance | None:
        return self.instances.get(port)

    @property
    def primary(self) -> Instance:
        return next(iter(self.instances.values()))

    @property
    def state(self) -> ProgramState:
        """One state for the whole program: the most alive of its instances."""
        states = [i.state for i in self.instances.values()]
        for candidate in (ProgramState.RUNNING, ProgramState.STARTING, ProgramState.STOPPING,
                          ProgramState.BACKOFF, ProgramState.FATAL, ProgramState.EXITED):
            if candidate in states:
                return candidate
        return ProgramState.STOPPED

    def waiting_for(self) -> tuple[list[str], str | None] | None:
        """While it waits to start: what for (`db (healthy)`), and why it is blocked, if
        a dependency will not get there on its own. None when it does not wait."""
        if self.waiting is None:
            return None
        unmet = self.waiting()
        blocked = [u.blocked for u in unmet if u.blocked]
        return [str(u) for u in unmet], "; ".join(blocked) or None

    def is_active(self) -> bool:
        return any(i.state in ACTIVE_STATES or i.state in RUNNING_STATES
                   for i in self.instances.values())

    def start(self, delay: float = 0) -> None:
        for inst in self.instances.values():
            inst.start(delay)

    def stop_all(self) -> list[asyncio.Future[ProgramState]]:
        return [inst.stop() for inst in self.instances.values()]
