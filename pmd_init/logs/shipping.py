"""Shipping programs' lines to log targets: syslog (RFC 5424 over UDP, TCP with octet
counting, or a Unix datagram socket, where syslog(3)'s local format is the default),
OTLP/HTTP (protobuf), Loki's push API (JSON).

Capture must never wait for a target. A `Tap` sits on one capture: per chunk it cuts at the
last newline (C-speed `rfind`) and hands the chunk, with the time it was captured and its
number of lines, to each `Shipper` that selects the program. The number comes from the
capture's forwarding, which finds every newline anyway; without forwarding (log_forward
off or raw) it is one C-speed `count`. A shipper keeps at most `buffer_lines` lines; what
does not fit is dropped and counted, in one addition per chunk.
Splitting into lines and encoding happen in the shipper's own task, a batch at a time
(`batch_lines` lines, or what came within `batch_seconds` of the first), and a failed send
is retried with a backoff from 0.5 s to 30 s while new lines keep their bounded buffer.
An idle shipper waits on an event: nothing polls.

This module imports nothing of pmd: it is handed targets as `ShipTarget`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmap import mmap

log = logging.getLogger("pmd.logs")

#: An unfinished line is held this long, then shipped as it is.
PARTIAL_MAX = 64 << 10
#: A line longer than this is cut (Loki's and most collectors' default limits are above).
LINE_MAX = 64 << 10
#: Syslog messages are cut here (rsyslog's default maxMessageSize is 8 KiB).
SYSLOG_MAX = 8000
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
SEND_TIMEOUT = 10.0
#: RFC 5424 structured data needs an enterprise number; 32473 is the one RFC 5612
#: reserves for documentation and examples.
SD_ID = "pmd@32473"
FACILITY_USER = 1
SLICE = 48 << 10  # what the capture copies at most at once (capture.SLICE)
SEVERITY = {"stdout": 6, "stderr": 3}  # informational, error
OTLP_SEVERITY = {"stdout": (9, "INFO"), "stderr": (17, "ERROR")}
NEWLINE = ord("\n")


@dataclass(frozen=True, slots=True)
class ShipTarget:
    name: str
    kind: str  # syslog, otlp, loki
    #: syslog: (scheme, host or path, port); http: (scheme, host, port, path)
    where: tuple[Any, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    batch_lines: int = 1000
    batch_seconds: float = 1.0
    buffer_lines: int = 100_000
    #: syslog: rfc5424, or local (syslog(3)'s format, for /dev/log)
    syslog_format: str = "rfc5424"


@dataclass(frozen=True, slots=True)
class Source:
    """Whose lines: shown on every line shipped."""

    program: str
    instance: str
    stream: str  # stdout, stderr
    pid: int | None = None


class Shipper:
    """One target: its bounded buffer, its sending task, its counters."""

    def __init__(self, loop: asyncio.AbstractEventLoop, target: ShipTarget,
                 hostname: str | None = None) -> None:
        self.loop = loop
        self.target = target
        self.hostname = (hostname or socket.gethostname() or "-")[:255]
        #: [source, capture time, whole lines, lines not yet taken, where they start]
        self._chunks: deque[list[Any]] = deque()
        self.queued = 0
        self.sent = 0
        self.dropped = 0
        self.failures = 0
        #: Lines of the batch being sent (or waiting for its retry).
        self.in_flight = 0
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._first_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._transport = _transport(target)
        self._encode = encode_syslog_local if target.kind == "syslog" and \
            target.syslog_format == "local" else _ENCODERS[target.kind]

    def start(self) -> None:
        self._task = self.loop.create_task(self._run(), name=f"ship {self.target.name}")

    def put(self, source: Source, captured: float, chunk: bytes, lines: int) -> None:
        room = self.target.buffer_lines - self.queued
        if lines > room:  # the lines that fit are kept, the rest dropped and counted
            self.dropped += lines - room
            if room <= 0:
                return
            end = -1
            for _ in range(room):
                end = chunk.find(b"\n", end + 1)
            chunk, lines = chunk[:end + 1], room
        self._chunks.append([source, captured, chunk, lines, 0])
        self.queued += lines
        if self._first_at is None:
            self._first_at = self.loop.time()
            self._wake.set()
        elif self.queued >= self.target.batch_lines:
            self._wake.set()

    def view(self) -> dict[str, object]:
        return {"type": self.target.kind, "sent": self.sent, "dropped": self.dropped,
                "queued": self.queued + self.in_flight, "failures": self.failures,
                "last_error": self.last_error}

    async def _run(self) -> None:
        t = self.target
        backoff = BACKOFF_FIRST
        batch: list[tuple[Source, float, bytes]] | None = None
        payload: Any = None  # the batch encoded, once: a retry sends the same bytes
        while True:
            if batch is None:
                await self._wake.wait()
                self._wake.clear()
                if self.queued < t.batch_lines and self._first_at is not None:
                    wait = self._first_at + t.batch_seconds - self.loop.time()
                    if wait > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._until_full(), wait)
                batch = self._take(t.batch_lines)
                self.in_flight = len(batch)
                if not batch:
                    continue
            try:
                try:
                    if payload is None:
                        payload = self._encode(self, batch)
                except ImportError as exc:  # opentelemetry-proto left out of the install
                    raise ShipError(f"cannot encode: {exc}", permanent=True) from None
                await asyncio.wait_for(self._transport.send(payload), SEND_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a target's failure stays its own
                self.failures += 1
                self.last_error = str(exc) or type(exc).__name__
                if isinstance(exc, ShipError) and exc.permanent:
                    log.warning("log target %s refused %d lines: %s", t.name, len(batch), exc)
                    self.dropped += len(batch)
                    batch, payload, self.in_flight = None, None, 0
                    if self.queued:
                        self._wake.set()
                    continue
                if self.failures == 1 or self.failures % 100 == 0:
                    log.warning("log target %s: %s (retrying)", t.name, self.last_error)
                await self._transport.reset()
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            self.sent += len(batch)
            backoff = BACKOFF_FIRST
            batch, payload, self.in_flight = None, None, 0
            if self.queued:
                self._wake.set()

    async def _until_full(self) -> None:
        while self.queued < self.target.batch_lines:
            self._wake.clear()
            await self._wake.wait()

    def _take(self, limit: int) -> list[tuple[Source, float, bytes]]:
        """Up to `limit` lines from the oldest chunks (a chunk keeps its read position)."""
        lines: list[tuple[Source, float, bytes]] = []
        while self._chunks and len(lines) < limit:
            entry = self._chunks[0]
            source, captured, chunk, count, start = entry
            taken = min(count, limit - len(lines))
            for _ in range(taken):
                end = chunk.find(b"\n", start)
                lines.append((source, captured, chunk[start:min(end, start + LINE_MAX)]))
                start = end + 1
            self.queued -= taken
            if taken == count:
                self._chunks.popleft()
            else:
                entry[3], entry[4] = count - taken, start
        if not self._chunks:
            self.queued = 0
            self._first_at = None
        else:  # what is left has waited already: the next batch goes at once
            self._first_at = self.loop.time() - self.target.batch_seconds
        return lines

    async def close(self, drain: float = 0.0) -> None:
        """Stop; with `drain`, first give what is queued that long to go out."""
        if self._task is None:
            return
        if drain > 0 and self.queued:
            self._first_at = -1e9  # no batching wait: send now
            self._wake.set()
            deadline = self.loop.time() + drain
            while self.queued and self.loop.time() < deadline and not self.failures:
                await asyncio.sleep(0.01)
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
        self._task = None
        await self._transport.reset()


class Tap:
    """On one capture: whole lines to every shipper that wants this source. It is called
    with the capture's read buffer, not a copy: what it keeps, it copies."""

    __slots__ = ("source", "shippers", "_partial", "_let_go", "_cut")

    def __init__(self, source: Source, shippers: Sequence[Shipper]) -> None:
        self.source = source
        self.shippers = tuple(shippers)
        self._partial = b""
        #: The start of an unfinished line was let go while every target was full: if the
        #: pipe ends before its newline, that line is counted as dropped then.
        self._let_go = False
        #: The last line shipped was cut at PARTIAL_MAX: a newline first in the next read
        #: is that line's own end, not an empty line.
        self._cut = False

    def __call__(self, buffer: bytearray | mmap, n: int, lines: int | None = None) -> None:
        """The first `n` bytes of `buffer` were just read from the pipe; `lines`, when the
        capture knows it (forwarding found them), the number of newlines in them. The
        buffer may be a mapping (capture.read_buffer), which has no count(): lines are
        counted in the bytes shipped, or in a copy when all of them are dropped."""
        start = 1 if self._cut and buffer[0] == NEWLINE else 0
        self._cut = False
        if start and lines is not None:
            lines -= 1
        for shipper in self.shippers:
            if shipper.queued < shipper.target.buffer_lines:
                break
        else:
            # Every target is full (down, or slower than the program): count and drop
            # without a copy. A held line start is let go; its line is counted when its
            # newline comes.
            if lines is None:
                view = memoryview(buffer)  # a copy a slice at a time, none large
                lines = sum(view[i:min(i + SLICE, n)].tobytes().count(b"\n")
                            for i in range(start, n, SLICE))
            self._partial = b""
            self._let_go = buffer[n - 1] != NEWLINE
            for shipper in self.shippers:
                shipper.dropped += lines
            return
        self._let_go = False  # what follows is held, or ends with the line
        view = memoryview(buffer)
        cut = buffer.rfind(b"\n", start, n)
        if cut < 0:  # no line ends here: it all continues the held start
            chunk, lines = b"", 0
            self._partial += view[start:n].tobytes()
        else:
            whole = view[start:cut + 1]
            chunk = b"".join((self._partial, whole)) if self._partial else whole.tobytes()
            self._partial = view[cut + 1:n].tobytes() if cut + 1 < n else b""
            if lines is None:  # the held start has no newline: every one is in `whole`
                lines = chunk.count(b"\n")
        if len(self._partial) > PARTIAL_MAX:  # too long to hold: it goes as a line
            chunk += self._partial + b"\n"
            lines += 1
            self._partial = b""
            self._cut = True
        if chunk:
            self._ship(chunk, lines)

    def _ship(self, chunk: bytes, lines: int) -> None:
        captured = time.time()
        for shipper in self.shippers:
            shipper.put(self.source, captured, chunk, lines)

    def close(self) -> None:
        """The pipe ended: an unfinished last line goes as it is."""
        self._cut = False
        if self._partial:
            partial, self._partial = self._partial, b""
            self._ship(partial + b"\n", 1)
        elif self._let_go:
            self._let_go = False
            for shipper in self.shippers:
                shipper.dropped += 1


