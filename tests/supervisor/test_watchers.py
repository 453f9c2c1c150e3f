"""The watchers on the event stream: health checks and memory limits follow an instance into
and out of RUNNING from its events alone, a health verdict change is an event on the same
bus, and closing a watcher (the supervisor's shutdown) leaves no task or timer behind.

Instances run against the fake world of the instance tests; the health monitor runs its
probes on a real event loop, with the probe itself replaced (no network, no process)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pmd_init.model.spec import HealthCheckSpec, ProgramSpec
from pmd_init.model.states import ProgramState
from pmd_init.store.programs import ProgramStore
from pmd_init.supervisor.events import Event, EventBus, HealthEvent, SignalEvent, StateEvent
from pmd_init.supervisor.health import HealthMonitor
from pmd_init.supervisor.instance import Instance
from pmd_init.supervisor.memory import MemoryWatch
from pmd_init.supervisor.proctree import ProcessSampler
from pmd_init.supervisor.program import Program
from pmd_init.supervisor.supervisor import Supervisor
from tests.supervisor.fakes import FakeWorld

S = ProgramState
CHECK = {"type": "tcp", "port": 9, "interval": 0.01, "timeout": 5, "retries": 1}


def spec(**fields: Any) -> ProgramSpec:
    return ProgramSpec.model_validate({"name": "p", "command": "/bin/prog", "id": 1,
                                       "logs_enabled": False, **fields})


class Probes:
    """Stands in for HealthMonitor's probe: healthy unless `error` says why not; with
    `hang` set, a probe waits until it is cancelled."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.hang = False
        self.count = 0

    async def probe(self) -> str | None:
        self.count += 1
        if self.hang:
            await asyncio.Event().wait()
        return self.error


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> Probes:
    fake = Probes()

    async def probe(monitor: HealthMonitor, inst: Instance, check: HealthCheckSpec) -> str | None:
        return await fake.probe()

    monkeypatch.setattr(HealthMonitor, "_probe", probe)
    return fake


@pytest.fixture
def world() -> Iterator[FakeWorld]:
    w = FakeWorld()
    yield w
    w.close()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def monitor_on(bus: EventBus, world: FakeWorld,
               restart: Callable[[Instance], None] = Instance.restart) -> HealthMonitor:
    return HealthMonitor(asyncio.get_running_loop(), bus, world, {}, restart=restart)


# ---- the bus ---------------------------------------------------------------------------


def verdict(old: str, new: str) -> HealthEvent:
    return HealthEvent(program_id=1, program="p", instance="p", port=None, from_status=old,
                       to_status=new, time=0.0)


def test_an_event_published_by_a_subscriber_reaches_everyone_after_its_cause() -> None:
    bus = EventBus()
    cause, effect = verdict("unknown", "healthy"), verdict("healthy", "unhealthy")
    first: list[Event] = []
    last: list[Event] = []

    def react(event: Event) -> None:
        first.append(event)
        if event is cause:
            bus.publish(effect)

    bus.subscribe(react)
    bus.subscribe(last.append)
    bus.publish(cause)
    assert first == last == [cause, effect]


# ---- health ----------------------------------------------------------------------------


def test_health_checks_start_on_running_and_stop_on_leaving_it(world, probes) -> None:
    async def scenario() -> None:
        bus = EventBus()
        monitor = monitor_on(bus, world)
        inst = Program(world.runtime(bus.publish), spec(startsecs=1, health_check=CHECK)).primary
        unchecked = Program(world.runtime(bus.publish), spec(name="q", id=2, startsecs=0)).primary
        inst.start()
        unchecked.start()
        assert monitor.checks == {}  # STARTING is not checked; no health_check, no checks
        world.advance(1.0)
        assert inst.state == S.RUNNING and set(monitor.checks) == {inst}
        await until(lambda: inst.health_status == "healthy")
        inst.stop()
        assert inst.state == S.STOPPING
        assert monitor.checks == {} and inst.health_status == "unknown"
        count = probes.count
        await asyncio.sleep(0.05)
        assert probes.count == count  # no probe after the instance left RUNNING
        await monitor.close()

    asyncio.run(scenario())


def test_a_health_verdict_change_reaches_every_subscriber_after_its_cause(world, probes) -> None:
    async def scenario() -> None:
        bus = EventBus()
        before: list[Event] = []
        bus.subscribe(before.append)  # subscribed before the monitor, and so called first
        monitor = monitor_on(bus, world)
        after: list[Event] = []
        bus.subscribe(after.append)
        ported = spec(port_range={"start": 4000, "end": 4000}, startsecs=0, health_check=CHECK)
        inst = Program(world.runtime(bus.publish), ported).instance(4000)
        assert inst is not None
        inst.start()
        await until(lambda: inst.health_status == "healthy")
        probes.error = "refused"
        await until(lambda: inst.health_status == "unhealthy")
        inst.stop()
        assert before == after
        health = [e for e in after if isinstance(e, HealthEvent)]
        assert [(e.from_status, e.to_status) for e in health] == [
            ("unknown", "healthy"), ("healthy", "unhealthy"), ("unhealthy", "unknown")]
        first = health[0]
        assert first.source is inst and first.program_id == 1 and first.program == "p"
        assert first.instance == "p:4000" and first.port == 4000 and first.time > 0
        # Leaving RUNNING ends the verdict, and subscribers see it in that order (the stop's
        # signal, sent once STOPPING is delivered, is an event of its own).
        assert isinstance(after[-1], SignalEvent) and after[-1].signal == "SIGTERM"
        assert isinstance(after[-3], StateEvent) and after[-3].to_state == S.STOPPING
        assert after[-2] is health[-1]
        await monitor.close()

    asyncio.run(scenario())


