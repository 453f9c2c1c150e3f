"""The one stream of what happens to instances: state changes (`StateEvent`), health
verdict changes (`HealthEvent`), readiness (`ReadyEvent`), the signals of a stop
(`SignalEvent`) and what a program's start waits for (`WaitingEvent`). The supervisor's own
bookkeeping, the dependency gate, the health and memory watchers, webhooks, the WebSocket
and the log streams subscribe here instead of polling the supervisor or calling each
other; each subscriber names the kinds of event (and the state changes) it takes, and is
handed only those.

Events are values (named tuples): one is built at every state change, and a tuple costs a
fifth of what a frozen dataclass of the same fields costs to build. `source`, the instance
an event is about, is for the subscribers in pmd; it is never part of what is shown."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from ..model.states import ProgramState

log = logging.getLogger("pmd.events")


class StateEvent(NamedTuple):
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
    source: object = None

    def log_line(self) -> str | None:
        """pmd's log line for it (pid1 logs one per event that has one)."""
        # a state is a str: formatted as itself, without the enum's `value` property
        line = f"{self.instance}: {self.from_state} -> {self.to_state}"
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


class HealthEvent(NamedTuple):
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
    source: object = None

    def log_line(self) -> str | None:
        return None  # the health monitor logs the verdicts that matter


class ReadyEvent(NamedTuple):
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
    source: object = None

    def log_line(self) -> str | None:
        if self.via == "running":  # RUNNING itself is logged already
            return None
        return f"{self.instance}: ready ({self.via})"

    def as_dict(self) -> dict[str, object]:
        return {"program_id": self.program_id, "program": self.program,
                "instance": self.instance, "port": self.port, "pid": self.pid,
                "time": self.time, "via": self.via, "temporary_id": self.temporary_id}


class SignalEvent(NamedTuple):
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
    source: object = None

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


class WaitingEvent(NamedTuple):
    """What a program's start waits for changed (depends_on): it began to wait, a
    dependency got there or went FATAL (`blocked` says so), or it waits no more
    (`waiting_for` empty: released, stopped, disabled or removed). Its instances stay
    STOPPED meanwhile, so no state change tells it."""

    program_id: int | None
    program: str
    waiting_for: tuple[str, ...]
    blocked: str | None
    time: float
    source: object = None

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
EventKind = type[StateEvent] | type[HealthEvent] | type[ReadyEvent] | type[SignalEvent] \
    | type[WaitingEvent]
#: Every kind of event, in the order of the union above.
KINDS: tuple[EventKind, ...] = (StateEvent, HealthEvent, ReadyEvent, SignalEvent, WaitingEvent)
#: What an event is routed by: its kind, or for a state change the states it goes between.
RouteKey = EventKind | tuple[ProgramState, ProgramState]


@dataclass(frozen=True, slots=True)
class Subscription:
    """What one subscriber takes: events of `kinds`; of the state changes, those entering
    a state of `entering` or leaving one of `leaving` (both None: every state change)."""

    callback: Subscriber
    kinds: frozenset[EventKind]
    entering: frozenset[ProgramState] | None = None
    leaving: frozenset[ProgramState] | None = None

    def takes(self, key: RouteKey) -> bool:
        if not isinstance(key, tuple):
            return key in self.kinds
        if StateEvent not in self.kinds:
            return False
        if self.entering is None and self.leaving is None:
            return True
        from_state, to_state = key
        return (self.entering is not None and to_state in self.entering) \
            or (self.leaving is not None and from_state in self.leaving)


class EventBus:
    """Synchronous fan-out: subscribers must be cheap (put on a queue, set a future).

    Each subscriber names the kinds of event it takes (every kind unless it says) and, of
    the state changes, the states whose entering or leaving it cares for; it is handed
    those, in the order they were published, and nothing else. Who takes what is worked
    out once per kind (and per pair of states) after each subscribe or unsubscribe, so an
    event costs a lookup and the calls of the subscribers that take it: a change that no
    subscriber takes costs no call, and `wants` lets a publisher skip building an event of
    a kind nobody takes.

    An event published by a subscriber (a watcher reacting to a state change) waits until
    the one being delivered has reached every subscriber: delivered at once, it would reach
    the subscribers after the publishing one before the event that caused it, and they
    would see the two in the wrong order.
    """

    __slots__ = ("_subscriptions", "_routes", "_queue", "_delivering")

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        #: RouteKey -> the callbacks that take it, in the order they subscribed.
        self._routes: dict[RouteKey, tuple[Subscriber, ...]] = {}
        self._queue: deque[Event] = deque()
        self._delivering = False

    def subscribe(self, callback: Subscriber, kinds: Iterable[EventKind] = KINDS, *,
                  entering: Iterable[ProgramState] | None = None,
                  leaving: Iterable[ProgramState] | None = None) -> Callable[[], None]:
        """Hand `callback` the events of `kinds`; of the state changes, only those that
        enter a state of `entering` or leave one of `leaving`, when either is given."""
        subscription = Subscription(
            callback, frozenset(kinds),
            None if entering is None and leaving is None else frozenset(entering or ()),
            None if entering is None and leaving is None else frozenset(leaving or ()))
        self._subscriptions.append(subscription)
        self._routes.clear()

        def unsubscribe() -> None:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
                self._routes.clear()

        return unsubscribe

    def wants(self, kind: EventKind) -> bool:
        """Whether any subscriber takes events of `kind` (other than state changes, whose
        route depends on the states)."""
        route = self._routes.get(kind)
        return bool(route if route is not None else self._route(kind))

    def _route(self, key: RouteKey) -> tuple[Subscriber, ...]:
        route = self._routes[key] = tuple(s.callback for s in self._subscriptions
                                          if s.takes(key))
        return route

    def publish(self, event: Event) -> None:
        self._queue.append(event)
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._queue:
                current = self._queue.popleft()
                key: RouteKey = (current.from_state, current.to_state) \
                    if type(current) is StateEvent else type(current)
                route = self._routes.get(key)
                if route is None:
                    route = self._route(key)
                for callback in route:
                    try:
                        callback(current)
                    except Exception:  # a broken subscriber must not break the state machine
                        log.exception("event subscriber failed")
        finally:
            self._delivering = False
