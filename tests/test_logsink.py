"""pmd's log lines: what one loop turn logs goes out in one write, in order."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import threading

from pmd_init.pid1.logsink import LineFormatter, LoopTurnHandler, info_line


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def make_logger(name: str) -> tuple[logging.Logger, CountingStream]:
    stream = CountingStream()
    handler = LoopTurnHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream


def test_a_loop_turn_of_lines_is_one_write_in_order():
    logger, stream = make_logger("test.logsink.turn")

    async def burst() -> list[str]:
        for i in range(100):
            logger.info("p%03d: STOPPED -> STARTING", i)
        seen_inside = list(stream.writes)  # nothing written while the turn runs
        await asyncio.sleep(0)  # the turn ends: the lines go out
        await asyncio.sleep(0)
        logger.info("next turn")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return seen_inside

    inside = asyncio.run(burst())
    assert inside == []
    assert len(stream.writes) == 2
    assert stream.writes[0] == "".join(f"p{i:03d}: STOPPED -> STARTING\n" for i in range(100))
    assert stream.writes[1] == "next turn\n"


def test_without_a_loop_or_from_another_thread_a_line_is_written_at_once():
    logger, stream = make_logger("test.logsink.now")
    logger.info("before the loop")
    assert stream.writes == ["before the loop\n"]

    async def from_thread() -> None:
        thread = threading.Thread(target=lambda: logger.info("from a thread"))
        thread.start()
        thread.join()
        assert stream.writes[-1] == "from a thread\n"  # not waiting for the loop's turn

    asyncio.run(from_thread())
    assert len(stream.writes) == 2


def test_lines_left_when_the_loop_ends_are_written_by_a_flush():
    logger, stream = make_logger("test.logsink.end")
    loop = asyncio.new_event_loop()
    loop.call_soon(logger.info, "exiting")
    loop.call_soon(loop.stop)  # the loop ends with this turn
    loop.run_forever()
    loop.close()  # the turn's flush never ran
    assert stream.writes == []
    for handler in logger.handlers:
        handler.flush()  # what logging.shutdown() does at exit
    assert stream.writes == ["exiting\n"]


def test_a_warning_goes_out_at_once_with_the_lines_before_it():
    logger, stream = make_logger("test.logsink.warning")

    async def then_block() -> list[str]:
        logger.info("a: STOPPED -> STARTING")
        logger.warning("about to block the loop")
        return list(stream.writes)  # what a reader sees while the turn still runs

    inside = asyncio.run(then_block())
    assert inside == ["a: STOPPED -> STARTING\nabout to block the loop\n"]


def test_a_state_line_without_a_record_reads_as_one_with_a_record():
    stream = CountingStream()
    handler = LoopTurnHandler(stream)
    handler.setFormatter(LineFormatter())
    logger = logging.getLogger("test.logsink.quick")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.info("%s", "web: RUNNING -> EXITED pid 12 exit 1")
    info_line(logger, "web: RUNNING -> EXITED pid 12 exit 1")
    logger.setLevel(logging.WARNING)
    info_line(logger, "not shown")
    assert len(stream.writes) == 2
    with_record, without = stream.writes
    assert with_record.split(" ", 1)[1] == without.split(" ", 1)[1] == \
        "pmd INFO web: RUNNING -> EXITED pid 12 exit 1\n"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", without.split(" ", 1)[0])


def test_a_state_line_reaches_any_other_handler_as_a_record():
    logger, stream = make_logger("test.logsink.other")  # another format: not the quick way
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    info_line(logger, "web: STARTING -> RUNNING pid 7")
    logger.addHandler(Keep())
    info_line(logger, "web: RUNNING -> EXITED pid 7 exit 0")
    assert stream.writes == ["web: STARTING -> RUNNING pid 7\n",
                             "web: RUNNING -> EXITED pid 7 exit 0\n"]
    assert [r.getMessage() for r in seen] == ["web: RUNNING -> EXITED pid 7 exit 0"]
