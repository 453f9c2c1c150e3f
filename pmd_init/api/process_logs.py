"""The last lines of a program's log files, each with the time pmd captured it, for the
process API's GET /api/processes/{id}/logs."""

from __future__ import annotations

import os
from pathlib import Path

from ..logs.capture import LogFile
from ..logs.times import saved


def times_of(logfile: LogFile | None, path: Path, end: int) -> float | None:
    times = logfile.times if logfile is not None else None
    if times is None:
        times = saved(str(path))  # kept across a re-exec, not reopened since
    return times.time_of(end) if times is not None else None


def tail_with_offsets(path: Path, lines: int, block: int = 64 << 10
                      ) -> tuple[list[tuple[int, str]], int]:
    """The last `lines` lines of `path`, each with the offset just after it, and the number
    of lines in the whole file (a last line without a newline counts)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return [], 0
    try:
        size = os.fstat(fd).st_size
        total = 0
        pos = 0
        while pos < size:  # counting newlines is cheap next to parsing them
            chunk = os.pread(fd, min(1 << 20, size - pos), pos)
            if not chunk:
                break
            total += chunk.count(b"\n")
            pos += len(chunk)
        size = pos
        chunks: list[bytes] = []
        newlines = 0
        start = size
        while start > 0 and newlines <= lines:
            step = min(block, start)
            start -= step
            data = os.pread(fd, step, start)
            chunks.append(data)
            newlines += data.count(b"\n")
    finally:
        os.close(fd)
    data = b"".join(reversed(chunks))
    if data and not data.endswith(b"\n"):
        total += 1
    result: list[tuple[int, str]] = []
    offset = start
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
        has_tail_newline = True
    else:
        has_tail_newline = False
    first_complete = 1 if start > 0 else 0  # the first piece may be a line's tail
    for index, raw in enumerate(parts):
        last = index == len(parts) - 1
        end = offset + len(raw) + (0 if last and not has_tail_newline else 1)
        if index >= first_complete:
            result.append((end, raw.decode("utf-8", "replace")))
        offset = end
    return result[-lines:], total
