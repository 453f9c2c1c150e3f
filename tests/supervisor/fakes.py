"""A fake world for driving instances without real processes or real time: clock, timers,
child watcher, spawner and killpg in one object (what a Runtime needs)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pmd_init.model.states import ProgramState
from pmd_init.supervisor.events import Event, ReadyEvent, StateEvent
from pmd_init.supervisor.runtime import ExitCallback, Runtime
from pmd_init.supervisor.spawn import SpawnError, SpawnRequest

EPOCH = 1_700_000_000.0


def exited(code: int) -> int:
    """A raw wait status for a normal exit with `code`."""
    return code << 8


class Handle:
    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeWorld:
    """Clock, timers, child watcher, spawner and killpg in one: what a Runtime needs."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Handle]] = []
        self._seq = itertools.count()
        self._loop = asyncio.new_event_loop()
        self.watched: dict[int, ExitCallback] = {}
        self.pids = itertools.count(1000)
        self.spawned: list[SpawnRequest] = []
        self.spawn_fails: str | None = None
        self.signals: list[tuple[int, int]] = []
        self.events: list[StateEvent] = []
        self.ready: list[ReadyEvent] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the instances' futures belong to, for driving a waiter."""
        return self._loop

    def close(self) -> None:
        self._loop.close()

    # Clock
    def time(self) -> float:
        return EPOCH + self.now

    def monotonic(self) -> float:
        return self.now

    # Timers
    def call_later(self, delay: float, callback: Callable[[], object]) -> Handle:
        handle = Handle(self.now + delay, callback)
        heapq.heappush(self._queue, (handle.when, next(self._seq), handle))
        return handle

    def call_soon(self, callback: Callable[[], object]) -> Handle:
        return self.call_later(0.0, callback)

    def create_future(self) -> asyncio.Future[Any]:
        return self._loop.create_future()

    def advance(self, seconds: float = 0.0) -> None:
        """Run every timer due within `seconds`, in order, with the clock at its time."""
        until = self.now + seconds
        while self._queue and self._queue[0][0] <= until:
            when, _, handle = heapq.heappop(self._queue)
            self.now = max(self.now, when)
            if not handle.cancelled:
                handle.callback()
        self.now = until

    def pending(self) -> list[float]:
        return sorted(h.when - self.now for _, _, h in self._queue if not h.cancelled)

    # Child watcher
    def watch(self, pid: int, on_exit: ExitCallback) -> None:
        self.watched[pid] = on_exit

    def watch_foreign(self, pid: int, on_exit: ExitCallback) -> bool:
        if pid < 0:  # the tests' way of saying "already gone"
            return False
        self.watched[pid] = on_exit
        return True

    def unwatch(self, pid: int) -> None:
        self.watched.pop(pid, None)

    def keep_early(self, pids: set[int]) -> None:
        pass

    def exit(self, pid: int | None, status: int | None) -> None:
        """The reaper's delivery of pid's exit."""
        assert pid is not None
        self.watched.pop(pid)(status)

    # Spawning and signals
    def spawn(self, req: SpawnRequest) -> FakeChild:
        if self.spawn_fails:
            raise SpawnError(self.spawn_fails)
        self.spawned.append(req)
        return FakeChild(next(self.pids))

    def killpg(self, pid: int, signum: int) -> bool:
        self.signals.append((pid, signum))
        return True

    def runtime(self, publish: Callable[[Event], None] | None = None) -> Runtime:
        """`publish`: an event bus's, besides the record kept in `events` (state changes)
        and `ready`."""

        def record(event: Event) -> None:
            if isinstance(event, StateEvent):
                self.events.append(event)
            elif isinstance(event, ReadyEvent):
                self.ready.append(event)
            if publish is not None:
                publish(event)

        return Runtime(timers=self, children=self, publish=record,
                       log_dir=Path("/nonexistent"), clock=self, spawn=self.spawn,
                       killpg=self.killpg)

    def path(self) -> list[tuple[ProgramState, ProgramState]]:
        return [(e.from_state, e.to_state) for e in self.events]


@dataclass
class FakeChild:
    pid: int
    returncode: int | None = None
