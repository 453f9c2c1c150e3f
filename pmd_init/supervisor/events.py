"""The one stream of what happens to instances: state changes (`StateEvent`), health
verdict changes (`HealthEvent`), readiness (`ReadyEvent`), the signals of a stop
(`SignalEvent`) and what a program's start waits for (`WaitingEvent`). The supervisor's own
bookkeeping, the dependency gate, the health and memory watchers, webhooks, the WebSocket
and the log streams subscribe here instead of polling the supervisor or calling each
other; each subscriber handles the event types it wants and ignores the rest."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..model.states import ProgramState

log = logging.getLogger("pmd.events")


@dataclass(frozen=True, slots=True)
class StateEvent:
    program_id: int | None
    program: str
    instance: str
    port: int | None
    from_state: ProgramState
    to_state: ProgramState
    pid: int | None
    exit_code: int | None
    time: float
    temporary_id: str | None = None
    #: Why, when the state alone does not say: "failed_start" or "start_limit" for
    #: BACKOFF, "adopted" when a new pmd takes over a process it did not start.
    reason: str | None = None
    #: When a BACKOFF ends (wall clock).
    retry_at: float | None = None
    #: The instance itself: names are ambiguous while a reload runs two of one port.
    source: object = field(default=None, compare=False, repr=False)

    def log_line(self) -> str | None:
        """pmd's log line for it (pid1 logs one per event that has one)."""
        line = f"{self.instance}: {self.from_state.value} -> {self.to_state.value}"
        if self.pid:
            line += f" pid {self.pid}"
        if self.exit_code is not None:
            line += f" exit {self.exit_code}"
        if self.reason is not None:
            line += f" ({self.reason})"
        return line

    def as_dict(self) -> dict[str, object]:
        return {
            "program_id": self.program_id,
            "program": self.program,
            "instance": self.instance,
            "port": self.port,
            "from": self.from_state.value,
            "to": self.to_state.value,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "time": self.time,
            "temporary_id": self.temporary_id,
            "reason": self.reason,
            "retry_at": self.retry_at,
        }


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """An instance's health verdict changed: `unknown`, `healthy` or `unhealthy`."""

    program_id: int | None
    program: str
    instance: str
    port: int | None
    from_status: str
    to_status: str
    time: float
    temporary_id: str | None = None
    #: The instance itself, as in StateEvent.
    source: object = field(default=None, compare=False, repr=False)

    def log_line(self) -> str | None:
        return None  # the health monitor logs the verdicts that matter


@dataclass(frozen=True, slots=True)
class ReadyEvent:
    """An instance became ready: its readiness source said so (READY=1, a newline on its
    notification fd, a matching log line, a first successful probe), or, for a program
    that declares none, it reached RUNNING."""

    program_id: int | None
    program: str
    instance: str
    port: int | None
    pid: int | None
    time: float
    #: notify, fd, log_line, probe, or running (no readiness declared)
    via: str
    temporary_id: str | None = None
    source: object = field(default=None, compare=False, repr=False)

    def log_line(self) -> str | None:
        if self.via == "running":  # RUNNING itself is logged already
            return None
        return f"{self.instance}: ready ({self.via})"

    def as_dict(self) -> dict[str, object]:
        return {"program_id": self.program_id, "program": self.program,
                "instance": self.instance, "port": self.port, "pid": self.pid,
                "time": self.time, "via": self.via, "temporary_id": self.temporary_id}


@dataclass(frozen=True, slots=True)
class SignalEvent:
    """pmd sent a signal to an instance's process group while stopping it: step `step` of
    `steps` of its stop_signal list (`wait` seconds until the next), or the SIGKILL after
    the last step (`step` = steps + 1, wait 0)."""

    program_id: int | None
    program: str
    instance: str
    port: int | None
    pid: int
    signal: str
    step: int
    steps: int
    wait: float
    time: float
    temporary_id: str | None = None
    source: object = field(default=None, compare=False, repr=False)

    def log_line(self) -> str | None:
        line = (f"{self.instance}: stop step {self.step} of {self.steps}: "
                f"SIG{self.signal.removeprefix('SIG')} to pid {self.pid}")
        if self.step <= self.steps:
            line += f", next in {self.wait:g} s"
        return line

    def as_dict(self) -> dict[str, object]:
        return {"program_id": self.program_id, "program": self.program,
                "instance": self.instance, "port": self.port, "pid": self.pid,
                "signal": self.signal, "step": self.step, "steps": self.steps,
                "wait": self.wait, "time": self.time, "temporary_id": self.temporary_id}


@dataclass(frozen=True, slots=True)
class WaitingEvent:
    """What a program's start waits for changed (depends_on): it began to wait, a
    dependency got there or went FATAL (`blocked` says so), or it waits no more
    (`waiting_for` empty: released, stopped, disabled or removed). Its instances stay
    STOPPED meanwhile, so no state change tells it."""

    program_id: int | None
    program: str
    waiting_for: tuple[str, ...]
    blocked: str | None
    time: float
    source: object = field(default=None, compare=False, repr=False)

    def log_line(self) -> str | None:
        if not self.waiting_for:  # no longer waiting: its STARTING (or STOPPED) follows
            return None
        blocked = f" (blocked: {self.blocked})" if self.blocked else ""
        return f"{self.program}: waiting for {', '.join(self.waiting_for)}{blocked}"

    def as_dict(self) -> dict[str, object]:
        return {"program_id": self.program_id, "program": self.program,
                "waiting_for": list(self.waiting_for), "blocked": self.blocked,
                "time": self.time}


Event = StateEvent | HealthEvent | ReadyEvent | SignalEvent | WaitingEvent
Subscriber = Callable[[Event], None]


class EventBus:
    """Synchronous fan-out: subscribers must be cheap (put on a queue, set a future).

    An event published by a subscriber (a watcher reacting to a state change) waits until
    the one being delivered has reached every subscriber: delivered at once, it would reach
    the subscribers after the publishing one before the event that caused it, and they
    would see the two in the wrong order.
    """

    __slots__ = ("_subscribers", "_queue", "_delivering")

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._queue: deque[Event] = deque()
        self._delivering = False

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def publish(self, event: Event) -> None:
        self._queue.append(event)
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._queue:
                current = self._queue.popleft()
                for callback in tuple(self._subscribers):
                    try:
                        callback(current)
                    except Exception:  # a broken subscriber must not break the state machine
                        log.exception("event subscriber failed")
        finally:
            self._delivering = False
