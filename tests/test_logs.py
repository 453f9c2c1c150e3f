"""Rotating log files and tails, on real files."""

from __future__ import annotations

import asyncio
import os

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


def test_drain_logs_what_an_ended_run_left_and_closes_its_pipe(tmp_path):
    """Before a program's next run: the last output is logged, the pipe closed at once
    (a crash loop must not hold two runs' pipes), and the EOF callback says so."""
    loop = asyncio.new_event_loop()
    try:
        log = LogFile(tmp_path / "out.log", max_bytes=0, backups=0)
        closed = []
        r, w = Capture.make_pipe()
        capture = Capture(loop, r, log, None, b"[p] ", on_eof=closed.append)
        os.write(w, b"last words\n")
        os.close(w)
        assert capture.drain() is True
        assert capture.fd == -1 and closed == [capture]
        assert (tmp_path / "out.log").read_bytes() == b"last words\n"
    finally:
        loop.close()


def test_drain_keeps_a_pipe_that_a_leftover_process_still_holds(tmp_path):
    loop = asyncio.new_event_loop()
    try:
        log = LogFile(tmp_path / "out.log", max_bytes=0, backups=0)
        r, w = Capture.make_pipe()
        capture = Capture(loop, r, log, None, b"[p] ")
        os.write(w, b"still here\n")
        assert capture.drain() is False  # empty for now, not at EOF: no wait, no close
        assert capture.fd == r
        assert (tmp_path / "out.log").read_bytes() == b"still here\n"
        os.close(w)
        assert capture.drain() is True
    finally:
        loop.close()
