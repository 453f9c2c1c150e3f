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
        # Made by the first note: every log file of an idle program has an index with
        # none (two empty arrays would be 160 bytes a file).
        self._ends: array[int] | None = None
        self._times: array[float] | None = None

    def note(self, end: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        ends, times = self._ends, self._times
        if ends is None or times is None:
            self._ends, self._times = array("q", [end]), array("d", [now])
            return
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
        self._ends = self._times = None

    @property
    def end(self) -> int:
        return self._ends[-1] if self._ends else self._start

    def time_of(self, end: int) -> float | None:
        """Capture time of the bytes that end at offset `end`; None when unknown."""
        if end <= self._start or not self._ends or self._times is None:
            return None
        i = bisect_left(self._ends, end)
        return self._times[min(i, len(self._ends) - 1)]


# ---- across a re-exec ---------------------------------------------------------------------
# The index lives in pmd's memory; a re-exec hands it to the next pmd in its snapshot. The
# next pmd keeps each one by log path until that file is opened again (or asked about), and
# uses it only if the file has not grown or shrunk since: same size, same bytes.


def export(times: LineTimes | None) -> list[float] | None:
    """start, then (end, time) pairs, flat: JSON for the re-exec snapshot."""
    if times is None:
        return None
    flat: list[float] = [times._start]
    for end, when in zip(times._ends or (), times._times or (), strict=True):
        flat += [end, when]
    return flat


class SavedTimes:
    """The indexes a re-exec handed over, by log path. The supervisor's runtime owns the one
    registry: instances fill it when they adopt, a `LogFile` claims its index when it opens
    its file, and the log routes read it for files not opened since."""

    __slots__ = ("_by_path",)

    def __init__(self) -> None:
        self._by_path: dict[str, LineTimes] = {}

    def remember(self, path: str, flat: object) -> None:
        """Keep what `export` wrote for `path`; a malformed value is dropped (the lines
        then have no known time, as after a restart of pmd)."""
        if not isinstance(flat, list) or len(flat) % 2 != 1:
            return
        try:
            times = LineTimes(int(flat[0]))
            for i in range(1, len(flat), 2):
                times.note(int(flat[i]), float(flat[i + 1]))
        except (TypeError, ValueError, OverflowError):
            return
        self._by_path[path] = times

    def claim(self, path: str, size: int) -> LineTimes | None:
        """The saved index of this file, if the file is as it was when it was saved; it is
        let go either way."""
        times = self._by_path.pop(path, None)
        return times if times is not None and times.end == size else None

    def get(self, path: str) -> LineTimes | None:
        return self._by_path.get(path)
