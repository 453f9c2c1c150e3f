"""Rotating log files, tails, capture listeners and forwarding, on real files and pipes."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable

import pytest

from pmd_init.logs import tail
from pmd_init.logs.capture import (
    PARTIAL_LINE_MAX,
    SLICE,
    ByteCount,
    Capture,
    Forwarder,
    LineStyle,
    LogFile,
)
from pmd_init.logs.tail import capture_times, count_lines, last_lines, tail_lines
from pmd_init.logs.times import LineTimes, SavedTimes


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


@pytest.mark.parametrize("block", [5, 16, 64 << 10])
def test_last_lines_carry_their_offsets(tmp_path, monkeypatch, block):
    monkeypatch.setattr(tail, "BLOCK", block)
    path = tmp_path / "out.log"
    path.write_bytes(b"one\ntwo\nthree\nfour")
    found = last_lines(path, 3)
    assert [(t.text, t.start, t.end) for t in found] == \
        [("two", 4, 8), ("three", 8, 14), ("four", 14, 18)]
    assert [t.text for t in last_lines(path, 10)] == ["one", "two", "three", "four"]
    assert count_lines(path) == 4
    path.write_bytes(b"".join(b"line %d\n" % i for i in range(1000)))
    found = last_lines(path, 2)
    assert [t.text for t in found] == ["line 998", "line 999"]
    assert found[-1].end == path.stat().st_size and count_lines(path) == 1000
    assert last_lines(tmp_path / "missing", 5) == [] and count_lines(tmp_path / "missing") == 0


def written(log: LogFile, count: int) -> list[str]:
    texts = [f"line {i:04d}" for i in range(count)]
    for text in texts:
        log.write(text.encode() + b"\n")
    return texts


@pytest.mark.parametrize("block", [7, 64 << 10])
def test_a_tail_goes_on_into_the_rotated_files_in_order(tmp_path, monkeypatch, block):
    monkeypatch.setattr(tail, "BLOCK", block)
    path = tmp_path / "out.log"
    log = LogFile(path, max_bytes=100, backups=3)  # 10 lines of 10 bytes a file
    texts = written(log, 33)  # .3 holds 0-9, .2 10-19, .1 20-29, out.log 30-32
    log.close()
    assert [p.name for p in sorted(tmp_path.iterdir())] == \
        ["out.log", "out.log.1", "out.log.2", "out.log.3"]
    found = last_lines(path, 8, backups=3)
    assert [t.text for t in found] == texts[-8:]
    assert [t.backup for t in found] == [1] * 5 + [0] * 3
    assert (found[0].start, found[0].end) == (50, 60)  # offsets within out.log.1
    assert tail_lines(path, 25, backups=3) == texts[-25:]
    assert tail_lines(path, 100, backups=3) == texts
    assert tail_lines(path, 100, backups=1) == texts[-13:]  # as far as it is asked to go
    assert tail_lines(path, 2, backups=3) == texts[-2:]


def test_a_missing_current_file_is_empty_and_a_missing_backup_ends_the_log(tmp_path):
    path = tmp_path / "out.log"
    (tmp_path / "out.log.1").write_text("a\nb\n")
    (tmp_path / "out.log.3").write_text("old\n")
    assert tail_lines(path, 5, backups=3) == ["a", "b"]


def test_a_line_cut_by_rotation_is_one_line(tmp_path):
    path = tmp_path / "out.log"
    log = LogFile(path, max_bytes=10, backups=5)
    log.write(b"first\n" + b"x" * 25 + b"\nlast\n")
    log.close()
    # out.log.4 "first\n", .3 and .2 ten x each, .1 "xxxxx\n", out.log "last\n"
    assert tail_lines(path, 2, backups=5) == ["x" * 25, "last"]
    assert tail_lines(path, 3, backups=5) == ["first", "x" * 25, "last"]
    assert tail_lines(path, 1, backups=5) == ["last"]


def test_a_tail_reads_no_more_than_its_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(tail, "BLOCK", 10)
    path = tmp_path / "out.log"
    (tmp_path / "out.log.1").write_text("older\n")
    path.write_text("a" * 100 + "\nb\n")
    assert [t.text for t in last_lines(path, 5, backups=1, max_bytes=50)] == ["b"]


def test_lines_carry_capture_times_across_a_rotation(tmp_path):
    path = tmp_path / "out.log"
    log = LogFile(path, max_bytes=20, backups=2)
    log.write(b"0123456789\n")  # 11 bytes: the next line starts a new file
    log.write(b"abcdefghij\n")
    assert log.rotated_times is not None and log.times is not None
    found = last_lines(path, 2, backups=2, times=capture_times(log, path, SavedTimes()))
    log.close()
    assert [t.text for t in found] == ["0123456789", "abcdefghij"]
    assert [t.backup for t in found] == [1, 0]
    assert all(t.time is not None for t in found)
    # an index that does not reach a line leaves its time unknown
    bare = last_lines(path, 2, backups=2, times=(LineTimes(start=100),))
    assert [t.time for t in bare] == [None, None]


def test_times_handed_over_by_a_reexec_wait_in_their_registry(tmp_path):
    """The index a snapshot carried is read until the file is opened again, and taken over
    by the file only if the file is as it was; other registries never see it."""
    path = tmp_path / "out.log"
    path.write_bytes(b"one\ntwo\n")
    saved = SavedTimes()
    saved.remember(str(path), [0, 4, 1000.0, 8, 1001.0])
    saved.remember(str(tmp_path / "bad.log"), [0, "x", 1.0])  # malformed: dropped
    assert saved.get(str(tmp_path / "bad.log")) is None
    found = last_lines(path, 2, times=capture_times(None, path, saved))
    assert [t.time for t in found] == [1000.0, 1001.0]
    assert capture_times(None, path, SavedTimes()) == (None,)
    log = LogFile(path, max_bytes=0, backups=0, saved=saved)
    log.write(b"three\n")  # opening the file claims the index, which goes on from there
    log.close()
    assert saved.get(str(path)) is None and log.times is not None
    assert log.times.time_of(8) == 1001.0 and log.times.time_of(14) is not None
    grown = tmp_path / "grown.log"
    grown.write_bytes(b"one\ntwo\nmore\n")
    saved.remember(str(grown), [0, 4, 1000.0, 8, 1001.0])
    other = LogFile(grown, max_bytes=0, backups=0, saved=saved)
    other.ensure_open()  # the file changed since: the index is let go, not trusted
    other.close()
    assert saved.get(str(grown)) is None and other.times is not None
    assert other.times.time_of(8) is None


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


def test_a_byte_count_outlives_the_captures_that_add_to_it(tmp_path):
    """pmd_log_bytes_total: one count per stream of a slot, fed by each run's capture."""
    loop = asyncio.new_event_loop()
    try:
        count = ByteCount()
        for run in (b"first run\n", b"second\n"):
            r, w = Capture.make_pipe()
            capture = Capture(loop, r, LogFile(tmp_path / "out.log", 0, 0), None, b"",
                              count=count)
            os.write(w, run)
            os.close(w)
            assert capture.drain() is True and capture.fd == -1
        assert count.total == len(b"first run\nsecond\n")
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


