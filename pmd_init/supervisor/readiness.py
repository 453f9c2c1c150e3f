"""How a run of a program says it is ready, for the sources that need a watcher of their
own. Each watcher calls `on_ready` at most once and holds nothing after `close`.

`LogLineWatch` (readiness `log_line`) listens to the run's captures through their
subscribe API: it sees each chunk once it is in the log file, and matches whole lines only
(a line split across two reads is joined first).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from ..logs.capture import Capture

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
