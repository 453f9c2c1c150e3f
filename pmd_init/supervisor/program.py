"""A program: its spec and its instances (one, or one per port of its port range)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from ..model.graph import Unmet
from ..model.spec import ProgramSpec
from ..model.states import ACTIVE_STATES, RUNNING_STATES, ProgramState
from .instance import Instance

if TYPE_CHECKING:
    from .runtime import Runtime


class Program:
    __slots__ = ("runtime", "spec", "_instances", "temporary_id", "created_at",
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
        #: Its one instance (a program without a port range, or of a range of one port),
        #: else its instances by port: a dict for one instance is 0.2 KiB a program.
        self._instances: Instance | dict[int | None, Instance]
        self.make_instances(spec.ports())

    @property
    def instances(self) -> Mapping[int | None, Instance]:
        """Its instances by port (None: the one of a program without a port range)."""
        held = self._instances
        return {held.port: held} if isinstance(held, Instance) else held

    def make_instances(self, ports: Iterable[int | None]) -> None:
        """A fresh instance for each port (at the start, or after a change of ports)."""
        made = {port: self.new_instance(port) for port in ports}
        self._instances = next(iter(made.values())) if len(made) == 1 else made

    def replace_instance(self, new: Instance) -> None:
        """`new` serves its port from now on, in place of the instance that did (a
        rolling reload's replacement)."""
        held = self._instances
        if isinstance(held, Instance):
            assert held.port == new.port
            self._instances = new
        else:
            held[new.port] = new

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
        held = self._instances
        if isinstance(held, Instance):
            return held if held.port == port else None
        return held.get(port)

    @property
    def primary(self) -> Instance:
        held = self._instances
        return held if isinstance(held, Instance) else next(iter(held.values()))

    @property
    def state(self) -> ProgramState:
        """One state for the whole program: the most alive of its instances."""
        held = self._instances
        states = [held.state] if isinstance(held, Instance) else \
            [i.state for i in held.values()]
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