class Shippers:
    """Every target of this pmd; `tap` builds what a capture calls."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 targets: Sequence[tuple[ShipTarget, Callable[[str], bool]]]) -> None:
        self.shippers = [(Shipper(loop, target), selects) for target, selects in targets]

    def start(self) -> None:
        for shipper, _ in self.shippers:
            shipper.start()

    def tap(self, source: Source) -> Tap | None:
        chosen = [s for s, selects in self.shippers if selects(source.program)]
        return Tap(source, chosen) if chosen else None

    def view(self) -> dict[str, dict[str, object]]:
        return {s.target.name: s.view() for s, _ in self.shippers}

    async def close(self, drain: float = 0.0) -> None:
        for shipper, _ in self.shippers:
            await shipper.close(drain)


# ---- encoders ----------------------------------------------------------------------

class ShipError(Exception):
    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def _sd_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _printable(text: str, limit: int) -> str:
    cleaned = "".join(c if 33 <= ord(c) <= 126 else "_" for c in text)[:limit]
    return cleaned or "-"


def encode_syslog(shipper: Shipper, batch: list[tuple[Source, float, bytes]]) -> list[bytes]:
    """One RFC 5424 message per line: APP-NAME the program, PROCID its pid, MSGID the
    stream, severity informational (stdout) or error (stderr), the instance and the
    labels as structured data."""
    labels = "".join(f' {k}="{_sd_value(v)}"' for k, v in shipper.target.labels.items())
    host = _printable(shipper.hostname, 255)
    messages = []
    for source, captured, line in batch:
        pri = FACILITY_USER * 8 + SEVERITY.get(source.stream, 6)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(captured)) + \
            f".{int(captured % 1 * 1e6):06d}Z"
        sd = f'[{SD_ID} instance="{_sd_value(source.instance)}"{labels}]'
        head = (f"<{pri}>1 {stamp} {host} {_printable(source.program, 48)} "
                f"{source.pid if source.pid is not None else '-'} {source.stream} {sd} ")
        messages.append((head.encode() + line)[:SYSLOG_MAX])
    return messages


MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
          "Dec")


def encode_syslog_local(shipper: Shipper, batch: list[tuple[Source, float, bytes]]
                        ) -> list[bytes]:
    """One message per line in the format syslog(3) and logger(1) write to /dev/log, the
    one local daemons parse as they come (rsyslog's imuxsock, journald, syslog-ng, busybox):
    `<PRI>Mmm dd hh:mm:ss PROGRAM[PID]: line`, in local time. The severity tells stdout
    (informational) from stderr (error); there is no structured data."""
    messages = []
    for source, captured, line in batch:
        pri = FACILITY_USER * 8 + SEVERITY.get(source.stream, 6)
        t = time.localtime(captured)
        tag = _printable(source.program, 48).replace("[", "_").replace(":", "_")
        if source.pid is not None:
            tag += f"[{source.pid}]"
        head = f"<{pri}>{MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} " \
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {tag}: "
        messages.append((head.encode() + line)[:SYSLOG_MAX])
    return messages


def encode_loki(shipper: Shipper, batch: list[tuple[Source, float, bytes]]) -> bytes:
    """Loki's push API, JSON: one stream per (program, instance, stream) with the target's
    labels, values [unix nanoseconds as a string, line]."""
    import json

    streams: dict[Source, list[list[str]]] = {}
    for source, captured, line in batch:
        streams.setdefault(source, []).append(
            [str(int(captured * 1e9)), line.decode("utf-8", "replace")])
    labels: dict[str, str] = dict(shipper.target.labels)
    body: dict[str, Any] = {"streams": [
        {"stream": {**labels, "program": s.program, "instance": s.instance,
                    "stream": s.stream},
         "values": values} for s, values in streams.items()]}
    return json.dumps(body, separators=(",", ":")).encode()


def encode_otlp(shipper: Shipper, batch: list[tuple[Source, float, bytes]]) -> bytes:
    """An ExportLogsServiceRequest (the official opentelemetry-proto definitions, imported
    on the first batch of an OTLP target only): one ResourceLogs per program, service.name
    the program and the target's labels as resource attributes; per line the capture time,
    a severity by stream, the instance and the stream (log.iostream) as attributes."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
        ExportLogsServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    def attribute(key: str, value: str) -> KeyValue:
        return KeyValue(key=key, value=AnyValue(string_value=value))

    request = ExportLogsServiceRequest()
    by_program: dict[str, Any] = {}
    observed = time.time_ns()
    for source, captured, line in batch:
        scope = by_program.get(source.program)
        if scope is None:
            resource_logs = request.resource_logs.add()
            resource_logs.resource.attributes.extend(
                [attribute("service.name", source.program)] +
                [attribute(k, v) for k, v in shipper.target.labels.items()])
            scope = resource_logs.scope_logs.add()
            scope.scope.name = "pmd"
            by_program[source.program] = scope
        record = scope.log_records.add()
        record.time_unix_nano = int(captured * 1e9)
        record.observed_time_unix_nano = observed
        record.severity_number, record.severity_text = OTLP_SEVERITY.get(
            source.stream, (9, "INFO"))
        record.body.string_value = line.decode("utf-8", "replace")
        record.attributes.extend([attribute("pmd.instance", source.instance),
                                  attribute("log.iostream", source.stream)])
        if source.pid is not None:
            record.attributes.append(KeyValue(key="process.pid",
                                              value=AnyValue(int_value=source.pid)))
    payload: bytes = request.SerializeToString()
    return payload


_ENCODERS: dict[str, Callable[[Shipper, list[tuple[Source, float, bytes]]], Any]] = {
    "syslog": encode_syslog, "loki": encode_loki, "otlp": encode_otlp}


# ---- transports --------------------------------------------------------------------

class _Transport(ABC):
    @abstractmethod
    async def send(self, payload: Any) -> None:
        """Deliver one batch's payload, or raise (the shipper retries with backoff)."""

    async def reset(self) -> None:  # noqa: B027 - a datagram transport has nothing to drop
        """Drop the connection after a failure; the next send makes a new one."""


class _Udp(_Transport):
    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.sock: socket.socket | None = None

    async def send(self, payload: Any) -> None:
        if self.sock is None:
            infos = await asyncio.get_running_loop().getaddrinfo(
                *self.address, type=socket.SOCK_DGRAM)
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            sock.connect(address)
            self.sock = sock
        for message in payload:
            try:
                self.sock.send(message)
            except BlockingIOError:
                raise ShipError("the socket's buffer is full") from None

    async def reset(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class _UnixDatagram(_Udp):
    def __init__(self, path: str) -> None:
        super().__init__(path, 0)
        self.path = path

    async def send(self, payload: Any) -> None:
        if self.sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
            self.sock = sock
        await super().send(payload)


class _Tcp(_Transport):
    """RFC 6587 octet counting: `LEN SP MSG` per message."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, payload: Any) -> None:
        if self.writer is None or self.writer.is_closing():
            _, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(b"".join(b"%d %s" % (len(m), m) for m in payload))
        await self.writer.drain()

    async def reset(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
            self.writer = None


class _Http(_Transport):
    """One POST per batch on a connection of its own (a batch a second at most: a
    connection's cost is nothing beside it, and no keep-alive state can go stale)."""

    def __init__(self, where: tuple[Any, ...], content_type: str,
                 headers: Mapping[str, str]) -> None:
        self.scheme, self.host, self.port, self.path = where
        self.content_type = content_type
        self.headers = dict(headers)

    async def send(self, payload: Any) -> None:
        context = None
        if self.scheme == "https":
            import ssl  # only for https targets: ssl is slow to import, and capture is not

            context = ssl.create_default_context()
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=context)
        try:
            head = [f"POST {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                    f"Content-Type: {self.content_type}", f"Content-Length: {len(payload)}",
                    "Connection: close", "User-Agent: pmd",
                    *(f"{k}: {v}" for k, v in self.headers.items())]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.split(b" ", 2)
            if len(parts) < 2 or not parts[1].isdigit():
                raise ShipError(f"not an HTTP answer: {status_line[:80]!r}")
            status = int(parts[1])
            if not 200 <= status < 300:
                # 4xx but 408 and 429 will not go better with time: the batch is dropped
                permanent = 400 <= status < 500 and status not in (408, 429)
                raise ShipError(f"HTTP {status}", permanent)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _transport(target: ShipTarget) -> _Transport:
    if target.kind == "syslog":
        scheme, host, port = target.where
        if scheme == "udp":
            return _Udp(host, port)
        if scheme == "tcp":
            return _Tcp(host, port)
        return _UnixDatagram(host)
    content_type = "application/x-protobuf" if target.kind == "otlp" else "application/json"
    return _Http(target.where, content_type, target.headers)
