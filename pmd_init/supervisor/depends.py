"""Starting programs once what they depend on holds (`depends_on`).

A program asked to start (at boot, by a reload, an add or an enable) whose conditions do
not all hold waits here instead: its instances stay STOPPED, and its status says what it
waits for, or why it is blocked (a dependency gone FATAL, or a `completed_successfully`
dependency that exited with another code). Nothing polls: the gate follows the event
stream, and after a turn with state, health or readiness changes it releases every waiting
program whose conditions now hold, in priority order, each after its own delay_seconds.

Releases run in a callback of their own, never inside the delivery of the event that
caused them: that delivery may be the reaper's pass, which must only change states.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..model.graph import Unmet
from ..model.states import ProgramState
from .events import Event, WaitingEvent
from .health import HEALTHY

if TYPE_CHECKING:
    from .instance import Instance
    from .program import Program
    from .runtime import Cancellable, Clock, Timers

S = ProgramState


def _holds(inst: Instance, condition: str) -> bool:
    spec = inst.program.spec
    if spec.oneshot and condition in ("running", "ready", "healthy"):
        condition = "completed_successfully"  # a task is ready when it has done its job
    if condition == "healthy" and spec.health_check is None:
        condition = "ready"
    if condition == "started":
        return inst.started_at is not None
    if condition == "running":
        return inst.state == S.RUNNING
    if condition == "ready":
        return inst.state == S.RUNNING and inst.ready_at is not None
    if condition == "healthy":
        return inst.state == S.RUNNING and inst.health_status == HEALTHY
    if condition == "completed":
        return inst.state in (S.EXITED, S.FATAL) and inst.exit_code is not None
    return inst.state == S.EXITED and inst.exit_code is not None \
        and spec.expects_exit(inst.exit_code)


def _blocked(inst: Instance, condition: str) -> str | None:
    """Why a condition that does not hold never will without someone's help."""
    if inst.want and inst.state != S.FATAL:
        return None  # on its way (starting, backing off, a restart scheduled)
    if inst.state == S.FATAL:
        if inst.exit_code is not None:
            return f"{inst.name} exited {inst.exit_code}"
        return f"{inst.name} failed to start" + \
            (f": {inst.spawn_error}" if inst.spawn_error else "")
    if inst.state == S.EXITED and inst.exit_code is not None and condition != "completed":
        return f"{inst.name} exited {inst.exit_code}"
    return None


def unmet(program: Program, lookup: Callable[[str], Program | None]) -> list[Unmet]:
    """The dependencies of `program` that do not hold now (every instance of a port-range
    dependency must hold)."""
    missing: list[Unmet] = []
    for name, condition in program.spec.depends_on.items():
        dep = lookup(name)
        if dep is None:  # refused on the way in; kept readable if it ever happens
            missing.append(Unmet(name, condition, f"{name} does not exist"))
            continue
        failing = [i for i in dep.instances.values() if not _holds(i, condition)]
        if failing:
            reasons = [r for r in (_blocked(i, condition) for i in failing) if r]
            missing.append(Unmet(name, condition, reasons[0] if reasons else None))
    return missing


@dataclass(frozen=True, slots=True)
class NotReady:
    """A boot program that is not in its ready condition, and why."""

    name: str
    id: int | None
    state: str
    reason: str


def not_ready(program: Program) -> NotReady | None:
    """Whether an enabled boot program is where the container's readiness wants it: a
    oneshot completed successfully, any other ready (its readiness source said so, or it
    is RUNNING when it declares none); every instance of a port range. None when it is."""
    condition = "completed_successfully" if program.spec.oneshot else "ready"
    failing = [i for i in program.instances.values() if not _holds(i, condition)]
    if not failing:
        return None
    inst = failing[0]
    return NotReady(program.name, program.id, inst.state.value,
                    _why_not_ready(program, inst))


