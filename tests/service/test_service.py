"""The service layer without a running pmd: its tasks outlive a cancelled caller, a reset
holds off other changes of programs.json, a second reload of a program is refused while
the first runs, and quick-start names. The supervisor is a stand-in that records calls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pmd_init.model.states import ProgramState
from pmd_init.service import OwnedTasks, Service
from pmd_init.service import service as service_module
from pmd_init.service.service import command_word, quick_name
from pmd_init.supervisor.errors import Refused
from pmd_init.supervisor.reload import ReloadReport

S = ProgramState


class StandIn:
    """What the service calls on a supervisor, recorded; a reset takes `reset_for` s."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.programs: dict[int, Any] = {}
        self.reset_for = 0.05

    async def reset(self) -> None:
        self.calls.append("reset begins")
        await asyncio.sleep(self.reset_for)
        self.calls.append("reset ends")

    def add(self, spec: Any) -> str:
        self.calls.append(f"add {spec}")
        return spec

    def apply(self, specs: Any) -> dict[str, list[str]]:
        self.calls.append(f"apply {specs}")
        return {"added": list(specs)}


class Named:
    def __init__(self, name: str) -> None:
        self.name = name


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_an_operation_goes_on_when_its_caller_is_cancelled():
    async def scenario() -> list[str]:
        tasks = OwnedTasks()
        done: list[str] = []

        async def operation() -> None:
            await asyncio.sleep(0.02)
            done.append("finished")

        caller = asyncio.ensure_future(tasks.run(operation(), "op"))
        await asyncio.sleep(0)
        caller.cancel()  # what Sanic does to a request whose client disconnected
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert len(tasks) == 1
        await tasks.settle(1.0)
        assert len(tasks) == 0
        return done

    assert run(scenario()) == ["finished"]


def test_close_cancels_and_awaits_what_is_under_way_and_refuses_more():
    async def scenario() -> None:
        tasks = OwnedTasks()
        cancelled = asyncio.Event()

        async def forever() -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        tasks.spawn(forever(), "forever")
        await asyncio.sleep(0)
        await tasks.close()
        assert cancelled.is_set() and len(tasks) == 0

        async def late() -> None:
            raise AssertionError("never runs")

        with pytest.raises(Refused) as refused:
            tasks.spawn(late(), "late")
        assert refused.value.code == "SHUTTING_DOWN"

    run(scenario())


def test_a_failed_operation_whose_caller_has_gone_is_retrieved(caplog):
    async def scenario() -> None:
        tasks = OwnedTasks()

        async def fails() -> None:
            raise Refused("no")

        task = tasks.spawn(fails(), "fails")
        await asyncio.sleep(0.01)
        assert task.done() and len(tasks) == 0

    with caplog.at_level("INFO", logger="pmd.service"):
        run(scenario())
    assert "fails: no" in caplog.text


def test_a_reset_cut_off_by_its_caller_still_ends_and_holds_off_an_add():
    async def scenario() -> list[str]:
        sup = StandIn()
        service = Service(sup)  # type: ignore[arg-type]
        caller = asyncio.ensure_future(service.reset())
        await asyncio.sleep(0.01)
        caller.cancel()
        added = await service.add("extra")  # waits for the reset: not lost in between
        assert added == "extra"
        return sup.calls

    assert run(scenario()) == ["reset begins", "reset ends", "add extra"]


def test_a_sighup_reload_waits_for_a_reset_under_way():
    async def scenario() -> list[str]:
        sup = StandIn()
        service = Service(sup)  # type: ignore[arg-type]
        resetting = asyncio.ensure_future(service.reset())
        await asyncio.sleep(0.01)
        report = await service.apply_config(["a"])  # type: ignore[list-item]
        assert report == {"added": ["a"]}
        await resetting
        return sup.calls

    assert run(scenario()) == ["reset begins", "reset ends", "apply ['a']"]


def test_reloads_of_one_program_queue_in_order_and_each_says_what_it_did(monkeypatch):
    gate: dict[str, asyncio.Event] = {}
    log: list[str] = []

    async def slow_reload(sup: Any, program: Any, timeout: float | None = None
                          ) -> ReloadReport:
        number = sum(entry.startswith("begin") for entry in log) + 1
        log.append(f"begin {number}")
        await gate["open"].wait()
        log.append(f"end {number}")
        return ReloadReport(mode="zero-downtime", replaced=[4000 + number])

    monkeypatch.setattr(service_module, "reload_program", slow_reload)

    async def scenario() -> list[ReloadReport]:
        gate["open"] = asyncio.Event()
        service = Service(StandIn())  # type: ignore[arg-type]
        program = Named("web")
        first = asyncio.ensure_future(service.reload(program))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        first.cancel()  # the client went away: the reload goes on, and still holds the turn
        second = asyncio.ensure_future(service.reload(program))  # type: ignore[arg-type]
        third = asyncio.ensure_future(service.reload(program))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        assert log == ["begin 1"]  # the others wait: no conflict, no overlap
        gate["open"].set()
        reports = [await second, await third]
        await service.tasks.settle(1.0)
        assert not service._reloading
        return reports

    reports = run(scenario())
    assert log == ["begin 1", "end 1", "begin 2", "end 2", "begin 3", "end 3"]
    assert [r.replaced for r in reports] == [[4002], [4003]]


def test_quick_start_names():
    assert command_word("/usr/bin/python3 -m http.server") == "python3"
    assert command_word("'my app!' --x") == "myapp"
    assert command_word("'unbalanced") == "unbalanced"
    assert command_word("") == "program"
    assert quick_name("sleep 5", "quick_1731605123000_7") == "quick_sleep_1731605123000_7"
