"""The log_line readiness watcher: whole lines only, across reads and streams, once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pmd_init.supervisor.readiness import MAX_LINE, LogLineWatch


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
