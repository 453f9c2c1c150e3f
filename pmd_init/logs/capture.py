"""From a program's pipe to its log file and to pmd's stdout, without ever blocking.

One `Capture` owns the read end of one pipe (a program's stdout or stderr). The loop calls it
when the pipe is readable; it reads what the pipe holds, up to 1 MiB at once (the pipe is
enlarged to 1 MiB so a fast writer needs few wake-ups), appends it to the instance's
`LogFile`, and hands its whole lines, each after the program's `[name] ` prefix, to the
`Forwarder` that writes them to pmd's stdout or stderr for `docker logs`. The work per chunk
is a few C-speed operations: a read, a write and a writev per 48 KiB of forwarded lines,
whatever the number of lines in it.

Neither a full disk nor a stalled stdout may stop a program: failed file writes and
forwarded bytes that do not fit are dropped and counted, never retried in a loop.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import mmap
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from .times import LineTimes, SavedTimes

if TYPE_CHECKING:
    from .shipping import Tap

log = logging.getLogger("pmd.logs")

READ_SIZE = 1 << 20
#: What a capture reads into: read_buffer()'s mapping, or a bytearray (tests).
ReadBuffer = bytearray | mmap.mmap
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031
FORWARD_BUFFER_MAX = 1 << 20
PARTIAL_LINE_MAX = 64 << 10
#: The forwarded copy is prefixed a slice of this size at a time, and each slice is written
#: before the next is made: the capture holds at most one slice's copy and its prefixed
#: result, about 100 KiB, under glibc's trim threshold (128 KiB). Held together until one
#: writev, the slices of a 1 MiB chunk (1.1 MiB) are given back to the system when freed
#: wherever they end at the top of the heap, and the next chunk faults the same pages in
#: again: 210 faults a MiB and 15% more CPU in a process whose heap is laid out so.
SLICE = 48 << 10


#: How a program's lines reach pmd's stdout/stderr (`log_forward`, PMD_LOG_FORWARD):
#: `prefixed` "[name] line", `timestamped` "<RFC 3339 time> [name] line", `raw` the
#: program's bytes untouched (whole lines), `json` one object a line, `off` nothing.
FORWARD_MODES = ("prefixed", "timestamped", "raw", "json", "off")


def read_buffer() -> mmap.mmap:
    """A read buffer of READ_SIZE whose pages are memory only once a read has filled them:
    a bytearray is zeroed when made, 1 MiB of pmd's RSS even when no program writes more
    than a line at a time (docs/performance.md, "Memory")."""
    return mmap.mmap(-1, READ_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def newlines(view: memoryview) -> int:
    """The newlines in a view of the read buffer, which has no count() (a mapping): a SLICE
    at a time, so that no copy is large."""
    return sum(view[i:i + SLICE].tobytes().count(b"\n") for i in range(0, len(view), SLICE))


@dataclass(frozen=True, slots=True)
class LineStyle:
    """How one capture forwards: the mode, and what the prefix or the JSON object names."""

    mode: str
    program: str
    port: int | None
    stream: str

    @property
    def prefix(self) -> bytes:
        return b"" if self.mode == "raw" else f"[{self.program}] ".encode()


def rfc3339(at: float) -> str:
    """UTC, milliseconds, `Z`: 2026-12-03T12:00:00.123Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"


