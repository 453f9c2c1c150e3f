"""pmd's own log lines on stderr, written once per loop turn.

A burst of state changes (a hundred programs starting, or stopping on SIGTERM) logs a line
each. Written one by one, that is a system call per line, and as many wake-ups of whoever
reads pmd's stderr (`docker logs`), while the loop should be reaping and starting. Here
each record is formatted at once, in order, and what one loop turn logged goes out in one
write at the end of the turn. Without a running loop (start-up, exit, another thread) a
record is written at once, and so is a warning or an error, with what came before it: what
follows one may be a crash or a blocked loop, and the line must be out before it.

A line is `<local time, to the second> pmd LEVEL message`; the time's text is made once a
second rather than once a line (a restart logs three lines). The state changes' lines skip
logging's record altogether (`info_line`) when pmd's own handler is the only one they reach:
a record and its handling cost three times the line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TextIO


class LineFormatter(logging.Formatter):
    """pmd's line format, with the time's text kept for the second it names."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s pmd %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
        self._second = -1
        self._text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:  # format() runs under the handler's lock
            self._text = super().formatTime(record, datefmt)
            self._second = second
        return self._text

    def line(self, created: float, level: str, message: str) -> str:
        """What format() makes of a record without an exception: the same text."""
        second = int(created)
        if second != self._second:  # called under the handler's lock, as format()
            self._text = time.strftime(self.datefmt or "%Y-%m-%dT%H:%M:%S",
                                       self.converter(created))
            self._second = second
        return f"{self._text} pmd {level} {message}"


class LoopTurnHandler(logging.Handler):
    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._lines: list[str] = []
        self._flush_queued = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)
            return
        self._add(line, record.levelno)  # emit runs under the handler's lock

    def _add(self, line: str, levelno: int) -> None:
        self._lines.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or loop.is_closed() or levelno >= logging.WARNING:
            self.flush()
        elif not self._flush_queued:
            self._flush_queued = True
            loop.call_soon(self.flush)

    def info_now(self, message: str) -> bool:
        """Add an INFO line made by the LineFormatter, without a record; False (nothing
        done) when this handler would not take it so (a filter, a level above INFO,
        another formatter)."""
        formatter = self.formatter
        if self.filters or self.level > logging.INFO or type(formatter) is not LineFormatter:
            return False
        self.acquire()
        try:
            self._add(formatter.line(time.time(), "INFO", message) + "\n", logging.INFO)
        finally:
            self.release()
        return True

    def flush(self) -> None:
        self.acquire()
        try:
            self._flush_queued = False
            if not self._lines:
                return
            text = "".join(self._lines)
            self._lines.clear()
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: nothing to tell anyone
                pass
        finally:
            self.release()


def info_line(logger: logging.Logger, message: str) -> None:
    """`logger.info("%s", message)`; without a record when the logger's only handler is a
    LoopTurnHandler with pmd's format and nothing else would see the record (no filter,
    no propagation): what pmd sets up. Any other set-up (a test's capture) gets the
    record as before."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handlers = logger.handlers
    if len(handlers) == 1 and not logger.propagate and not logger.filters:
        handler = handlers[0]
        if isinstance(handler, LoopTurnHandler) and handler.info_now(message):
            return
    logger.info("%s", message)
