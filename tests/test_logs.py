"""Rotating log files, tails and capture listeners, on real files and pipes."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from pmd_init.logs.capture import Capture, LogFile
from pmd_init.logs.tail import tail_lines


def test_no_file_grows_past_max_bytes_and_nothing_is_lost(tmp_path):
    log = LogFile(tmp_path / "out.log", max_bytes=100, backups=50)
    lines = [f"line {i:04d}\n".encode() for i in range(100)]
    blob = b"".join(lines)
    log.write(blob[:333])
    log.write(blob[333:])
    log.close()
    files = sorted(tmp_path.glob("out.log.*"), key=lambda p: -int(p.suffix[1:]))
    files.append(tmp_path / "out.log")
    assert b"".join(p.read_bytes() for p in files) == blob
    for path in files:
        data = path.read_bytes()
        assert len(data) <= 100
        assert data.endswith(b"\n")


def test_backups_beyond_the_limit_are_dropped(tmp_path):
    log = LogFile(tmp_path / "out.log", max_bytes=10, backups=2)
    for i in range(10):
        log.write(f"{i:09d}\n".encode())
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.log", "out.log.1", "out.log.2"]
    assert (tmp_path / "out.log").read_text() == "000000009\n"
    assert (tmp_path / "out.log.2").read_text() == "000000007\n"


def test_a_line_longer_than_a_file_is_cut_at_the_limit(tmp_path):
    log = LogFile(tmp_path / "out.log", max_bytes=10, backups=5)
    log.write(b"x" * 25)
    log.close()
    sizes = sorted(p.stat().st_size for p in tmp_path.iterdir())
    assert sizes == [5, 10, 10]


def test_zero_backups_truncates(tmp_path):
    log = LogFile(tmp_path / "out.log", max_bytes=10, backups=0)
    log.write(b"aaaaaaaaa\n")
    log.write(b"bbbbbbbbb\n")
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["out.log"]
    assert (tmp_path / "out.log").read_text() == "bbbbbbbbb\n"


def test_symlinked_log_file_is_not_followed(tmp_path):
    target = tmp_path / "target"
    target.write_text("precious\n")
    (tmp_path / "out.log").symlink_to(target)
    log = LogFile(tmp_path / "out.log", max_bytes=0, backups=0)
    log.write(b"attack\n")
    log.close()
    assert target.read_text() == "precious\n"
    assert log.dropped == 7


def test_tail_reads_the_last_lines(tmp_path):
    path = tmp_path / "f"
    path.write_text("".join(f"{i}\n" for i in range(100000)))
    assert tail_lines(path, 3) == ["99997", "99998", "99999"]
    assert tail_lines(path, 0) == []
    assert tail_lines(tmp_path / "missing", 5) == []
    path.write_text("a\nb")
    assert tail_lines(path, 5) == ["a", "b"]


def test_capture_listeners_subscribe_and_unsubscribe(tmp_path):
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        capture = Capture(loop, r, LogFile(tmp_path / "out.log", 0, 0), None, b"")
        first: list[bytes] = []
        second: list[bytes] = []
        stop_first = capture.subscribe(first.append)
        stop_second = capture.subscribe(second.append)
        os.write(w, b"one\n")
        await wait_for(lambda: second == [b"one\n"])
        stop_first()
        stop_first()  # twice is harmless
        os.write(w, b"two\n")
        await wait_for(lambda: second == [b"one\n", b"two\n"])
        assert first == [b"one\n"] and capture.listener_count == 1
        stop_second()
        assert capture.listener_count == 0
        os.close(w)
        await wait_for(lambda: capture.fd < 0)
        assert (tmp_path / "out.log").read_bytes() == b"one\ntwo\n"

    asyncio.run(scenario())


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)