def open_log_path(path: Path | str) -> int:
    """Open for appending, creating parent folders; the last component is never followed
    if it is a symlink (the API must not become a way to write any file as root)."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    return os.open(path, flags, 0o644)


class LogFile:
    """A size-rotated log file: `name`, `name.1` ... `name.<backups>`."""

    __slots__ = ("_path", "max_bytes", "backups", "_fd", "size", "dropped", "rotations",
                 "times", "rotated_times", "saved")

    def __init__(self, path: Path | str, max_bytes: int, backups: int,
                 saved: SavedTimes | None = None) -> None:
        # Its text only: a `Path` is about 250 bytes a file, and an idle program holds
        # two files for as long as it is configured; `path` makes one when it is used.
        self._path = str(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd = -1
        self.size = 0
        self.dropped = 0
        self.rotations = 0
        self.times: LineTimes | None = None  # capture times, from the first write on
        self.rotated_times: LineTimes | None = None  # those of `name.1`, since it rotated
        self.saved = saved  # where an index handed over by a re-exec waits for this file

    @property
    def path(self) -> Path:
        return Path(self._path)

    def _open(self) -> bool:
        try:
            self._fd = open_log_path(self._path)  # no Path: see Instance.log_file
            self.size = os.fstat(self._fd).st_size
            if self.times is None:
                claimed = self.saved.claim(self._path, self.size) if self.saved else None
                self.times = claimed or LineTimes(self.size)
            elif self.size != self.times.end:
                self.times.reset(self.size)  # rotated, or changed behind our back
            return True
        except OSError as exc:
            log.warning("cannot open log %s: %s", self._path, exc)
            self._fd = -1
            return False

    def ensure_open(self) -> None:
        """Create the file at spawn, as supervisord does, so `tail -f` finds it."""
        if self._fd < 0:
            self._open()

    def write(self, data: bytes | memoryview) -> None:
        """Append, rotating so that no file grows past max_bytes: a chunk that does not fit
        is cut at its last newline that does (or at the limit, for a longer line)."""
        if self._fd < 0 and not self._open():
            self.dropped += len(data)
            return
        start, end = 0, len(data)
        while start < end:
            if self.max_bytes and self.size >= self.max_bytes:
                self.rotate()
                if self._fd < 0:
                    self.dropped += end - start
                    return
            room = self.max_bytes - self.size if self.max_bytes else end - start
            if end - start <= room:
                self._write_all(data, start, end)
                return
            if isinstance(data, memoryview):
                data = data.tobytes()  # a rotation: rare enough for a copy
            cut = data.rfind(b"\n", start, start + room)
            if cut >= 0:
                stop = cut + 1
            elif self.size > 0:
                stop = start  # this line does not fit: it starts the next file
            else:
                stop = start + room  # one line longer than a whole file: cut at the limit
            self._write_all(data, start, stop)
            start = stop
            self.size = max(self.size, self.max_bytes)  # forces the rotation above

    def _write_all(self, data: bytes | memoryview, start: int, stop: int) -> None:
        view = memoryview(data)[start:stop]
        try:
            while view:
                n = os.write(self._fd, view)
                self.size += n
                view = view[n:]
            if self.times is not None:
                self.times.note(self.size)  # when these bytes were captured (API log lines)
        except OSError as exc:  # ENOSPC, EIO, EFBIG: count and go on
            self.dropped += len(view)
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.warning("write to %s failed: %s", self._path, exc)

    def rotate(self) -> None:
        self.close()
        self.rotations += 1
        path = self.path
        try:
            if self.backups <= 0:
                path.unlink(missing_ok=True)
            else:
                for index in range(self.backups - 1, 0, -1):
                    older = path.with_name(f"{path.name}.{index}")
                    if older.exists():
                        os.replace(older, path.with_name(f"{path.name}.{index + 1}"))
                if path.exists():
                    os.replace(path, path.with_name(f"{path.name}.1"))
                    # its index moves with it: a tail that reaches into name.1 keeps
                    # its times (the older backups' are let go, at 2 KiB a file)
                    self.rotated_times, self.times = self.times, None
        except OSError as exc:
            log.warning("rotation of %s failed: %s", self._path, exc)
        self._open()

    def reopen(self) -> None:
        """SIGUSR1: an outside rotator moved the file away; start a new one."""
        self.close()
        self.rotated_times = None  # whatever name.1 is now, pmd did not write it
        self._open()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Forwarder:
    """Writes prefixed lines to pmd's stdout or stderr without blocking the loop.

    A pipe or terminal is reopened through /proc/self/fd, giving pmd its own open file
    description: O_NONBLOCK on it does not leak to the main command, which shares the
    original one (a main command seeing EAGAIN on its stdout would be a bug of ours).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = loop
        self._fd = self._own_description(fd)
        self._pending = bytearray()
        self._writing = False
        self.dropped = 0

    @staticmethod
    def _own_description(fd: int) -> int:
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            return -1
        if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            try:
                own = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                pass
            else:
                if stat.S_ISFIFO(mode):
                    # A container runtime reads pmd's stdout through a pipe of 64 KiB: a
                    # chunk of a fast writer (up to 1 MiB) would not fit, and lines would
                    # be dropped whenever the reader lags a little. The pipe the programs
                    # write into is as large.
                    try:
                        fcntl.fcntl(own, F_SETPIPE_SZ, PIPE_SIZE)
                    except OSError:
                        pass  # over the unprivileged limit: keep what the runtime made
                return own
        if stat.S_ISSOCK(mode):
            own = os.dup(fd)
            os.set_blocking(own, False)  # a socket description is ours to share badly
            return own
        return os.dup(fd)  # a regular file: writes do not block for long

    def write(self, *parts: bytes | memoryview) -> None:
        """Write the parts as one (one writev); what does not fit now waits for the
        descriptor to be writable, up to FORWARD_BUFFER_MAX, and the rest is dropped."""
        if self.room(sum(len(p) for p in parts)):
            self.put(*parts)
        else:
            self.dropped += sum(len(p) for p in parts)

    def room(self, size: int) -> bool:
        """Whether `size` bytes are taken now: always when nothing waits (what the
        descriptor does not take at once is kept), else within FORWARD_BUFFER_MAX."""
        return not self._pending or len(self._pending) + size <= FORWARD_BUFFER_MAX

    def put(self, *parts: bytes | memoryview) -> None:
        """Write the parts (one writev), keeping what the descriptor does not take now,
        without a limit: the caller asked `room` for the whole of what it puts."""
        if self._fd < 0:
            return
        if self._pending:
            for part in parts:
                self._pending += part
            return
        try:
            n = os.writev(self._fd, parts)
        except BlockingIOError:
            n = 0
        except OSError:
            self.dropped += sum(len(p) for p in parts)
            return
        for part in parts:  # keep what was not written (the rest of whole lines)
            if n >= len(part):
                n -= len(part)
                continue
            self._pending += memoryview(part)[n:]
            n = 0
        if self._pending:
            self._loop.add_writer(self._fd, self._flush)

    def _flush(self) -> None:
        try:
            n = os.write(self._fd, self._pending)
        except BlockingIOError:
            return
        except OSError:
            self.dropped += len(self._pending)
            n = len(self._pending)
        del self._pending[:n]
        if not self._pending:
            self._loop.remove_writer(self._fd)


