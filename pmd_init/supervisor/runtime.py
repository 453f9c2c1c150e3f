"""What a program's instances need from the world, in one small typed object.

An `Instance` runs its state machine against a `Runtime`: a clock, timers, a way to spawn and
signal a process group, a child watcher (the reaper implements it), the base environment,
log sinks, and the event stream it publishes to. It never reaches back into the supervisor,
so unit tests drive it with a fake clock and a fake spawner, and the real one is built once
from the event loop and the reaper (`Runtime.on_loop`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..logs.capture import Capture, Forwarder, LogFile
from .events import StateEvent
from .spawn import SpawnRequest, killpg, spawn

#: A raw wait status, or None when the exit of a non-child (watched by pidfd) is unknown.
ExitCallback = Callable[[int | None], None]


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """The part of an event loop an instance uses (asyncio's loop is one)."""

    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable: ...

    def call_soon(self, callback: Callable[[], object]) -> Cancellable: ...

    def create_future(self) -> asyncio.Future[Any]: ...


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds (shown to users, stored across re-exec)."""

    def monotonic(self) -> float:
        """Seconds for intervals (uptime, start-rate windows)."""


class ChildWatcher(Protocol):
    """Routes a child's exit to its owner; implemented by pid1's reaper."""

    def watch(self, pid: int, on_exit: ExitCallback) -> None: ...

    def watch_foreign(self, pid: int, on_exit: ExitCallback) -> bool: ...

    def unwatch(self, pid: int) -> None: ...

    def keep_early(self, pids: set[int]) -> None:
        """Pids about to be adopted: an exit reaped before `watch` is kept for it."""


class Child(Protocol):
    """A started process: subprocess.Popen, or a test's fake."""

    pid: int
    returncode: int | None


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


CaptureFactory = Callable[[int, "LogFile | None", "Forwarder | None", bytes,
                           Callable[[Capture], None]], Capture]


@dataclass(slots=True)
class Runtime:
    timers: Timers
    children: ChildWatcher
    publish: Callable[[StateEvent], None]
    log_dir: Path
    clock: Clock = field(default_factory=SystemClock)
    spawn: Callable[[SpawnRequest], Child] = spawn
    killpg: Callable[[int, int], bool] = killpg
    base_env: Mapping[str, str] = field(default_factory=dict)
    forwarders: tuple[Forwarder | None, Forwarder | None] = (None, None)
    capture: CaptureFactory | None = None

    @classmethod
    def on_loop(cls, loop: asyncio.AbstractEventLoop, children: ChildWatcher,
                publish: Callable[[StateEvent], None], log_dir: Path,
                base_env: Mapping[str, str], forward: bool) -> Runtime:
        def capture(fd: int, logfile: LogFile | None, forward_to: Forwarder | None,
                    prefix: bytes, on_eof: Callable[[Capture], None]) -> Capture:
            return Capture(loop, fd, logfile, forward_to, prefix, on_eof=on_eof)

        return cls(
            timers=loop, children=children, publish=publish, log_dir=log_dir,
            base_env=base_env, capture=capture,
            forwarders=(Forwarder(loop, 1), Forwarder(loop, 2)) if forward else (None, None),
        )

