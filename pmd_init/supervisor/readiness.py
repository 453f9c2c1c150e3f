"""How a run of a program says it is ready, for the sources that need a watcher of their
own. Each watcher calls `on_ready` at most once and holds nothing after `close`.

`LogLineWatch` (readiness `log_line`) listens to the run's captures through their
subscribe API: it sees each chunk once it is in the log file, and matches whole lines only
(a line split across two reads is joined first).

`Readiness`, owned by the supervisor and reached by instances through their Runtime, holds
what the other sources need of pmd's own: the tasks of startup probes (readiness `probe`:
a health check object run until its first success, with probes.py's probes).
`close` (at shutdown) cancels and awaits all of it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from ..logs.capture import Capture
from .probes import probe

if TYPE_CHECKING:
    from ..model.spec import HealthCheckSpec, ProgramSpec
    from .runtime import ChildWatcher

log = logging.getLogger("pmd.readiness")

#: Seconds between two attempts of a startup probe whose check names no `interval` (a
#: health check's default, 30 s, is a liveness rhythm, far too slow to wait for a start).
PROBE_INTERVAL = 1.0
#: A line longer than this is matched by its first part: a program that never writes a
#: newline must not make pmd buffer without end.
MAX_LINE = 64 * 1024


class LogLineWatch:
    __slots__ = ("_pattern", "_on_ready", "_partial", "_unsubscribe")

    def __init__(self, captures: Iterable[Capture], pattern: str,
                 on_ready: Callable[[], None]) -> None:
        self._pattern = re.compile(pattern)
        self._on_ready: Callable[[], None] | None = on_ready
        self._partial: dict[int, bytes] = {}
        self._unsubscribe = [self._listen(index, capture)
                             for index, capture in enumerate(captures)]

    def _listen(self, index: int, capture: Capture) -> Callable[[], None]:
        return capture.subscribe(lambda data: self._feed(index, data))

    def _feed(self, stream: int, data: bytes) -> None:
        if self._on_ready is None:
            return
        text = self._partial.pop(stream, b"") + data
        *lines, rest = text.split(b"\n")
        if len(rest) > MAX_LINE:
            lines.append(rest)
            rest = b""
        if rest:
            self._partial[stream] = rest
        for line in lines:
            if self._pattern.search(line.decode("utf-8", "replace").rstrip("\r")):
                on_ready, self._on_ready = self._on_ready, None
                self.close()
                on_ready()
                return

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        self._partial.clear()
        self._on_ready = None


class Readiness:
    """The readiness sources that need pmd's own resources, for every instance."""

    def __init__(self, loop: asyncio.AbstractEventLoop, children: ChildWatcher,
                 base_env: Mapping[str, str]) -> None:
        self.loop = loop
        self.children = children
        self.base_env = base_env
        #: Startup probes under way, cancelled ones included until they end.
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # ---- probe ---------------------------------------------------------------------

    def follow_probe(self, check: HealthCheckSpec, program: ProgramSpec, port: int | None,
                     on_ready: Callable[[], None]) -> Callable[[], None]:
        """Probe until the first success, then call `on_ready`; the first attempt at once,
        the next ones `interval` apart (PROBE_INTERVAL unless the check names one)."""
        if self._closed:
            return _nothing
        task = self.loop.create_task(self._probe_until_ready(check, program, port, on_ready),
                                     name=f"ready probe {program.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

        def stop() -> None:
            task.cancel()

        return stop

    async def _probe_until_ready(self, check: HealthCheckSpec, program: ProgramSpec,
                                 port: int | None, on_ready: Callable[[], None]) -> None:
        interval = check.interval if "interval" in check.model_fields_set else PROBE_INTERVAL
        while True:
            try:
                error = await asyncio.wait_for(
                    probe(check, program, port, self.children, self.base_env), check.timeout)
            except TimeoutError:
                error = f"no answer within {check.timeout:g}s"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed probe is data, not a crash
                error = f"{type(exc).__name__}: {exc}"
            if error is None:
                on_ready()
                return
            log.debug("%s: not ready yet: %s", program.name, error)
            await asyncio.sleep(interval)

    # ---- shutdown ------------------------------------------------------------------

    async def close(self) -> None:
        """Nothing new is followed; every probe under way is cancelled and awaited."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _nothing() -> None:
    pass
