"""The one stream of state changes. The API, WebSocket, webhooks and metrics subscribe here
instead of polling the supervisor."""

from __future__ import annotations

import logging
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


Subscriber = Callable[[StateEvent], None]


class EventBus:
    """Synchronous fan-out: subscribers must be cheap (put on a queue, set a future)."""

    __slots__ = ("_subscribers",)

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def publish(self, event: StateEvent) -> None:
        for callback in tuple(self._subscribers):
            try:
                callback(event)
            except Exception:  # a broken subscriber must not break the state machine
                log.exception("event subscriber failed")
