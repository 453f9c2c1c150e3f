"""The SSE log stream's subscriptions, without a server: a LogFollower over a real pipe and
capture, with a request that stands in for Sanic's. When the client goes away, the stream
ends and leaves no listener on the capture and no subscriber on the event stream."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pmd_init.api.logstream import LogFollower
from pmd_init.logs.capture import Capture, LogFile
from pmd_init.supervisor.events import EventBus


class Client:
    """A request and its streamed response; `leave()` is the client closing the connection."""

    def __init__(self, events: EventBus) -> None:
        self.app = SimpleNamespace(ctx=SimpleNamespace(supervisor=SimpleNamespace(events=events),
                                                   opening_tails=asyncio.Lock()))
        self.transport = SimpleNamespace(is_closing=lambda: self.gone)
        self.gone = False
        self.received = b""
        self.ended = False

    def leave(self) -> None:
        self.gone = True

    async def respond(self, **_: Any) -> Client:
        return self

    async def send(self, payload: bytes) -> None:
        self.received += payload

    async def eof(self) -> None:
        self.ended = True


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_the_stream_unsubscribes_when_the_client_goes_away(tmp_path: Path) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        path = tmp_path / "stdout.log"
        logfile = LogFile(path, 0, 0)
        r, w = os.pipe()
        capture = Capture(loop, r, logfile, None, b"")
        inst = SimpleNamespace(name="p", stdout_log=logfile, stderr_log=None,
                               captures=[capture])
        events = EventBus()
        client = Client(events)
        follower = LogFollower(client, lambda: inst, "stdout",  # type: ignore[arg-type]
                               asyncio.Event())
        stream = loop.create_task(follower.run(path, 0, None, 10))
        os.write(w, b"hello\n")
        await wait_for(lambda: b"data: hello" in client.received)
        assert capture.listener_count == 1 and len(events._subscriptions) == 1
        client.leave()
        os.write(w, b"unread\n")  # wakes the stream, which finds the client gone
        await asyncio.wait_for(stream, 5)
        assert client.ended and b"unread" not in client.received
        assert capture.listener_count == 0 and events._subscriptions == []
        assert follower.fd is None
        capture.close()
        os.close(w)

    asyncio.run(scenario())
