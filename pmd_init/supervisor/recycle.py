"""max_age: recycle a running program after an age, each instance at its own moment.

An instance that reaches RUNNING gets one timer, from then, for `max_age` plus a random share of
`max_age_jitter` (circus's max_age and max_age_variance): replicas started together are
recycled apart, never all at once. The recycle is a restart whose STOPPING event says
`reason: "max_age"`; a program whose sockets pmd holds loses no connection meanwhile
(they wait in the backlog for the next run). After a re-exec the age counts from the
run's start, not from the re-exec; the jitter is drawn again.

`Recycler` follows the EventBus, like the memory watch: the timer is armed on RUNNING and
cancelled on leaving it, so nothing runs for programs without max_age, and nothing polls.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..model.states import ProgramState
from .events import Event, EventBus, StateEvent
from .instance import Instance

if TYPE_CHECKING:
    from .runtime import Cancellable, Clock, Timers

log = logging.getLogger("pmd.recycle")


class Recycler:
    def __init__(self, timers: Timers, clock: Clock, events: EventBus,
                 restart: Callable[[Instance, str], None]) -> None:
        self.timers = timers
        self.clock = clock
        self.restart = restart
        self.recycled = 0
        self._timers: dict[Instance, Cancellable] = {}
        self._unsubscribe: Callable[[], None] | None = events.subscribe(
            self._on_event, (StateEvent,), entering=(ProgramState.RUNNING,),
            leaving=(ProgramState.RUNNING,))

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, StateEvent) or not isinstance(event.source, Instance):
            return
        if event.to_state == ProgramState.RUNNING:
            self.track(event.source, adopted=event.reason == "adopted")
        elif event.from_state == ProgramState.RUNNING:
            self.untrack(event.source)

    def track(self, inst: Instance, adopted: bool = False) -> None:
        """From RUNNING on; a run adopted after a re-exec has lived its uptime already."""
        spec = inst.program.spec
        if spec.max_age is None:
            return
        self.untrack(inst)
        age = spec.max_age + random.uniform(0.0, spec.max_age_jitter or 0.0)
        lived = 0.0
        if adopted and inst.started_mono is not None:
            lived = max(0.0, self.clock.monotonic() - inst.started_mono)
        self._timers[inst] = self.timers.call_later(max(0.0, age - lived),
                                                    lambda: self._recycle(inst, age))

    def untrack(self, inst: Instance) -> None:
        timer = self._timers.pop(inst, None)
        if timer is not None:
            timer.cancel()

    def _recycle(self, inst: Instance, age: float) -> None:
        self._timers.pop(inst, None)
        log.info("%s reached its max_age (%.1f s): recycling it", inst.name, age)
        self.recycled += 1
        self.restart(inst, "max_age")

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
