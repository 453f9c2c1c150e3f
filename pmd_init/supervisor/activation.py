"""Start on connection (`start_on: connection`, pmd's real `lazy_load` for programs with
sockets): the program is not started at boot; pmd watches its sockets, and the first
connection to any of them starts it. pmd never accepts: the connection waits in the
backlog and is served by the program it started. When the program stops (by hand, by
`idle_stop_after`, or for good), its sockets are watched again.

`idle_stop_after`: while such a program runs, a timer looks, every `idle_stop_after`
seconds, whether any of its sockets has a connection open or waiting (the kernel's own
tables, /proc/net/tcp, tcp6 and unix); after a whole period with none, the program is
stopped with `reason: "idle"`. The timer exists only while the program runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..model.states import STOPPED_STATES, ProgramState
from .events import Event, EventBus, StateEvent
from .instance import Instance
from .program import Program

if TYPE_CHECKING:
    from .runtime import Cancellable, Timers
    from .sockets import SocketSet

log = logging.getLogger("pmd.activation")


class Activation:
    def __init__(self, timers: Timers, events: EventBus, sockets: SocketSet,
                 launch: Callable[[Program], None],
                 current: Callable[[Program], bool]) -> None:
        self.timers = timers
        self.sockets = sockets
        self.launch = launch
        #: Is this program still one of the supervisor's (not removed or replaced)?
        self.current = current
        self.activations = 0
        self._idle: dict[Instance, Cancellable] = {}
        self._unsubscribe: Callable[[], None] | None = events.subscribe(
            self._on_event, (StateEvent,), entering=(ProgramState.RUNNING, *STOPPED_STATES),
            leaving=(ProgramState.RUNNING,))

    def arm(self, program: Program) -> bool:
        """Watch the program's sockets until a connection starts it."""
        spec = program.spec
        if not spec.on_connection or not spec.enabled or program.is_active() \
                or self._unsubscribe is None:
            return False
        return self.sockets.watch([s.name for s in spec.sockets or ()],
                                  lambda: self._connected(program))

    def disarm(self, program: Program) -> None:
        self.sockets.unwatch([s.name for s in program.spec.sockets or ()])

    def _connected(self, program: Program) -> None:
        if not self.current(program) or program.is_active():
            return
        log.info("%s: a connection is waiting on its socket: starting it", program.name)
        self.activations += 1
        self.launch(program)

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, StateEvent) or not isinstance(event.source, Instance):
            return
        inst = event.source
        program = inst.program
        spec = program.spec
        if not spec.on_connection:
            return
        if event.to_state == ProgramState.RUNNING and spec.idle_stop_after is not None:
            self._watch_idle(inst, spec.idle_stop_after)
        elif event.from_state == ProgramState.RUNNING:
            timer = self._idle.pop(inst, None)
            if timer is not None:
                timer.cancel()
        if event.to_state in STOPPED_STATES and not inst.want \
                and isinstance(program, Program) and self.current(program):
            self.arm(program)

    def _watch_idle(self, inst: Instance, period: float) -> None:
        def check() -> None:
            self._idle.pop(inst, None)
            if inst.state != ProgramState.RUNNING:
                return
            names = [s.name for s in inst.program.spec.sockets or ()]
            if self.sockets.busy(names):
                self._idle[inst] = self.timers.call_later(period, check)
                return
            log.info("%s: no connection for %g s: stopping it (idle_stop_after)",
                     inst.name, period)
            inst.stop(reason="idle")

        self._idle[inst] = self.timers.call_later(period, check)

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for timer in self._idle.values():
            timer.cancel()
        self._idle.clear()

