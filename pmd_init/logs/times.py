"""When each part of a log file was captured: a small, bounded index of (end offset, time).

Log files stay byte-for-byte what the program wrote; the API's log lines still carry the
time pmd captured them. `LogFile.write` notes the file size after every write. Writes in
the same second extend the last entry instead of adding one, so an index covers the last
CAPACITY distinct seconds that had output in about 2 KiB, and a file that is never written
has no index at all (idle programs cost nothing).

A line's time is the time of the first entry whose end offset reaches the line's end.
Lines older than the index (written before pmd started, or pushed out of the ring) have
no known time.
"""

from __future__ import annotations

import time
from array import array
from bisect import bisect_left

CAPACITY = 128


class LineTimes:
    __slots__ = ("_start", "_ends", "_times")

    def __init__(self, start: int = 0) -> None:
        self._start = start  # bytes before this offset were written before we watched
        self._ends = array("q")
        self._times = array("d")

    def note(self, end: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        ends, times = self._ends, self._times
        if ends and int(times[-1]) == int(now):
            ends[-1] = end
            return
        if len(ends) >= CAPACITY:
            self._start = ends[0]
            del ends[0]
            del times[0]
        ends.append(end)
        times.append(now)

    def reset(self, start: int = 0) -> None:
        """The file was rotated or reopened: offsets start over."""
        self._start = start
        del self._ends[:]
        del self._times[:]

    @property
    def end(self) -> int:
        return self._ends[-1] if self._ends else self._start

    def time_of(self, end: int) -> float | None:
        """Capture time of the bytes that end at offset `end`; None when unknown."""
        if end <= self._start or not self._ends:
            return None
        i = bisect_left(self._ends, end)
        return self._times[min(i, len(self._ends) - 1)]