def _why_not_ready(program: Program, inst: Instance) -> str:
    waiting = program.waiting_for()
    if waiting is not None:
        names, blocked = waiting
        return f"blocked: {blocked}" if blocked else f"waiting for {', '.join(names)}"
    where = f"{inst.name}: " if inst.port is not None else ""
    readiness = program.spec.readiness
    if inst.state in (S.STARTING, S.RUNNING):
        if readiness is None or inst.ready_at is not None:  # ready: RUNNING still to come
            return f"{where}starting"
        return f"{where}not ready yet ({readiness.source})"
    if inst.state == S.BACKOFF:
        return f"{where}backing off ({inst.backoff_reason or 'failed_start'})"
    if inst.state == S.FATAL:
        if inst.exit_code is not None:
            why = f" ({inst.backoff_reason})" if inst.backoff_reason else ""
            return f"{where}FATAL, exited {inst.exit_code}{why}"
        return f"{where}FATAL" + (f": {inst.spawn_error}" if inst.spawn_error else "")
    if inst.state == S.EXITED:
        return f"{where}exited {inst.exit_code}"
    return f"{where}{inst.state.value.lower()}"


class DependencyGate:
    """The programs that want to start and wait for their dependencies.

    What each one waits for is published (a WaitingEvent) when it changes, once per loop
    turn, after the turn's events: the stream's readers see a program begin to wait, get
    blocked, and stop waiting, as they see its state change."""

    __slots__ = ("_timers", "_lookup", "_release", "_waiting", "_check", "_closed",
                 "_clock", "_publish", "_shown")

    def __init__(self, timers: Timers, lookup: Callable[[str], Program | None],
                 release: Callable[[Program], None], clock: Clock | None = None,
                 publish: Callable[[WaitingEvent], None] | None = None) -> None:
        self._timers = timers
        self._lookup = lookup
        self._release = release
        self._clock = clock
        self._publish = publish
        #: In the order they asked; a dict keeps that order and finds one at once.
        self._waiting: dict[Program, None] = {}
        self._check: Cancellable | None = None
        self._closed = False
        #: What was last published for each program that waits (or waited).
        self._shown: dict[Program, tuple[tuple[str, ...], str | None]] = {}

    def unmet(self, program: Program) -> list[Unmet]:
        return unmet(program, self._lookup)

    def request(self, program: Program) -> bool:
        """True: start it now. False: it waits here until its conditions hold."""
        if self._closed:
            return False
        if not program.spec.depends_on or not self.unmet(program):
            self.forget(program)
            return True
        self._waiting[program] = None
        program.waiting = lambda: self.unmet(program)
        self.poke()  # publishes that it waits, after this turn
        return False

    def forget(self, program: Program) -> None:
        """Not wanted any more (stopped, disabled, removed) or started by force."""
        self._waiting.pop(program, None)
        program.waiting = None
        self._show(program, ((), None))

    def is_waiting(self, program: Program) -> bool:
        return program in self._waiting

    def waiting(self) -> list[Program]:
        return list(self._waiting)

    def on_event(self, event: Event) -> None:
        """Any change may make a condition hold: check once, after this loop turn's
        events, rather than for each of them."""
        if not isinstance(event, WaitingEvent):  # its own say nothing new
            self.poke()

    def poke(self) -> None:
        if self._waiting and self._check is None and not self._closed:
            self._check = self._timers.call_soon(self.release_ready)

    def release_ready(self) -> None:
        self._check = None
        if self._closed:
            return
        ready = [p for p in self._waiting if not self.unmet(p)]
        # Released together: priority orders them, as at boot.
        for program in sorted(ready, key=lambda p: (p.spec.priority, p.id or 0)):
            if program in self._waiting:
                self.forget(program)
                self._release(program)
        for program in list(self._waiting):
            waiting = program.waiting_for()
            if waiting is not None:
                self._show(program, (tuple(waiting[0]), waiting[1]))

    def _show(self, program: Program, now: tuple[tuple[str, ...], str | None]) -> None:
        """Publish what `program` waits for, if it changed (nothing: it waits no more)."""
        before = self._shown.get(program, ((), None))
        if now == before:
            return
        if now[0]:
            self._shown[program] = now
        else:
            self._shown.pop(program, None)
        if self._publish is not None and self._clock is not None:
            self._publish(WaitingEvent(program.id, program.name, now[0], now[1],
                                       self._clock.time(), source=program))

    def close(self) -> None:
        """Shutdown: nothing waiting is started any more."""
        self._closed = True
        for program in list(self._waiting):
            self.forget(program)
        if self._check is not None:
            self._check.cancel()
            self._check = None
