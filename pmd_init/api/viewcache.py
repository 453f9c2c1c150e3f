"""Serialized answers of the listing routes, built once per change instead of per request.

A client that polls every program's status (a dashboard, `pmd list` in a loop, 16
connections of a load balancer's checks) asks for the same bytes until something changes.
An answer is kept as its JSON bytes with the stamp of what it showed, and served again
while the stamp holds. The stamp is:
- the number of events the supervisor has published: every state change, health
  change and readiness (each carries pid, exit code, restarts, retry time with it);
- every program (persistent and quick-start), its spec and its dependency wait, by
  identity: specs are frozen, so an add, edit, enable, removal or reload (through the API
  or SIGHUP) gives new objects, and a start that waits for its dependencies sets a new
  wait;
- the wall-clock second: uptimes, CPU figures (the sampler rescans once a second) and
  the rare counters that change without an event (log bytes dropped on a full disk) are
  at most a second old.
Taking the stamp costs a few microseconds per program; building an answer costs the
views and orjson, once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from itertools import chain
from typing import Any

import orjson

from ..supervisor.events import Event
from ..supervisor.supervisor import Supervisor

#: Distinct answers kept (one per route and query string), and their bytes together: past
#: either, the table starts over. A listing with status is about 0.7 KiB a program; a
#: client that adds a cache-busting parameter to each request makes a new key each time.
MAX_ENTRIES = 64
MAX_BYTES = 8 << 20


def dumps(value: Any) -> bytes:
    """The bytes Sanic's json() would send with pmd's dumps (server.py)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


class ViewCache:
    __slots__ = ("_supervisor", "_events", "_stamp", "_entries", "_bytes", "_unsubscribe",
                 "hits", "builds")

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._events = 0
        #: The stamp every kept answer was built under: an answer of another stamp is never
        #: served again, so none is kept past a change of it (at the latest, the next
        #: second's request lets them go).
        self._stamp: tuple[Any, ...] | None = None
        self._entries: dict[Hashable, bytes] = {}
        self._bytes = 0
        self._unsubscribe = supervisor.events.subscribe(self._on_event)
        self.hits = 0
        self.builds = 0

    def _on_event(self, event: Event) -> None:
        self._events += 1

    def stamp(self) -> tuple[Any, ...]:
        sup = self._supervisor
        parts: list[Any] = [self._events, int(time.time())]
        for program in chain(sup.programs.values(), sup.ephemeral.values()):
            parts += (program, program.spec, program.waiting)
        return tuple(parts)

    def answer(self, key: Hashable, build: Callable[[], Any]) -> bytes:
        """The JSON bytes of `build()`, reused while the stamp holds."""
        stamp = self.stamp()
        if stamp != self._stamp:
            self._forget()
            self._stamp = stamp
        body = self._entries.get(key)
        if body is not None:
            self.hits += 1
            return body
        body = dumps(build())
        self.builds += 1
        if len(self._entries) >= MAX_ENTRIES or self._bytes + len(body) > MAX_BYTES:
            self._forget()
        self._entries[key] = body
        self._bytes += len(body)
        return body

    def _forget(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def close(self) -> None:
        self._unsubscribe()
        self._forget()
