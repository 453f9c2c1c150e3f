"""A Server-Sent Events stream of a program's log that follows the file through rotations;
it starts with the last lines, as logs/tail.py reads them.

The stream's cursor is a byte offset into the current log file; each event's `id` is the
offset just after the lines it carries, so a client reconnecting with Last-Event-ID (or
`?offset=`) resumes exactly there. When the file is rotated while a client follows it,
the stream reads the old file to its end, sends a `reset` event and goes on at offset 0 of
the new file: no line is lost or repeated. When a reconnecting client's cursor lies past
the end of the current file, the file was rotated under it: the rest of `<file>.1` from
the cursor is sent first, then `reset`, then the new file from 0.

Nothing polls: the stream sleeps until the program's output capture or a state change of
the program wakes it, with a keep-alive comment every HEARTBEAT seconds (which also keeps
proxies and Sanic's response timeout from closing an idle stream).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from sanic.request import Request

from ..logs.capture import Capture
from ..logs.tail import backup_path, last_lines
from ..supervisor.events import Event, ReadyEvent, StateEvent
from ..supervisor.instance import Instance
from .context import context

HEARTBEAT = 15.0
CHUNK = 256 << 10  # per send: a stalled reader holds about this much, not more
PARTIAL_MAX = 64 << 10  # a line longer than this is sent in pieces
LINES_MAX = 10000
#: The most a stream's opening tail reads (the logs route reads more): it is read on the
#: loop in one go, and a stream's purpose is what comes next.
OPENING_TAIL_BYTES = 4 << 20


def _open(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None


def sse_event(data: str | None = None, event: str | None = None,
              event_id: int | None = None) -> bytes:
    out = []
    if event_id is not None:
        out.append(f"id: {event_id}")
    if event is not None:
        out.append(f"event: {event}")
    if data is not None:
        out.extend(f"data: {line}" for line in data.split("\n"))
    return ("\n".join(out) + "\n\n").encode()


class LogFollower:
    """One client's SSE stream of one instance's stdout or stderr."""

    def __init__(self, request: Request, resolve: Callable[[], Instance | None], stream: str,
                 closing: asyncio.Event) -> None:
        self.request = request
        self.resolve = resolve
        self.stream = stream
        self.closing = closing
        self.wake = asyncio.Event()
        self.fd: int | None = None
        self.pos = 0
        #: The captures listened to, each with its unsubscribe.
        self.hooked: dict[Capture, Callable[[], None]] = {}
        self.response: Any = None
        #: `ready` events to send (the followed instance said it is ready), in order.
        self.notices: list[bytes] = []

    # ---- wake-ups ------------------------------------------------------------------

    def _poke(self, *_: object) -> None:
        self.wake.set()

    def _hook(self, inst: Instance) -> None:
        """Listen to the instance's current capture of our stream (a new one per spawn)."""
        logfile = inst.stdout_log if self.stream == "stdout" else inst.stderr_log
        for capture in inst.captures:
            if capture.logfile is logfile and capture not in self.hooked:
                self.hooked[capture] = capture.subscribe(self._poke)
        for capture in [c for c in self.hooked if c.fd < 0 and c not in inst.captures]:
            self.hooked.pop(capture)()

    def _unhook(self) -> None:
        for unsubscribe in self.hooked.values():
            unsubscribe()
        self.hooked = {}

    # ---- output --------------------------------------------------------------------

    async def _send(self, payload: bytes) -> bool:
        transport = self.request.transport
        if transport is None or transport.is_closing():
            return False
        try:
            await self.response.send(payload)
        except Exception:  # noqa: BLE001 - the client went away mid-send: the stream ends
            return False
        return True

    async def _drain(self) -> bool:
        """Send every complete line from the cursor to the end of the open file."""
        if self.fd is None:
            return True
        while True:
            data = os.pread(self.fd, CHUNK, self.pos)
            if not data:
                return True
            cut = data.rfind(b"\n")
            if cut < 0:
                if len(data) < PARTIAL_MAX:
                    return True  # wait for the end of the line
                cut = len(data) - 1
            chunk = data[: cut + 1]
            self.pos += len(chunk)
            text = chunk.decode("utf-8", "replace")
            if text.endswith("\n"):
                text = text[:-1]
            if not await self._send(sse_event(text, event_id=self.pos)):
                return False

    async def _flush_partial(self) -> bool:
        """The rest of a file that will not grow again (rotated away)."""
        if self.fd is None:
            return True
        data = os.pread(self.fd, PARTIAL_MAX, self.pos)
        if not data:
            return True
        self.pos += len(data)
        return await self._send(sse_event(data.decode("utf-8", "replace"), event_id=self.pos))

    async def _reset(self, path: Path, reason: str) -> bool:
        if self.fd is not None:
            os.close(self.fd)
        self.fd = _open(path)
        self.pos = 0
        body = orjson.dumps({"reason": reason, "log_file": str(path), "offset": 0}).decode()
        return await self._send(sse_event(body, event="reset", event_id=0))

    async def _check_rotation(self, path: Path) -> bool:
        """Move to a new file if ours was rotated away or truncated; False to end."""
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if self.fd is None:
            if st is not None:
                self.fd = _open(path)
                self.pos = 0
            return True
        mine = os.fstat(self.fd)
        if st is not None and st.st_ino == mine.st_ino and st.st_dev == mine.st_dev:
            if st.st_size < self.pos:  # truncated in place (copytruncate)
                return await self._reset(path, "truncated")
            return True
        if st is None and mine.st_nlink > 0:
            return True  # renamed away and nothing new yet: keep reading the old one
        if not await self._drain() or not await self._flush_partial():
            return False
        return await self._reset(path, "rotated")

    # ---- the stream ----------------------------------------------------------------

    async def _send_backup_lines(self, texts: list[str]) -> bool:
        """Lines of a rotated file, in events of about CHUNK bytes. Their id is 0: after
        them, the cursor is at the start of the current file."""
        batch: list[str] = []
        size = 0
        for text in texts:
            batch.append(text)
            size += len(text) + 1
            if size >= CHUNK:
                if not await self._send(sse_event("\n".join(batch), event_id=0)):
                    return False
                batch, size = [], 0
        return not batch or await self._send(sse_event("\n".join(batch), event_id=0))

    async def _start(self, path: Path, backups: int, offset: int | None, lines: int) -> bool:
        self.fd = _open(path)
        if offset is None:
            # The same tail as the logs route (into the backups when the current file is
            # short), then the current file from its first line in that tail.
            # One opening tail at a time, each in a loop turn of its own: the tail is read
            # in one go (up to three files of a chatty program), and fifty streams opened
            # at once must not read theirs back to back while every request waits.
            async with context(self.request).opening_tails:
                tail = last_lines(path, lines, backups, current=self.fd,
                                  max_bytes=OPENING_TAIL_BYTES)
            if not await self._send_backup_lines([t.text for t in tail if t.backup]):
                return False
            first = next((t.start for t in tail if not t.backup), None)
            if first is not None:
                self.pos = first
            else:
                self.pos = os.fstat(self.fd).st_size if self.fd is not None else 0
            return True
        size = os.fstat(self.fd).st_size if self.fd is not None else 0
        if offset <= size:
            self.pos = offset
            return True
        # The cursor is past the end: the file was rotated under it.
        older = _open(backup_path(path, 1)) if backups > 0 else None
        if older is not None:
            current, self.fd, self.pos = self.fd, older, offset
            try:
                if os.fstat(older).st_size > offset:
                    if not await self._drain() or not await self._flush_partial():
                        return False
            finally:
                os.close(older)
                self.fd = current
        return await self._reset(path, "rotated")

    async def run(self, path: Path, backups: int, offset: int | None, lines: int) -> None:
        sup = context(self.request).supervisor
        inst = self.resolve()
        if inst is None:
            return
        self.response = await self.request.respond(
            content_type="text/event-stream; charset=utf-8",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        name = inst.name

        def on_event(event: Event) -> None:
            if not isinstance(event, ReadyEvent | StateEvent) or event.instance != name:
                return
            if isinstance(event, ReadyEvent):
                data = orjson.dumps({"instance": event.instance, "via": event.via,
                                     "pid": event.pid, "time": event.time}).decode()
                self.notices.append(sse_event(data, event="ready"))
                self._poke()
            elif isinstance(event, StateEvent):
                self._poke()

        unsubscribe = sup.events.subscribe(on_event, (ReadyEvent, StateEvent))
        try:
            await self.response.send(b"retry: 1000\n\n")
            if not await self._start(path, backups, offset, lines):
                return
            while not self.closing.is_set():
                inst = self.resolve()
                if inst is None:
                    await self._send(sse_event('{"reason": "program removed"}', event="end"))
                    return
                self._hook(inst)
                self.wake.clear()
                if not await self._drain() or not await self._check_rotation(path):
                    return
                if not await self._drain():
                    return
                while self.notices:  # after the lines logged before it
                    if not await self._send(self.notices.pop(0)):
                        return
                try:
                    await asyncio.wait_for(self._wait(), HEARTBEAT)
                except TimeoutError:
                    if not await self._send(b": keep-alive\n\n"):
                        return
        except (ConnectionError, OSError):
            pass
        finally:
            unsubscribe()
            self._unhook()
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            try:
                await self.response.eof()
            except Exception:  # noqa: BLE001 - the client may be gone already
                pass

    async def _wait(self) -> None:
        closing = asyncio.ensure_future(self.closing.wait())
        woken = asyncio.ensure_future(self.wake.wait())
        try:
            await asyncio.wait({closing, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            woken.cancel()
