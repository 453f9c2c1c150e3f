"""The last N lines of a program's log, across rotation: the one reader behind every log
route of both API families and the start of a Server-Sent Events stream.

A log is the current file and the backups `LogFile` rotates it into (`name.1` the newest,
then `name.2` ...). The reader takes lines from the end of the current file and, when that
holds fewer than asked (it was just rotated), goes on into the backups in order. Files are
read backwards in blocks, never whole, and no further once `max_bytes` have been read.

Each line comes with where it lies (which file, start and end offsets), for a stream's
byte cursor, and with the time pmd captured it when that file's capture-time index
(times.py) knows it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .capture import LogFile
from .times import LineTimes, SavedTimes

BLOCK = 64 << 10
MAX_BYTES = 64 << 20  # the most one tail reads, however long its lines


@dataclass(frozen=True, slots=True)
class Line:
    text: str
    backup: int  # 0: the current file; n: `<file>.n`
    start: int  # offset of its first byte in that file
    end: int  # offset just after it and its newline
    time: float | None = None  # when pmd captured it, if known


def backup_path(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index}")


def capture_times(logfile: LogFile | None, path: Path,
                  saved: SavedTimes) -> tuple[LineTimes | None, ...]:
    """The capture-time indexes of the current file and of `<file>.1`, as far as pmd
    knows them: an index kept across a re-exec (in `saved`) counts until the file is
    reopened."""
    if logfile is None:
        return (saved.get(str(path)),)
    return (logfile.times or saved.get(str(path)), logfile.rotated_times)


def _open(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None


@dataclass(slots=True)
class _FileTail:
    lines: list[tuple[int, int, bytes]]  # (start, end, raw line without its newline)
    whole: bool  # reached the start of the file
    size: int  # bytes read
    ends_cut: bool  # the file ends inside a line


def _ends_cut(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def _file_tail(fd: int, want: int, budget: int) -> _FileTail:
    """The last `want` lines of an open file, reading at most `budget` bytes."""
    size = os.fstat(fd).st_size
    chunks: list[bytes] = []
    newlines = 0
    pos = size
    # One newline more than lines wanted: the first piece read may be a line's tail.
    while pos > 0 and newlines <= want and size - pos < budget:
        step = min(BLOCK, pos)
        pos -= step
        block = os.pread(fd, step, pos)
        chunks.append(block)
        newlines += block.count(b"\n")
    data = b"".join(reversed(chunks))
    ends_cut = bool(data) and not data.endswith(b"\n")
    parts = data.split(b"\n")
    if not ends_cut:
        parts.pop()  # the empty piece after the last newline
    found: list[tuple[int, int, bytes]] = []
    offset = pos
    for index, raw in enumerate(parts):
        end = offset + len(raw) + (0 if ends_cut and index == len(parts) - 1 else 1)
        if pos == 0 or index > 0:
            found.append((offset, end, raw))
        offset = end
    return _FileTail(found[-want:] if want > 0 else [], pos == 0, size - pos, ends_cut)


def last_lines(path: Path, lines: int, backups: int = 0,
               times: Sequence[LineTimes | None] = (), max_bytes: int = MAX_BYTES,
               current: int | None = None) -> list[Line]:
    """Up to `lines` last lines of the log at `path`, oldest first, continued into up to
    `backups` rotated files. `times[n]` is the capture-time index of backup n (0: the
    current file). `current` is the current file already open (its offsets are then
    those of that very file, even if it is rotated meanwhile). A missing current file is
    an empty one; a missing backup ends the log. Bytes that are not UTF-8 are replaced."""
    result: list[Line] = []
    budget = max_bytes
    continued = False  # result[0] starts the file read last: an older one may hold its head
    for index in range(max(0, backups) + 1):
        if budget <= 0 or (len(result) >= lines and not continued):
            break
        mine = index > 0 or current is None
        fd = _open(backup_path(path, index) if index else path) if mine else current
        if fd is None:
            if index == 0:
                continue
            break
        try:
            if len(result) >= lines and not _ends_cut(fd):
                break  # result[0] was not continued from here: done
            # one more from a backup: its last line may be the first half of a cut one
            tail = _file_tail(fd, lines - len(result) + (1 if index else 0), budget)
        finally:
            if mine:
                os.close(fd)
        budget -= tail.size
        index_times = times[index] if index < len(times) else None
        found = [Line(raw.decode("utf-8", "replace"), index, start, end,
                      index_times.time_of(end) if index_times is not None else None)
                 for start, end, raw in tail.lines]
        if tail.ends_cut and found and continued:
            # A line longer than a whole file was cut at the size limit: its pieces are
            # one line, which lies where its end does.
            head, rest = found.pop(), result[0]
            result[0] = Line(head.text + rest.text, rest.backup, rest.start, rest.end,
                             rest.time)
        continued = bool(tail.lines) and tail.lines[0][0] == 0
        result = found + result
        if not tail.whole:
            break  # out of budget, or enough lines in this file alone
    return result[-lines:] if lines > 0 else []


def tail_lines(path: Path, lines: int, backups: int = 0) -> list[str]:
    """The text of the last `lines` lines, across `backups` rotated files."""
    return [line.text for line in last_lines(path, lines, backups)]


def count_lines(path: Path) -> int:
    """The lines of one file (a last line without a newline counts); 0 when it is missing."""
    fd = _open(path)
    if fd is None:
        return 0
    try:
        total = 0
        pos = 0
        last = b""
        while chunk := os.pread(fd, 1 << 20, pos):
            total += chunk.count(b"\n")
            pos += len(chunk)
            last = chunk[-1:]
    finally:
        os.close(fd)
    return total + (1 if last not in (b"", b"\n") else 0)