def test_restart_on_unhealthy_goes_through_the_restart_it_was_given(world, probes) -> None:
    async def scenario() -> None:
        bus = EventBus()
        restarted: list[Instance] = []
        monitor = monitor_on(bus, world, restart=restarted.append)
        check = {**CHECK, "restart_on_unhealthy": True}
        inst = Program(world.runtime(bus.publish), spec(startsecs=0, health_check=check)).primary
        probes.error = "refused"
        inst.start()
        await until(lambda: restarted == [inst])
        await monitor.close()

    asyncio.run(scenario())


def test_closing_cancels_and_awaits_every_probe(world, probes) -> None:
    async def scenario() -> None:
        bus = EventBus()
        monitor = monitor_on(bus, world)
        runtime = world.runtime(bus.publish)
        one = Program(runtime, spec(startsecs=0, health_check=CHECK)).primary
        two = Program(runtime, spec(name="q", id=2, startsecs=0, health_check=CHECK)).primary
        probes.hang = True
        one.start()
        two.start()
        await until(lambda: probes.count == 2)  # both probes under way
        two.stop()  # its probe is cancelled, but still running until it sees that
        await monitor.close()
        assert asyncio.all_tasks() == {asyncio.current_task()}
        assert monitor.checks == {} and one.health_status == "unknown"
        world.exit(two.pid, 15)
        two.start()  # RUNNING again, but the monitor follows the bus no more
        assert two.state == S.RUNNING and monitor.checks == {}

    asyncio.run(scenario())


# ---- memory ----------------------------------------------------------------------------


def test_memory_watch_follows_running_and_keeps_a_timer_only_while_watching(world) -> None:
    bus = EventBus()
    watch = MemoryWatch(world, bus, restart=Instance.restart, sampler=ProcessSampler(),
                        interval=5.0)
    runtime = world.runtime(bus.publish)
    limited = Program(runtime, spec(startsecs=1, max_memory_restart=1 << 30)).primary
    unlimited = Program(runtime, spec(name="q", id=2, startsecs=0)).primary
    unlimited.start()
    limited.start()
    assert watch.watched == set() and world.pending() == [1.0]  # only startsecs' timer
    world.advance(1.0)
    assert limited.state == S.RUNNING and watch.watched == {limited}
    assert world.pending() == [5.0]  # the sampling timer
    limited.stop()
    assert watch.watched == set()
    assert world.pending() == [10.0]  # stop_timeout's alone: nothing samples while idle
    world.exit(limited.pid, 15)
    limited.start()
    world.advance(1.0)
    assert watch.watched == {limited}
    watch.close()
    assert watch.watched == set() and world.pending() == []
    limited.restart()
    world.exit(limited.pid, 15)
    world.advance(1.0)
    assert limited.state == S.RUNNING and watch.watched == set()  # closed: not following


# ---- the supervisor's shutdown ---------------------------------------------------------


def test_supervisor_shutdown_closes_its_watchers(tmp_path: Path, probes) -> None:
    """A program with a health check and a memory limit runs (its probe hangs); after the
    supervisor's shutdown no task is left and nothing is watched."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        world = FakeWorld()  # the child watcher and the spawner; time and timers are real
        for folder in ("config", "state", "log"):
            (tmp_path / folder).mkdir()
        sup = Supervisor(loop, world, ProgramStore(tmp_path / "config", tmp_path / "state"),
                         tmp_path / "state", tmp_path / "log", {}, forward=False)
        sup.runtime.spawn = world.spawn

        def killpg(pid: int, signum: int) -> bool:
            loop.call_soon(world.exit, pid, signum)  # the group dies of the signal
            return True

        sup.runtime.killpg = killpg
        sup.load([spec(boot=True, startsecs=0, health_check=CHECK, max_memory_restart=1 << 30)])
        probes.hang = True
        sup.boot()
        inst = sup.programs[1].primary
        await until(lambda: probes.count == 1)
        assert sup.memory.watched == {inst} and set(sup.health.checks) == {inst}
        await sup.shutdown(loop.time() + 5)
        assert inst.state == S.STOPPED
        assert asyncio.all_tasks() == {asyncio.current_task()}
        assert sup.health.checks == {} and sup.memory.watched == set()
        world.close()

    asyncio.run(scenario())