DataListener = Callable[[bytes], None]


class ByteCount:
    """Bytes read from one stream of one process slot, over all its runs: a capture ends
    with its pipe, this outlives them (the `pmd_log_bytes_total` counter, which must only
    grow)."""

    __slots__ = ("total",)

    def __init__(self) -> None:
        self.total = 0


class Capture:
    """Reads one pipe until EOF. Whoever wants to know of new output as it arrives (the
    API's log streams) subscribes to it and unsubscribes when done."""

    __slots__ = ("_loop", "fd", "logfile", "_forward", "_prefix", "_line_break", "_partial",
                 "_cut", "_on_eof", "bytes_read", "_listeners", "_buffer", "_count", "_style",
                 "_name_prefix", "_tap")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        logfile: LogFile | None,
        forward: Forwarder | None,
        prefix: bytes,
        on_eof: Callable[[Capture], None] | None = None,
        count: ByteCount | None = None,
        buffer: ReadBuffer | None = None,
        style: LineStyle | None = None,
        tap: Tap | None = None,
    ) -> None:
        self._loop = loop
        self._tap = tap  # log targets (shipping.py): never waits, drops when they lag
        self.fd = fd
        self.logfile = logfile
        # `style` None: `prefix` before each line (the prefixed mode)
        self._style = style if style is not None and style.mode in ("timestamped",
                                                                      "json") else None
        if style is not None:
            prefix = style.prefix
            if style.mode == "off":
                forward = None
        self._forward = forward
        self._name_prefix = prefix
        self._prefix = prefix
        self._line_break = b"\n" + prefix
        self._partial = b""
        self._cut = False  # the last line forwarded was cut at the limit (_forward_lines)
        self._on_eof = on_eof
        self.bytes_read = 0
        self._count = count
        self._listeners: list[DataListener] | None = None  # a list only while someone listens
        # Reads land here, never in a new object: one buffer of READ_SIZE can serve every
        # capture of a loop (each chunk is done with before the next read).
        self._buffer = buffer if buffer is not None else read_buffer()
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._readable)

    def subscribe(self, listener: DataListener) -> Callable[[], None]:
        """Call `listener` with every chunk read, once it is in the log file, until the
        function returned is called."""
        if self._listeners is None:
            self._listeners = []
        self._listeners.append(listener)

        def unsubscribe() -> None:
            listeners = self._listeners or []
            for index, known in enumerate(listeners):
                if known is listener:
                    del listeners[index]
                    break
            if not listeners:
                self._listeners = None

        return unsubscribe

    @property
    def listener_count(self) -> int:
        return len(self._listeners) if self._listeners is not None else 0

    @staticmethod
    def make_pipe() -> tuple[int, int]:
        """(read end, write end), both close-on-exec; the write end is dup2'd by spawn."""
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            fcntl.fcntl(r, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # over /proc/sys/fs/pipe-max-size for an unprivileged pmd: keep 64 KiB
        return r, w

    def _readable(self) -> None:
        self._read()

    def drain(self) -> bool:
        """Read what the pipe holds now, without waiting; True once it reached EOF (and is
        closed). Called before a program's next run: the last output of the run that ended
        is logged before the new run's. A restart at once writes into the same pipe (pmd
        held its write end: no EOF, see `end_run`); otherwise the pipe is closed here
        before new ones are made, so a crash loop holds one pair of pipes per program and
        not two. A process left behind by the run that still holds the write end keeps the
        capture open (reads stop when the pipe is empty)."""
        for _ in range(PIPE_SIZE // READ_SIZE + 1):
            if self.fd < 0 or self._read() == 0:
                break
        return self.fd < 0

    def _read(self) -> int:
        """One read into the sinks: bytes read, 0 when the pipe is empty for now, -1 at EOF
        (the capture is then closed)."""
        try:
            n = os.readv(self.fd, (self._buffer,))
        except BlockingIOError:
            return 0
        except OSError:
            n = 0
        if not n:
            self.close()
            return -1
        self.bytes_read += n
        if self._count is not None:
            self._count.total += n
        data = memoryview(self._buffer)[:n]
        if self.logfile is not None:
            self.logfile.write(data)
        lines: int | None = None  # the newlines read, when forwarding had to find them
        if self._forward is not None:
            # A line cut at the limit was ended by pmd: when the line's own end comes first
            # in this read, it is that newline, not an empty line of its own.
            skip = 1 if self._cut and data[0] == 0x0A else 0
            self._cut = False
            if self._style is None:
                lines = self._forward_lines(data, skip)
            elif self._style.mode == "json":
                lines = self._forward_json(data[skip:])
            else:  # timestamped: the time of this read before each of its lines
                self._prefix = f"{rfc3339(time.time())} ".encode() + self._name_prefix
                self._line_break = b"\n" + self._prefix
                lines = self._forward_lines(data, skip)
            if lines is not None:
                lines += skip
        if self._tap is not None:  # in every log_forward mode, "off" too
            self._tap(self._buffer, n, lines)
        if self._listeners:
            chunk = data.tobytes()
            for listener in tuple(self._listeners):
                listener(chunk)
        return n

    def _forward_lines(self, data: memoryview, skip: int = 0) -> int | None:
        """Whole lines of `data` after its first `skip` bytes, each after the prefix; the
        start of an unfinished line waits for its end (so that programs' lines do not
        interleave), up to PARTIAL_LINE_MAX, where it is cut: that piece is ended, and the
        next is a line of its own. Returns the number of newlines forwarded (what each
        replace added, over the prefix's length), or None without a prefix (raw)."""
        assert self._forward is not None
        prefix = self._prefix
        cut = self._buffer.rfind(b"\n", skip, len(data))  # data is the buffer's start
        data = data[skip:]
        if cut < 0:
            partial = self._partial + data
            if len(partial) > PARTIAL_LINE_MAX:
                self._forward.write(prefix, partial, b"\n")
                partial = b""
                self._cut = True
            self._partial = partial
            return 0
        cut -= skip
        rest = len(data) - cut - 1
        whole = data if rest > PARTIAL_LINE_MAX else data[:cut + 1]
        forward = self._forward
        held = self._partial
        if whole is data:  # a line too long to hold: this piece of it ends here
            tail: tuple[bytes, ...] = (b"\n",)
            self._partial = b""
            self._cut = True
        else:
            tail = ()
            self._partial = data[cut + 1:].tobytes()
        if not prefix:  # raw: the program's bytes as they are, from the read buffer
            forward.write(held, whole, *tail)
            return None
        if not forward.room(len(prefix) + len(held) + len(whole)):
            # stdout cannot keep up: the chunk's whole lines are dropped, and counted
            lines = newlines(whole)
            ended = lines + len(tail)  # each after its prefix
            forward.dropped += len(held) + len(whole) + len(tail) + ended * len(prefix)
            return lines
        # A replace per slice, each slice written before the next one is made (SLICE): no
        # work per line, and no buffer that glibc would trim. The first slice goes after
        # the prefix of its first line and the held start of that line, in one writev;
        # the room asked above is for the whole chunk, so that no line is cut by a drop.
        line_break = self._line_break
        size = len(whole)
        grown = -size
        head: tuple[bytes, ...] = (prefix, held)
        start = 0
        while True:
            piece = whole[start:start + SLICE].tobytes().replace(b"\n", line_break)
            grown += len(piece)
            start += SLICE
            if start >= size:
                break
            forward.put(*head, piece)
            head = ()
        if tail:
            forward.put(*head, piece, *tail)
        else:  # the last slice ends with a newline, and the next line's prefix: not yet
            forward.put(*head, memoryview(piece)[:-len(prefix)])
        return grown // len(prefix)

    def _forward_json(self, data: memoryview) -> int:
        """One JSON object a whole line (the line decoded as UTF-8, a bad byte as U+FFFD),
        the start of an unfinished line held as in the other modes. Returns the number of
        newlines in `data`."""
        assert self._forward is not None and self._style is not None
        lines = (self._partial + data.tobytes()).split(b"\n")
        newlines = len(lines) - 1
        self._partial = lines.pop()
        if len(self._partial) > PARTIAL_LINE_MAX:  # too long to hold: this piece ends here
            lines.append(self._partial)
            self._partial = b""
            self._cut = True
        if lines:
            self._forward.write(self._json_lines(lines))
        return newlines

    def _json_lines(self, lines: list[bytes]) -> bytes:
        assert self._style is not None
        style, stamp = self._style, rfc3339(time.time())
        return b"".join(orjson.dumps({"time": stamp, "program": style.program,
                                      "port": style.port, "stream": style.stream,
                                      "line": line.decode("utf-8", "replace")}) + b"\n"
                        for line in lines)

    def end_run(self, pid: int | None) -> None:
        """The process that wrote into this pipe exited and the next run (`pid`) writes
        into the same pipe: what the ended run left is read (the caller drained it), and
        an unfinished last line is ended now, as at EOF, so the next run's first line
        does not continue it. Log targets name the new pid from here on."""
        self._end_partial()
        if self._tap is not None:
            self._tap.close()
            self._tap.source = replace(self._tap.source, pid=pid)

    def close(self) -> None:
        if self.fd < 0:
            return
        self._loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1
        self._end_partial()
        if self._tap is not None:
            self._tap.close()
        if self._on_eof is not None:
            self._on_eof(self)

    def _end_partial(self) -> None:
        self._cut = False  # what comes next (a new run's output, or nothing) is new
        if self._partial and self._forward is not None:  # a last line without its newline
            if self._style is not None and self._style.mode == "json":
                self._forward.write(self._json_lines([self._partial]))
            else:
                if self._style is not None:
                    self._prefix = f"{rfc3339(time.time())} ".encode() + self._name_prefix
                self._forward.write(self._prefix, self._partial, b"\n")
            self._partial = b""