def forward_through(tmp_path, pieces: list[bytes], prefix: bytes = b"[p] ",
                    style: LineStyle | None = None) -> tuple[bytes, bytes]:
    """Write `pieces` one by one into a capture that forwards to a file, each read before
    the next is written; (log, forwarded)."""
    loop = asyncio.new_event_loop()
    try:
        out = os.open(tmp_path / "stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        forwarder = Forwarder(loop, out)
        os.close(out)
        r, w = Capture.make_pipe()
        capture = Capture(loop, r, LogFile(tmp_path / "out.log", 0, 0), forwarder, prefix,
                          style=style)
        for piece in pieces:
            os.write(w, piece)
            capture.drain()
        os.close(w)
        assert capture.drain() is True
        capture.logfile.close()  # type: ignore[union-attr]
        return (tmp_path / "out.log").read_bytes(), (tmp_path / "stdout").read_bytes()
    finally:
        loop.close()


def test_forwarded_lines_each_start_with_the_prefix_wherever_the_chunks_cut(tmp_path):
    lines = [f"line {i} {'x' * (i % 37)}\n".encode() for i in range(2000)] + [b"\n", b"last"]
    blob = b"".join(lines)
    cuts = sorted({(i * 7919) % len(blob) for i in range(300)} | {0, len(blob)})
    pieces = [blob[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    logged, forwarded = forward_through(tmp_path, pieces)
    assert logged == blob  # the log file is byte for byte what the program wrote
    # an unfinished last line is forwarded at EOF, ended
    assert forwarded == b"".join(b"[p] " + line for line in lines[:-1]) + b"[p] last\n"


def test_a_chunk_of_many_slices_is_forwarded_whole(tmp_path):
    lines = [f"{i:06d} {'y' * (i % 200)}\n".encode() for i in range(4000)]
    blob = b"".join(lines)  # about 420 KiB in one write: many of the capture's slices
    assert len(blob) > 5 * SLICE
    logged, forwarded = forward_through(tmp_path, [b"start of ", blob + b"tail"])
    assert logged == b"start of " + blob + b"tail"
    assert forwarded == b"[p] start of " + b"".join(b"[p] " + line for line in lines)[4:] \
        + b"[p] tail\n"


def test_a_line_longer_than_the_partial_limit_is_forwarded_in_ended_pieces(tmp_path):
    long = b"y" * (PARTIAL_LINE_MAX + 10)
    _, forwarded = forward_through(tmp_path, [b"a\nb", long[:1000], long[1000:], b"\nc\n"])
    assert forwarded == b"[p] a\n[p] b" + long + b"\n[p] c\n"


@pytest.mark.parametrize("before", [b"", b"a\n"], ids=["held", "after-a-line"])
def test_a_cut_lines_own_newline_in_the_next_read_is_its_end_not_an_empty_line(
        tmp_path, before):
    # The line is cut at the end of a read (held past the limit, or the rest of a read
    # after its last newline is past it): pmd ends that piece; the line's own newline,
    # first in the next read, is the same end. A real empty line after it stays.
    long = b"y" * (PARTIAL_LINE_MAX + 10)
    logged, forwarded = forward_through(tmp_path, [before + long, b"\nc\n\nd\n"])
    assert logged == before + long + b"\nc\n\nd\n"
    head = b"[p] a\n" if before else b""
    assert forwarded == head + b"[p] " + long + b"\n[p] c\n[p] \n[p] d\n"
    _, raw = forward_through(tmp_path, [before + long, b"\nc\n"], prefix=b"",
                             style=LineStyle("raw", "p", None, "stdout"))
    assert raw == before + long + b"\nc\n"
    _, objects = forward_through(tmp_path, [before + long, b"\n\nc\n"], prefix=b"",
                                 style=LineStyle("json", "p", None, "stdout"))
    got = [json.loads(line)["line"] for line in objects.splitlines()]
    assert got == ([before[:-1].decode()] if before else []) + [long.decode(), "", "c"]


def test_a_new_line_after_a_cut_one_that_did_not_end_is_forwarded(tmp_path):
    long = b"y" * (PARTIAL_LINE_MAX + 10)
    _, forwarded = forward_through(tmp_path, [long, b"zz\n"])
    assert forwarded == b"[p] " + long + b"\n[p] zz\n"


def test_a_stalled_stdout_drops_whole_chunks_and_counts_them(tmp_path):
    loop = asyncio.new_event_loop()
    r, w = os.pipe()
    try:
        forwarder = Forwarder(loop, w)
        chunk = b"z" * 1000 + b"\n"
        sent = 0
        while forwarder.dropped == 0:  # nobody reads: the pipe fills, then the buffer
            forwarder.write(b"[p] ", chunk)
            sent += 1
        assert forwarder.dropped == len(chunk) + 4
        os.set_blocking(r, False)
        got = bytearray()
        while True:
            try:
                data = os.read(r, 1 << 20)
            except BlockingIOError:
                data = b""
            got += data
            if not data:
                loop.run_until_complete(asyncio.sleep(0.01))  # the writer callback flushes
                if not forwarder._pending:
                    try:
                        got += os.read(r, 1 << 20)
                    except BlockingIOError:
                        pass
                    break
        assert bytes(got) == (b"[p] " + chunk) * (sent - 1)  # whole lines, none cut
    finally:
        loop.close()
        os.close(r)
        os.close(w)


def read_forwarded(loop: asyncio.AbstractEventLoop, fd: int, forwarder: Forwarder) -> bytes:
    """Everything the forwarder writes to the pipe `fd`, read until it holds nothing more
    (the loop turns meanwhile, for the forwarder's writable callback)."""
    os.set_blocking(fd, False)
    got = bytearray()
    for _ in range(1000):
        try:
            got += os.read(fd, 1 << 20)
        except BlockingIOError:
            if not forwarder._pending:
                break
            loop.run_until_complete(asyncio.sleep(0.005))  # the writer callback
    return bytes(got)


def test_a_stalled_stdout_drops_whole_lines_of_chunks_written_in_slices(tmp_path):
    """Chunks of many slices, cut mid-line, forwarded to a pipe nobody reads: once it is
    full and the held buffer too, chunks are dropped whole. What reaches the reader is
    whole prefixed lines in order, and what was dropped is counted to the byte."""
    lines = [f"{i:07d} {'y' * (i % 90)}\n".encode() for i in range(40000)]
    blob = b"".join(lines)  # about 2.1 MiB
    loop = asyncio.new_event_loop()
    r_out, w_out = os.pipe()
    r, w = Capture.make_pipe()
    try:
        forwarder = Forwarder(loop, w_out)
        capture = Capture(loop, r, LogFile(tmp_path / "out.log", 0, 0), forwarder, b"[p] ")
        step = 5 * SLICE + 1001  # many slices a chunk, never at a line's end
        for start in range(0, len(blob), step):
            os.write(w, blob[start:start + step])
            capture.drain()
        os.close(w)
        assert capture.drain() is True
        assert forwarder.dropped > 0  # the reader never read: the test is about drops
        got = read_forwarded(loop, r_out, forwarder)
        assert (tmp_path / "out.log").read_bytes() == blob  # the log file has everything
        received = got.split(b"\n")
        assert received.pop() == b""  # it ends with a whole line
        assert all(line.startswith(b"[p] ") for line in received)
        numbers = [int(line[4:11]) for line in received]
        assert numbers == sorted(numbers)
        assert all(line[4:] + b"\n" == lines[n] for line, n in zip(received, numbers, strict=True))
        assert len(got) + forwarder.dropped == len(blob) + 4 * len(lines)
    finally:
        loop.close()
        os.close(r_out)
        os.close(w_out)


def test_a_burst_to_a_lagging_pipe_reader_fits_in_the_enlarged_pipe(tmp_path):
    """pmd's stdout is a pipe under a container runtime: a burst of the size of one capture
    chunk waits in the pipe for a reader that lags, instead of being dropped."""
    loop = asyncio.new_event_loop()
    r, w = os.pipe()
    try:
        forwarder = Forwarder(loop, w)
        chunk = b"[p] " + b"y" * 95 + b"\n"
        burst = chunk * ((900 << 10) // len(chunk))
        for _ in range(2):  # two chunks: more than the pipe, all within the held buffer
            forwarder.write(burst)
        assert forwarder.dropped == 0
        got = read_forwarded(loop, r, forwarder)
        assert bytes(got) == burst * 2
    finally:
        loop.close()
        os.close(r)
        os.close(w)
