"""on_fatal: what happens when a program reaches FATAL (its starts failed `startretries`
times, or a oneshot failed).

- `restart_later`: start it again after `fatal_retry_after` seconds (60 by default), with
  a fresh count of retries; again and again, as long as it keeps failing.
- `stop_container`: pmd shuts down with the program's exit code (as `shutdown_on_exit`).
- `stop_dependents`: the programs that depend on it, directly or through others, are
  stopped; when it is RUNNING again (started by hand, or by a HUP reload that changed
  it), they are started again, each through its own depends_on gate.

`FatalPolicy` follows the event stream; its only timers are the retries it has decided.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..model.graph import dependents_of
from ..model.states import ProgramState
from .events import Event, EventBus, StateEvent
from .instance import Instance
from .program import Program

if TYPE_CHECKING:
    from .runtime import Cancellable, Timers

log = logging.getLogger("pmd.fatal")

#: The wait before a restart_later retry when the program does not name one.
DEFAULT_RETRY_AFTER = 60.0


class FatalPolicy:
    def __init__(self, timers: Timers, events: EventBus,
                 programs: Callable[[], list[Program]],
                 launch: Callable[[Program], None],
                 stop: Callable[[Program], object],
                 stop_container: Callable[[Instance], None]) -> None:
        self.timers = timers
        self.programs = programs
        self.launch = launch
        self.stop = stop
        self.stop_container = stop_container
        self._retries: dict[Instance, Cancellable] = {}
        #: name of a FATAL program -> the dependents it stopped, to start on its recovery
        self.stopped_for: dict[str, list[str]] = {}
        self._unsubscribe: Callable[[], None] | None = events.subscribe(
            self._on_event, (StateEvent,), entering=(ProgramState.RUNNING, ProgramState.FATAL),
            leaving=(ProgramState.FATAL,))

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, StateEvent) or not isinstance(event.source, Instance):
            return
        inst = event.source
        program = inst.program
        if not isinstance(program, Program) or program.is_ephemeral:
            return
        if event.to_state == ProgramState.RUNNING:
            self._recovered(program)
            return
        if event.from_state == ProgramState.FATAL:
            self._cancel(inst)
        if event.to_state != ProgramState.FATAL or event.reason == "adopted":
            return
        spec = program.spec
        if spec.on_fatal == "restart_later":
            delay = spec.fatal_retry_after or DEFAULT_RETRY_AFTER
            log.warning("%s is FATAL: starting it again in %g s (on_fatal)", inst.name, delay)
            self._cancel(inst)
            self._retries[inst] = self.timers.call_later(delay, lambda: self._retry(inst))
        elif spec.on_fatal == "stop_container":
            self.stop_container(inst)
        elif spec.on_fatal == "stop_dependents":
            self._stop_dependents(program)

    def _retry(self, inst: Instance) -> None:
        self._retries.pop(inst, None)
        program = inst.program
        if inst.state == ProgramState.FATAL and isinstance(program, Program) and \
                program.spec.enabled and any(p is program for p in self.programs()):
            log.info("%s: retrying after FATAL (on_fatal: restart_later)", inst.name)
            inst.start()

    def _cancel(self, inst: Instance) -> None:
        timer = self._retries.pop(inst, None)
        if timer is not None:
            timer.cancel()

    def _stop_dependents(self, program: Program) -> None:
        specs = [p.spec for p in self.programs()]
        found: list[str] = []
        todo = [program.name]
        while todo:  # every program that needs it, directly or through another
            for name in dependents_of(specs, todo.pop()):
                if name not in found and name != program.name:
                    found.append(name)
                    todo.append(name)
        by_name = {p.name: p for p in self.programs()}
        stopped = [n for n in found if n in by_name and by_name[n].is_active()]
        if not stopped:
            return
        log.warning("%s is FATAL: stopping what depends on it: %s (on_fatal)",
                    program.name, ", ".join(stopped))
        self.stopped_for[program.name] = stopped
        for name in stopped:
            self.stop(by_name[name])

    def _recovered(self, program: Program) -> None:
        names = self.stopped_for.pop(program.name, None)
        if not names:
            return
        log.info("%s is running again: starting %s", program.name, ", ".join(names))
        by_name = {p.name: p for p in self.programs()}
        for name in names:
            dependent = by_name.get(name)
            if dependent is not None and dependent.spec.enabled:
                self.launch(dependent)

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for timer in self._retries.values():
            timer.cancel()
        self._retries.clear()
