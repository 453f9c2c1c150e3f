"""The runtime's queue of restarts: a few per loop turn, in order, cancellable."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pmd_init.supervisor.runtime import StartQueue


class Turns:
    """Timers whose call_soon callbacks run one loop turn at a time, as asyncio's do:
    what is scheduled during a turn runs in the next one."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], object]] = []

    def call_soon(self, callback: Callable[[], object]) -> Any:
        self.ready.append(callback)

    def call_later(self, delay: float, callback: Callable[[], object]) -> Any:
        raise AssertionError("not used")

    def create_future(self) -> asyncio.Future[Any]:
        raise AssertionError("not used")

    def turn(self) -> None:
        batch, self.ready = self.ready, []
        for callback in batch:
            callback()


def test_a_few_starts_per_turn_in_order() -> None:
    turns = Turns()
    queue = StartQueue(turns, per_turn=4)
    ran: list[int] = []
    handles = [queue.push(lambda i=i: ran.append(i)) for i in range(11)]
    handles[5].cancel()
    assert ran == [] and len(queue) == 10
    turns.turn()
    assert ran == [0, 1, 2, 3]
    turns.turn()
    assert ran == [0, 1, 2, 3, 4, 6, 7, 8]  # a cancelled entry takes no place
    turns.turn()
    assert ran == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    turns.turn()  # the queue is not scheduled again once empty
    assert turns.ready == [] and len(queue) == 0
    queue.push(lambda: ran.append(99))
    turns.turn()
    assert ran[-1] == 99


def test_a_failing_start_does_not_stall_the_queue() -> None:
    turns = Turns()
    queue = StartQueue(turns, per_turn=4)
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("spawn bug")

    queue.push(broken)
    queue.push(lambda: ran.append("next"))
    try:
        turns.turn()
    except RuntimeError:
        pass
    turns.turn()
    assert ran == ["next"]


def test_a_start_runs_at_once_when_it_is_the_turns_first() -> None:
    turns = Turns()
    queue = StartQueue(turns)
    ran: list[str] = []
    assert queue.run_now(lambda: ran.append("a"))
    assert not queue.run_now(lambda: ran.append("b"))  # the turn's start is taken
    queue.push(lambda: ran.append("b"))
    assert ran == ["a"]
    turns.turn()
    assert ran == ["a", "b"]
    assert not queue.run_now(lambda: ran.append("c"))  # "b" took this turn
    turns.turn()
    assert queue.run_now(lambda: ran.append("c")) and ran == ["a", "b", "c"]
    queue.push(lambda: ran.append("d"))
    turns.turn()
    assert not queue.run_now(lambda: ran.append("e"))  # "d" ran: the turn is taken
