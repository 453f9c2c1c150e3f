"""What a program's instances need from the world, in one small typed object.

An `Instance` runs its state machine against a `Runtime`: a clock, timers, a way to spawn and
signal a process group, a child watcher (the reaper implements it), the base environment,
log sinks (and the capture times a re-exec handed over), and the event stream it publishes
to. It never reaches back into the supervisor,
so unit tests drive it with a fake clock and a fake spawner, and the real one is built once
from the event loop and the reaper (`Runtime.on_loop`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..logs.capture import ByteCount, Capture, Forwarder, LineStyle, LogFile, read_buffer
from ..logs.times import SavedTimes
from .events import Event, EventKind
from .expansion import Expanded, expand_spec
from .spawn import Spawner, SpawnRequest, kill, killpg, spawn

if TYPE_CHECKING:
    from ..logs.shipping import Shippers, Tap
    from ..model.sockets import SocketSpec
    from ..model.spec import HealthCheckSpec, ProgramSpec

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


class ReadinessSources(Protocol):
    """The readiness sources that need something of pmd's own: probe tasks, the notify
    socket, notification-fd pipes (readiness.py's `Readiness`). Each `follow_*` returns
    the function that stops following."""

    def follow_probe(self, check: HealthCheckSpec, program: ProgramSpec, port: int | None,
                     on_ready: Callable[[], None]) -> Callable[[], None]: ...

    def notify_address(self) -> str | None:
        """$NOTIFY_SOCKET, or None when there is no socket to give."""

    def follow_notify(self, pgid: int,
                      on_message: Callable[[dict[str, str]], None]) -> Callable[[], None]: ...

    def follow_fd(self, fd: int, on_ready: Callable[[], None],
                  on_closed: Callable[[], None]) -> Callable[[], None]:
        """Own `fd` (a pipe's read end) until the returned function closes it."""


class SocketSource(Protocol):
    """The sockets pmd holds for programs (sockets.py's `SocketSet`)."""

    def fds_for(self, specs: list[SocketSpec]) -> list[tuple[str, int]]:
        """(name, fd) of each listed socket, in order; SpawnError when one is missing."""


def every_kind(kind: EventKind) -> bool:
    """A publisher's question "does anyone take this kind?" where nothing says: yes."""
    return True


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class StartQueue:
    """Restarts wait here for their turn: each loop turn runs at most `per_turn` of them.

    A spawn costs a few milliseconds (fork, exec, pipes). When many programs die at once
    (a crash storm with the start-rate limit off), starting them all in one turn would keep
    requests, log pipes and timers waiting for the whole batch. Measured with 20 programs
    exiting at once and no limit (bench/chaos.py): four a turn gave a status p99 of 119 ms,
    one a turn 24 ms, with more starts a second, since exits and pipes are served sooner.

    A restart decided at an exit runs at once (`run_now`) when it is the turn's first start
    and nothing waits here: a crash loop's restart does not wait a loop turn, which is a
    turn of other work in pmd's thread while the exit waits for its restart.
    """

    __slots__ = ("_timers", "_per_turn", "_queue", "_scheduled", "_turn_used")

    def __init__(self, timers: Timers, per_turn: int = 1) -> None:
        self._timers = timers
        self._per_turn = per_turn
        self._queue: deque[QueuedStart] = deque()
        self._scheduled = False
        #: A start ran in this loop turn (run_now, or the queue's own turn).
        self._turn_used = False

    def run_now(self, callback: Callable[[], None]) -> bool:
        """Run `callback` now, if it is this turn's first start and no start waits in the
        queue (True); else nothing is done (False) and the caller pushes it."""
        if self._turn_used or self._queue:
            return False
        self._use_turn()
        callback()
        return True

    def _use_turn(self) -> None:
        if not self._turn_used:
            self._turn_used = True
            self._timers.call_soon(self._turn_over)

    def _turn_over(self) -> None:
        self._turn_used = False

    def push(self, callback: Callable[[], None]) -> Cancellable:
        entry = QueuedStart(callback)
        self._queue.append(entry)
        if not self._scheduled:
            self._scheduled = True
            self._timers.call_soon(self._run)
        return entry

    def _run(self) -> None:
        started = 0
        try:
            while self._queue and started < self._per_turn:
                entry = self._queue.popleft()
                if entry.cancelled:
                    continue
                entry.cancelled = True  # done: a later cancel() is a no-op
                self._use_turn()
                entry.callback()
                started += 1
        finally:
            if self._queue:
                self._timers.call_soon(self._run)
            else:
                self._scheduled = False

    def __len__(self) -> int:
        return sum(1 for entry in self._queue if not entry.cancelled)


class QueuedStart:
    """A start waiting in a StartQueue (what push returns)."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


#: Expansions a Runtime keeps for the next start of their spec (the most recent ones).
EXPANSIONS_KEPT = 32


CaptureFactory = Callable[[int, "LogFile | None", "Forwarder | None", bytes,
                           Callable[[Capture], None], "ByteCount | None",
                           "LineStyle | None", "Tap | None"], Capture]


@dataclass(slots=True)
class Runtime:
    timers: Timers
    children: ChildWatcher
    publish: Callable[[Event], None]
    log_dir: Path
    clock: Clock = field(default_factory=SystemClock)
    spawn: Callable[[SpawnRequest], Child] = spawn
    killpg: Callable[[int, int], bool] = killpg
    kill: Callable[[int, int], bool] = kill
    #: Whether anyone takes events of a kind (the bus's `wants`): an event of a kind that
    #: nobody takes is not built.
    wants: Callable[[EventKind], bool] = every_kind
    base_env: Mapping[str, str] = field(default_factory=dict)
    forwarders: tuple[Forwarder | None, Forwarder | None] = (None, None)
    #: PMD_LOG_FORWARD: how programs without a `log_forward` of their own forward
    forward_mode: str = "prefixed"
    capture: CaptureFactory | None = None
    #: The log targets' shippers; None when there are none (no tap on any capture).
    shipping: Shippers | None = None
    #: Capture times of lines logged before a re-exec, until their files are opened again:
    #: adopting instances fill it, their log files claim from it, the log routes read it.
    saved_times: SavedTimes = field(default_factory=SavedTimes)
    #: Probes, the notify socket and notification fds; None: those sources are not acted
    #: on (unit tests without a loop).
    readiness: ReadinessSources | None = None
    #: The sockets programs list; None: a program with sockets cannot start.
    sockets: SocketSource | None = None
    #: Where scheduled restarts wait for their turn (built from `timers`).
    starts: StartQueue = field(init=False)
    #: id(spec) -> (spec, base_env, its expansion): see `expand`.
    _expanded: dict[int, tuple[ProgramSpec, Mapping[str, str], Expanded]] = \
        field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.starts = StartQueue(self.timers)

    def expand(self, spec: ProgramSpec) -> Expanded:
        """expand_spec(spec, base_env), kept for the spec's next start (a restart) when it
        has no env file: its expansion then depends on the spec and the base environment
        alone, and neither changes (an edit or a reload makes a new spec). An env file is
        read again at each start, as the configuration's docs promise."""
        if spec.env_file:
            return expand_spec(spec, self.base_env)
        kept = self._expanded.pop(id(spec), None)
        if kept is None or kept[0] is not spec or kept[1] is not self.base_env:
            kept = (spec, self.base_env, expand_spec(spec, self.base_env))
            if len(self._expanded) >= EXPANSIONS_KEPT:
                del self._expanded[next(iter(self._expanded))]  # the least recently used
        self._expanded[id(spec)] = kept
        return kept[2]

    def tap(self, program: str, instance: str, stream: str, pid: int | None) -> Tap | None:
        """What ships this stream's lines to the log targets that select the program."""
        if self.shipping is None:
            return None
        from ..logs.shipping import Source  # imported only where there are log targets

        return self.shipping.tap(Source(program, instance, stream, pid))

    @classmethod
    def on_loop(cls, loop: asyncio.AbstractEventLoop, children: ChildWatcher,
                publish: Callable[[Event], None], log_dir: Path,
                base_env: Mapping[str, str], forward: bool | str,
                wants: Callable[[EventKind], bool] = every_kind) -> Runtime:
        buffer = read_buffer()  # every capture reads into it, one chunk at a time

        def capture(fd: int, logfile: LogFile | None, forward_to: Forwarder | None,
                    prefix: bytes, on_eof: Callable[[Capture], None],
                    count: ByteCount | None, style: LineStyle | None,
                    tap: Tap | None) -> Capture:
            return Capture(loop, fd, logfile, forward_to, prefix, on_eof=on_eof, count=count,
                           style=style, buffer=buffer, tap=tap)

        return cls(
            timers=loop, children=children, publish=publish, log_dir=log_dir,
            base_env=base_env, capture=capture, wants=wants,
            # one /dev/null and the encodings of recent spawns, for the restarts
            spawn=Spawner().spawn,
            # always there: a program's own log_forward may forward when the default is off
            forwarders=(Forwarder(loop, 1), Forwarder(loop, 2)),
            forward_mode=("prefixed" if forward else "off") if isinstance(forward, bool)
            else forward,
        )

