"""The dependency gate with a fake clock and spawner: programs start when their conditions
hold, in priority order, after their own delay; a dependency that will not get there blocks
its dependents with a reason. Times come from the instances' own state events."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pmd_init.model.spec import ProgramSpec
from pmd_init.model.states import ProgramState
from pmd_init.supervisor.depends import DependencyGate
from pmd_init.supervisor.events import EventBus, HealthEvent, WaitingEvent
from pmd_init.supervisor.program import Program
from tests.supervisor.fakes import EPOCH, FakeWorld, exited

S = ProgramState


class Graph:
    def __init__(self, world: FakeWorld) -> None:
        self.world = world
        self.bus = EventBus()
        self.runtime = world.runtime(self.bus.publish)
        self.programs: dict[str, Program] = {}
        self.gate = DependencyGate(world, self.programs.get,
                                   lambda p: p.start(delay=p.spec.delay_seconds),
                                   world, self.bus.publish)
        self.bus.subscribe(self.gate.on_event)
        self.waits: list[WaitingEvent] = []
        self.bus.subscribe(lambda e: isinstance(e, WaitingEvent) and self.waits.append(e))

    def add(self, name: str, **fields: Any) -> Program:
        spec = ProgramSpec.model_validate({"name": name, "command": f"/bin/{name}",
                                           "id": len(self.programs) + 1,
                                           "logs_enabled": False, "startsecs": 1, **fields})
        program = self.programs[name] = Program(self.runtime, spec)
        return program

    def boot(self) -> None:
        for program in sorted(self.programs.values(), key=lambda p: (p.spec.priority, p.id)):
            if self.gate.request(program):
                program.start(delay=program.spec.delay_seconds)

    def started(self, name: str) -> float | None:
        """When `name` was first spawned, from its STARTING event (seconds since EPOCH)."""
        times = [e.time - EPOCH for e in self.world.events
                 if e.program == name and e.to_state == S.STARTING]
        return times[0] if times else None

    def pid(self, name: str) -> int:
        pid = self.programs[name].primary.pid
        assert pid is not None
        return pid


@pytest.fixture
def graph() -> Iterator[Graph]:
    world = FakeWorld()
    yield Graph(world)
    world.close()


def test_a_chain_starts_in_order_from_the_events(graph: Graph) -> None:
    graph.add("migrate", oneshot=True)
    graph.add("db", depends_on={"migrate": "completed_successfully"})
    graph.add("api", depends_on={"db": "running"})
    graph.add("worker", depends_on={"api": "started"}, delay_seconds=2)
    graph.boot()
    api = graph.programs["api"]
    assert api.waiting_for() == (["db (running)"], None)
    graph.world.advance(3)
    assert graph.started("db") is None
    graph.world.exit(graph.pid("migrate"), exited(0))
    graph.world.advance(0)
    assert graph.started("db") == 3.0
    graph.world.advance(1)  # db survives startsecs
    assert graph.started("api") == 4.0 and api.waiting is None
    graph.world.advance(2)
    assert graph.started("worker") == 6.0  # api started at 4, then its own 2 s delay


def test_a_list_means_ready_and_a_oneshot_is_ready_when_it_succeeded(graph: Graph) -> None:
    graph.add("init", oneshot=True)
    graph.add("app", depends_on=["init"])
    graph.boot()
    graph.world.advance(5)
    graph.world.exit(graph.pid("init"), exited(0))
    graph.world.advance(0)
    assert graph.started("app") == 5.0


def test_a_oneshot_that_fails_blocks_its_dependents(graph: Graph) -> None:
    graph.add("migrate", oneshot=True)
    graph.add("api", depends_on={"migrate": "completed_successfully"})
    graph.boot()
    graph.world.exit(graph.pid("migrate"), exited(3))
    graph.world.advance(100)
    assert graph.started("api") is None
    assert graph.programs["api"].waiting_for() == \
        (["migrate (completed_successfully)"], "migrate exited 3")
    # `completed` is happy with any exit
    graph.add("report", depends_on={"migrate": "completed"})
    assert graph.gate.request(graph.programs["report"])


def test_a_fatal_dependency_blocks_with_a_reason(graph: Graph) -> None:
    graph.add("db", startretries=1, startsecs=5)
    graph.add("api", depends_on=["db"])
    graph.boot()
    graph.world.advance(0.5)
    graph.world.exit(graph.pid("db"), exited(1))
    assert graph.programs["db"].primary.state == S.BACKOFF
    assert graph.programs["api"].waiting_for() == (["db (ready)"], None)  # still trying
    graph.world.advance(1)
    graph.world.exit(graph.pid("db"), exited(1))
    assert graph.programs["db"].primary.state == S.FATAL
    assert graph.programs["api"].waiting_for() == (["db (ready)"], "db exited 1")
    # started by hand again, it is on its way: no longer blocked, and api follows
    graph.programs["db"].start()
    assert graph.programs["api"].waiting_for() == (["db (ready)"], None)
    graph.world.advance(5)
    assert graph.started("api") == graph.world.now


def test_healthy_follows_health_events(graph: Graph) -> None:
    db = graph.add("db", health_check={"type": "tcp", "port": 5432})
    graph.add("api", depends_on={"db": "healthy"})
    graph.boot()
    graph.world.advance(5)
    assert graph.started("api") is None
    inst = db.primary
    inst.health_status = "healthy"
    graph.bus.publish(HealthEvent(program_id=db.id, program="db", instance="db", port=None,
                                  from_status="unknown", to_status="healthy",
                                  time=graph.world.time(), source=inst))
    graph.world.advance(0)
    assert graph.started("api") == 5.0


def test_released_together_they_start_in_priority_order(graph: Graph) -> None:
    graph.add("base", oneshot=True)
    graph.add("late", priority=900, depends_on=["base"])
    graph.add("early", priority=10, depends_on=["base"])
    graph.add("middle", priority=500, depends_on=["base"])
    graph.boot()
    graph.world.exit(graph.pid("base"), exited(0))
    graph.world.advance(0)
    order = [e.program for e in graph.world.events if e.to_state == S.STARTING][1:]
    assert order == ["early", "middle", "late"]


def test_port_range_dependency_needs_every_instance(graph: Graph) -> None:
    pool = graph.add("pool", port_range={"start": 7000, "end": 7001}, startsecs=0)
    graph.add("lb", depends_on={"pool": "running"})
    graph.gate.request(graph.programs["lb"])
    pool.instances[7000].start()
    graph.world.advance(1)
    assert graph.started("lb") is None
    pool.instances[7001].start()
    graph.world.advance(0)
    assert graph.started("lb") == 1.0


def test_forget_and_close_release_nothing(graph: Graph) -> None:
    graph.add("base", oneshot=True)
    graph.add("a", depends_on=["base"])
    graph.add("b", depends_on=["base"])
    graph.boot()
    graph.gate.forget(graph.programs["a"])
    assert graph.programs["a"].waiting_for() is None
    graph.gate.close()
    graph.world.exit(graph.pid("base"), exited(0))
    graph.world.advance(10)
    assert graph.started("a") is None and graph.started("b") is None


def test_what_a_program_waits_for_is_published_when_it_changes(graph: Graph) -> None:
    """Its instances stay STOPPED: the stream says it waits, is blocked, is free again
    and waits no more, once per change, at the time of the change."""
    graph.add("db", startretries=0, startsecs=5)
    graph.add("api", depends_on=["db"])
    graph.boot()
    graph.world.advance(0)
    seen = [(e.program, e.waiting_for, e.blocked, e.time - EPOCH) for e in graph.waits]
    assert seen == [("api", ("db (ready)",), None, 0.0)]
    graph.world.advance(1)
    graph.world.exit(graph.pid("db"), exited(1))  # before its startsecs, no retry: FATAL
    graph.world.advance(0)
    graph.world.advance(2)  # more turns, no change: nothing more
    seen = [(e.program, e.waiting_for, e.blocked, e.time - EPOCH) for e in graph.waits]
    assert seen[1:] == [("api", ("db (ready)",), "db exited 1", 1.0)]
    graph.programs["db"].start()  # started by hand: on its way, no longer blocked
    graph.world.advance(0)
    assert (graph.waits[-1].blocked, graph.waits[-1].time - EPOCH) == (None, 3.0)
    graph.world.advance(5)  # db RUNNING: api released, its wait is over
    assert [(e.waiting_for, e.blocked) for e in graph.waits[3:]] == [((), None)]
    assert graph.waits[-1].time - EPOCH == graph.started("api") == 8.0


def test_why_not_ready_tells_ready_from_not_yet(graph: Graph) -> None:
    """The container's readiness names what is missing: a run whose readiness source
    has not spoken, or one that said it is ready and still has its startsecs to last."""
    from pmd_init.supervisor.depends import not_ready

    web = graph.add("web", readiness={"fd": 5}, startsecs=2)
    graph.boot()
    graph.world.advance(0.5)
    assert not_ready(web).reason == "not ready yet (fd)"  # type: ignore[union-attr]
    web.primary.mark_ready("fd")
    assert web.primary.state == S.STARTING
    assert not_ready(web).reason == "starting"  # type: ignore[union-attr]
    graph.world.advance(2)
    assert not_ready(web) is None
