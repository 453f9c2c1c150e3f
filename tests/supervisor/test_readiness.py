"""The readiness watchers: log_line (whole lines only, across reads and streams, once),
the startup probe (retried until its first success, ended by close) and the notify socket
(messages by the sender's process group, passed fds closed)."""

from __future__ import annotations

import array
import asyncio
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pmd_init.model.spec import HealthCheckSpec, ProgramSpec
from pmd_init.supervisor.readiness import MAX_LINE, PROBE_INTERVAL, LogLineWatch, Readiness


class FakeCapture:
    def __init__(self) -> None:
        self.listeners: list[Callable[[bytes], None]] = []

    def subscribe(self, listener: Callable[[bytes], None]) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def write(self, data: bytes) -> None:
        for listener in tuple(self.listeners):
            listener(data)


def watch(pattern: str) -> tuple[FakeCapture, FakeCapture, list[int], LogLineWatch]:
    out, err = FakeCapture(), FakeCapture()
    hits: list[int] = []
    captures: Any = [out, err]
    return out, err, hits, LogLineWatch(captures, pattern, lambda: hits.append(1))


def test_a_line_split_across_reads_matches_once_and_unsubscribes() -> None:
    out, err, hits, _ = watch(r"^ready on port \d+$")
    out.write(b"starting\nready on ")
    err.write(b"port 80 is odd\n")  # another stream's line is not joined to stdout's
    assert hits == []
    out.write(b"port 8080\r\nready on port 1\n")
    assert hits == [1]
    assert out.listeners == [] and err.listeners == []


def test_an_endless_line_is_matched_by_its_start_and_not_kept() -> None:
    out, _, hits, watcher = watch("^x+y")
    out.write(b"x" * (MAX_LINE + 1))
    assert hits == [] and watcher._partial == {}
    out.write(b"y\n")
    assert hits == []  # the start of the line was matched on its own, and did not match
    watcher.close()
    assert out.listeners == []


def test_a_startup_probe_retries_until_its_first_success_and_close_ends_it() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        hub = Readiness(loop, children=None, base_env={},  # type: ignore[arg-type]
                        notify_path=Path("/nonexistent/notify.sock"))
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        spec = ProgramSpec(name="web", command="true")
        check = HealthCheckSpec(type="tcp", port=port)
        hits: list[float] = []
        hub.follow_probe(check, spec, None, lambda: hits.append(loop.time()))
        await asyncio.sleep(0.2)
        assert hits == []  # bound, not listening: refused, retried after PROBE_INTERVAL
        listener.listen()
        began = loop.time()
        await asyncio.sleep(PROBE_INTERVAL + 0.3)
        assert len(hits) == 1 and hits[0] >= began
        # one that never succeeds is ended, and awaited, by close()
        listener.close()
        stop = hub.follow_probe(check, spec, None, lambda: hits.append(loop.time()))
        await asyncio.sleep(0)
        await hub.close()
        assert hub._tasks == set() and len(hits) == 1
        stop()  # closing after the end is harmless

    asyncio.run(scenario())


def test_notify_messages_go_to_the_senders_group_and_passed_fds_are_closed(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        hub = Readiness(loop, children=None, base_env={},  # type: ignore[arg-type]
                        notify_path=tmp_path / "notify.sock")
        address = hub.notify_address()
        assert address == str(tmp_path / "notify.sock")
        assert os.stat(address).st_mode & 0o777 == 0o666
        got: list[dict[str, str]] = []
        stop = hub.follow_notify(os.getpgid(0), got.append)  # this test's own group
        barrier_r, barrier_w = os.pipe()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendmsg([b"READY=1\nSTATUS=up\nnot a field\n"], [
                (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [barrier_w]))],
                0, address)
            os.close(barrier_w)
            await asyncio.sleep(0.05)
            assert got == [{"READY": "1", "STATUS": "up"}]
            # pmd closed the fd it was passed: the sender's barrier sees EOF
            assert os.read(barrier_r, 1) == b""
            os.close(barrier_r)
            stop()  # no longer followed: ignored, and counted
            sender.sendto(b"READY=1", address)
            await asyncio.sleep(0.05)
        assert len(got) == 1 and hub.notify_ignored == 1
        await hub.close()
        assert not (tmp_path / "notify.sock").exists()

    asyncio.run(scenario())
