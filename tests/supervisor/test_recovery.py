"""Re-exec recovery of what lives outside the program slots: a reload's replacement (or the
instance it replaced, still stopping) is in the snapshot, adopted by the next pmd and stopped
there, and a forced kill reaches it. Real Supervisors, a fake spawner and child watcher."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import orjson

from pmd_init.model.spec import ProgramSpec
from pmd_init.model.states import ProgramState
from pmd_init.store.programs import ProgramStore
from pmd_init.supervisor.supervisor import Supervisor
from tests.supervisor.fakes import FakeWorld

S = ProgramState


def spec(**fields: Any) -> ProgramSpec:
    return ProgramSpec.model_validate({"name": "web", "command": "/bin/web", "id": 1,
                                       "logs_enabled": False, "startsecs": 0, **fields})


def supervisor(tmp_path: Path, world: FakeWorld, signals: list[tuple[int, int]]) -> Supervisor:
    loop = asyncio.get_running_loop()
    for folder in ("config", "state", "log"):
        (tmp_path / folder).mkdir(exist_ok=True)
    sup = Supervisor(loop, world, ProgramStore(tmp_path / "config", tmp_path / "state"),
                     tmp_path / "state", tmp_path / "log", {}, forward=False)
    sup.runtime.spawn = world.spawn

    def killpg(pid: int, signum: int) -> bool:
        signals.append((pid, signum))
        if signum != signal.SIGCONT:
            loop.call_soon(world.exit, pid, signum)  # the group dies of the signal
        return True

    sup.runtime.killpg = killpg
    return sup


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_reload_in_flight_is_stopped_by_the_next_pmd(tmp_path: Path) -> None:
    async def scenario() -> None:
        world = FakeWorld()
        signals: list[tuple[int, int]] = []
        old = supervisor(tmp_path, world, signals)
        old.load([spec(boot=True, port_range={"start": 7001, "end": 7002})])
        old.boot()
        program = old.programs[1]
        serving = {port: inst.pid for port, inst in program.instances.items()}
        replacement = program.new_instance(7001)  # what a reload starts beside the old one
        old.extra_instances.add(replacement)
        replacement.start()
        assert replacement.state == S.RUNNING and replacement.pid is not None
        extra_pid = replacement.pid
        # across the exec the snapshot is JSON
        snap = orjson.loads(orjson.dumps(old.snapshot()))

        new = supervisor(tmp_path, world, signals)
        new.adopt(snap)
        adopted = new.programs[1]
        assert {port: inst.pid for port, inst in adopted.instances.items()} == serving
        assert (extra_pid, signal.SIGTERM) in signals  # the orphaned replacement is stopped
        assert [i.pid for i in new.extra_instances] == [extra_pid]  # and waited for
        await settle()
        assert new.extra_instances == set()
        assert all(inst.state == S.RUNNING for inst in adopted.instances.values())
        assert not any(pid in serving.values() for pid, _ in signals)
        world.close()

    asyncio.run(scenario())


def test_a_forced_kill_reaches_the_instances_outside_the_slots(tmp_path: Path) -> None:
    async def scenario() -> None:
        world = FakeWorld()
        signals: list[tuple[int, int]] = []
        sup = supervisor(tmp_path, world, signals)
        sup.load([spec(boot=True, port_range={"start": 7001, "end": 7001})])
        sup.boot()
        program = sup.programs[1]
        retiring = program.new_instance(7001)
        sup.extra_instances.add(retiring)
        retiring.start()
        pids = {program.primary.pid, retiring.pid}
        sup.kill_all()
        assert {pid for pid, sig in signals if sig == signal.SIGKILL} == pids
        world.close()

    asyncio.run(scenario())
