"""The instance state machine, driven through every transition with a fake clock, fake
timers and a fake spawner: no real process, no real time (the whole file runs in well
under a second)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pmd_init.logs.capture import Capture
from pmd_init.model.spec import ProgramSpec
from pmd_init.model.states import TRANSITIONS, ProgramState
from pmd_init.supervisor.instance import START_LIMIT_BACKOFF_MAX, Instance
from pmd_init.supervisor.program import Program
from pmd_init.supervisor.spawn import Prespawned, SpawnRequest
from pmd_init.supervisor.waits import until_running
from tests.supervisor.fakes import EPOCH, FakeChild, FakeWorld, exited

S = ProgramState


@dataclass
class Seen:
    transitions: set[tuple[ProgramState, ProgramState]] = field(default_factory=set)


SEEN = Seen()


@pytest.fixture
def world() -> Iterator[FakeWorld]:
    w = FakeWorld()
    yield w
    SEEN.transitions.update(w.path())
    w.close()


def make(world: FakeWorld, **fields: Any) -> Instance:
    spec = ProgramSpec.model_validate({"name": "p", "command": "/bin/prog", "id": 1,
                                       "logs_enabled": False, **fields})
    return Program(world.runtime(), spec).primary


# ---- starting ----------------------------------------------------------------------


def test_start_waits_startsecs_then_running(world: FakeWorld) -> None:
    inst = make(world, startsecs=2)
    inst.start()
    assert inst.state == S.STARTING and inst.pid == 1000
    assert world.events[0].pid == 1000  # the STARTING event carries the new pid
    assert world.spawned[0].argv == ["/bin/prog"]
    world.advance(1.9)
    assert inst.state == S.STARTING
    world.advance(0.1)
    assert inst.state == S.RUNNING
    assert world.events[-1].time == EPOCH + 2.0
    assert inst.uptime() == 2.0  # counted from the spawn


def test_startsecs_zero_is_running_at_once(world: FakeWorld) -> None:
    inst = make(world, startsecs=0)
    inst.start()
    assert world.path() == [(S.STOPPED, S.STARTING), (S.STARTING, S.RUNNING)]


def test_delayed_start(world: FakeWorld) -> None:
    inst = make(world)
    inst.start(delay=5)
    world.advance(4.9)
    assert inst.state == S.STOPPED and not world.spawned
    world.advance(0.1)
    assert inst.state == S.STARTING


def test_failed_starts_back_off_1_2_3_then_fatal(world: FakeWorld) -> None:
    inst = make(world, startsecs=1, startretries=3)
    inst.start()
    spawned_at = [world.now]
    for _ in range(3):
        world.advance(0.5)
        world.exit(inst.pid, exited(1))  # before startsecs: a failed start
        assert inst.state == S.BACKOFF and inst.backoff_reason == "failed_start"
        assert inst.retry_at == world.time() + inst.backoff
        world.advance(inst.backoff)
        assert inst.state == S.STARTING
        spawned_at.append(world.now)
    world.advance(0.5)
    world.exit(inst.pid, exited(1))
    assert inst.state == S.FATAL and not inst.want and inst.exit_code == 1
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(spawned_at)]
    assert gaps == [1.5, 2.5, 3.5]  # 0.5 s of run, then 1 s, 2 s, 3 s of backoff
    assert world.path()[-2:] == [(S.STARTING, S.BACKOFF), (S.BACKOFF, S.FATAL)]


def retry_gaps(world: FakeWorld, inst: Instance, failures: int) -> list[float]:
    """Fail `failures` starts at once (exit 0.5 s after each spawn); the waits between an
    exit and the next spawn, from the STARTING events' own times."""
    inst.start()
    for _ in range(failures):
        world.advance(0.5)
        world.exit(inst.pid, exited(1))
        assert inst.retry_at is None or inst.retry_at == world.time() + world.pending()[0]
        world.advance(world.pending()[0] if world.pending() else 0)
    exits = [e.time for e in world.events if e.to_state == S.BACKOFF]
    spawns = [e.time for e in world.events if e.to_state == S.STARTING][1:]
    return [round(b - a, 3) for a, b in zip(exits, spawns, strict=False)]


def test_exponential_backoff_is_capped(world: FakeWorld) -> None:
    inst = make(world, startretries=8, backoff="exponential", backoff_max_seconds=20)
    assert retry_gaps(world, inst, 8) == [1, 2, 4, 8, 16, 20, 20, 20]
    world.advance(0.5)
    world.exit(inst.pid, exited(1))
    assert inst.state == S.FATAL


def test_startretries_minus_one_retries_forever(world: FakeWorld) -> None:
    inst = make(world, startretries=-1, backoff_max_seconds=5)
    gaps = retry_gaps(world, inst, 200)
    assert gaps[:6] == [1, 2, 3, 4, 5, 5] and set(gaps[5:]) == {5}
    assert inst.state == S.STARTING and inst.backoff == 200


def test_spawn_error_backs_off_with_the_reason(world: FakeWorld) -> None:
    inst = make(world, startretries=0)
    world.spawn_fails = "command not found: /bin/prog"
    inst.start()
    assert inst.spawn_error == "command not found: /bin/prog"
    assert world.path() == [(S.STOPPED, S.STARTING), (S.STARTING, S.BACKOFF),
                            (S.BACKOFF, S.FATAL)]
    assert world.events[0].pid is None


def test_start_from_fatal_and_stop_from_backoff(world: FakeWorld) -> None:
    inst = make(world, startretries=0)
    world.spawn_fails = "no"
    inst.start()
    assert inst.state == S.FATAL
    world.spawn_fails = None
    inst.start()
    assert inst.state == S.STARTING
    world.exit(inst.pid, exited(1))
    inst2 = make(world, startretries=5)
    world.spawn_fails = "no"
    inst2.start()
    assert inst2.state == S.BACKOFF
    inst2.stop()
    assert inst2.state == S.STOPPED
    world.advance(10)
    assert inst2.state == S.STOPPED  # the backoff timer went with the stop


# ---- exits of a running program ------------------------------------------------------


def test_expected_exit_is_final(world: FakeWorld) -> None:
    inst = make(world, startsecs=0, autorestart="unexpected", exitcodes=[0, 2])
    inst.start()
    world.exit(inst.pid, exited(2))
    assert inst.state == S.EXITED and not inst.want
    world.advance(10)
    assert inst.state == S.EXITED and len(world.spawned) == 1


def test_oneshot_success_is_exited_and_completed(world: FakeWorld) -> None:
    inst = make(world, oneshot=True, exitcodes=[0, 2])
    inst.start()
    assert inst.state == S.RUNNING  # startsecs 0: nothing to survive
    world.advance(3)
    world.exit(inst.pid, exited(2))
    assert (inst.state, inst.completed, inst.exit_code, inst.want) == (S.EXITED, True, 2, False)
    world.advance(60)
    assert len(world.spawned) == 1  # never restarted


def test_oneshot_failure_is_fatal_with_its_code(world: FakeWorld) -> None:
    inst = make(world, oneshot=True)
    inst.start()
    world.exit(inst.pid, exited(3))
    assert (inst.state, inst.completed, inst.exit_code) == (S.FATAL, False, 3)
    assert world.path()[-1] == (S.RUNNING, S.FATAL) and world.events[-1].exit_code == 3
    inst.start()  # by hand: it runs again, the verdict cleared
    assert inst.state == S.RUNNING and inst.completed is None
    world.advance(60)
    assert len(world.spawned) == 2


def test_without_readiness_running_is_ready(world: FakeWorld) -> None:
    inst = make(world, startsecs=1)
    inst.start()
    assert inst.ready_at is None
    world.advance(1)
    assert inst.ready_at == world.time() and [e.via for e in world.ready] == ["running"]
    world.exit(inst.pid, exited(0))
    assert inst.ready_at is None  # readiness belongs to a run


def test_not_ready_in_time_is_a_failed_start_then_fatal(world: FakeWorld) -> None:
    inst = make(world, startsecs=1, startretries=1, stop_timeout=2,
                readiness={"fd": 3, "timeout_seconds": 5})
    inst.start()
    world.advance(1)
    assert inst.state == S.RUNNING and inst.ready_at is None and not world.ready
    world.advance(4)
    assert world.signals == [(1000, signal.SIGTERM)]
    world.advance(2)
    assert world.signals[-1] == (1000, signal.SIGKILL)  # it ignored the stop signal
    world.exit(inst.pid, exited(137))
    assert inst.state == S.BACKOFF and inst.backoff_reason == "ready_timeout"
    assert world.path()[-2:] == [(S.RUNNING, S.EXITED), (S.EXITED, S.BACKOFF)]
    world.advance(1)  # second try: ready this time, the timeout goes with it
    assert inst.state == S.STARTING
    inst.mark_ready("fd")
    world.advance(10)
    assert inst.state == S.RUNNING and inst.ready_at == EPOCH + 8
    assert [e.via for e in world.ready] == ["fd"]
    inst.stop()
    world.exit(inst.pid, exited(0))
    inst.start()  # RUNNING does not reset the count of failed starts; ready does
    for _ in range(2):
        world.advance(5)
        world.exit(inst.pid, exited(143))
        world.advance(1)
    assert inst.state == S.FATAL and inst.backoff == 2
    # the last failed start says why too, and FATAL keeps it until the next start
    assert inst.backoff_reason == "ready_timeout"
    assert [e.reason for e in world.events[-2:]] == ["ready_timeout", "ready_timeout"]
    inst.start()
    assert inst.state == S.STARTING and inst.backoff_reason is None


def hold_turn(inst: Instance) -> None:
    """Another program's restart took this loop turn's start (the runtime's queue)."""
    assert inst.rt.starts.run_now(lambda: None)


def test_a_restart_spawns_in_the_exits_pass_when_it_is_the_turns_first(
        world: FakeWorld) -> None:
    inst = make(world, startsecs=0, autorestart="true")
    inst.start()
    first = inst.pid
    world.exit(first, exited(0))
    assert inst.state == S.RUNNING and len(world.spawned) == 2 and inst.restarts == 1
    changes = [(e.from_state, e.to_state, e.pid, e.exit_code) for e in world.events[-3:]]
    assert first != inst.pid
    assert changes == [(S.RUNNING, S.EXITED, None, 0), (S.EXITED, S.STARTING, inst.pid, None),
                       (S.STARTING, S.RUNNING, inst.pid, None)]


def test_a_second_restart_in_a_turn_waits_for_the_next_turn(world: FakeWorld) -> None:
    rt = world.runtime()
    spec = ProgramSpec.model_validate({"name": "p", "command": "/bin/prog", "id": 1,
                                       "logs_enabled": False, "startsecs": 0,
                                       "autorestart": "true"})
    one, two = Program(rt, spec).primary, Program(rt, spec.model_copy(
        update={"name": "q", "id": 2})).primary
    one.start()
    two.start()
    world.exit(one.pid, exited(0))
    world.exit(two.pid, exited(0))
    assert one.state == S.RUNNING and one.restarts == 1
    assert two.state == S.EXITED and two.want and two.restarts == 0  # not in this turn
    world.advance(0)
    assert two.state == S.RUNNING and two.restarts == 1 and len(world.spawned) == 4


def test_stop_between_exit_and_restart_wins(world: FakeWorld) -> None:
    inst = make(world, startsecs=0, autorestart="true")
    inst.start()
    hold_turn(inst)
    world.exit(inst.pid, exited(1))
    inst.stop()
    world.advance(1)
    assert inst.state == S.EXITED and len(world.spawned) == 1


def test_signal_death_is_unexpected(world: FakeWorld) -> None:
    inst = make(world, startsecs=0, autorestart="unexpected", exitcodes=[0])
    inst.start()
    world.exit(inst.pid, signal.SIGSEGV)
    exit_event = world.events[-3]
    assert exit_event.to_state == S.EXITED and exit_event.exit_code == 128 + signal.SIGSEGV
    assert inst.state == S.RUNNING


# ---- stopping ----------------------------------------------------------------------


def test_stop_sends_stop_signal_then_sigkill_after_timeout(world: FakeWorld) -> None:
    inst = make(world, stop_signal="INT", stop_timeout=3)
    inst.start()
    world.advance(1)
    pid = inst.pid
    done = inst.stop()
    assert inst.state == S.STOPPING and world.signals == [(pid, signal.SIGINT)]
    world.advance(2.9)
    assert world.signals == [(pid, signal.SIGINT)]
    world.advance(0.1)
    assert world.signals[-1] == (pid, signal.SIGKILL)
    world.exit(pid, signal.SIGKILL)
    assert inst.state == S.STOPPED and done.done() and done.result() == S.STOPPED
    assert world.path()[-2:] == [(S.RUNNING, S.STOPPING), (S.STOPPING, S.STOPPED)]


def test_stop_timeout_zero_kills_at_once(world: FakeWorld) -> None:
    inst = make(world, stop_timeout=0)
    inst.start()
    inst.stop()  # during STARTING
    assert world.signals[-2:] == [(1000, signal.SIGTERM), (1000, signal.SIGKILL)]
    assert world.path()[-1] == (S.STARTING, S.STOPPING)


def test_prompt_exit_while_stopping_cancels_the_kill(world: FakeWorld) -> None:
    inst = make(world, stop_timeout=5)
    inst.start()
    world.advance(1)
    pid = inst.pid
    inst.stop()
    world.exit(pid, exited(0))
    world.advance(10)
    assert world.signals == [(pid, signal.SIGTERM), (pid, signal.SIGKILL)]  # stragglers
    assert inst.state == S.STOPPED and world.pending() == []


def test_restart_stops_then_starts(world: FakeWorld) -> None:
    inst = make(world, startsecs=0)
    inst.start()
    first = inst.pid
    inst.restart()
    assert inst.state == S.STOPPING
    world.exit(first, signal.SIGTERM)
    assert inst.state == S.STOPPED
    world.advance(0)
    assert inst.state == S.RUNNING and inst.pid != first and inst.restarts == 1


def test_a_waited_start_ends_when_a_queued_restart_is_stopped(world: FakeWorld) -> None:
    # Between a restart's exit and its queued spawn the instance is STOPPED and wanted; a
    # stop then changes only `want`. The waiter must see that at once, not at its timeout.
    inst = make(world, startsecs=0)
    inst.start()
    inst.restart()
    world.exit(inst.pid, signal.SIGTERM)
    assert inst.state == S.STOPPED and inst.want
    loop = world.loop

    async def wait_and_stop() -> tuple[ProgramState, float]:
        started = loop.time()
        waiting = loop.create_task(until_running(inst, 30, retries=True))
        await asyncio.sleep(0)
        inst.stop()
        return await waiting, loop.time() - started

    state, took = loop.run_until_complete(wait_and_stop())
    assert state == S.STOPPED and not inst.want and took < 5
    world.advance(1)
    assert inst.state == S.STOPPED and len(world.spawned) == 1


def test_start_while_stopping_starts_after(world: FakeWorld) -> None:
    inst = make(world, startsecs=0)
    inst.start()
    pid = inst.pid
    inst.stop()
    inst.start()
    assert inst.state == S.STOPPING
    world.exit(pid, exited(0))
    world.advance(0)
    assert inst.state == S.RUNNING


# ---- the start-rate limit ----------------------------------------------------------


def crash_loop(world: FakeWorld, inst: Instance, seconds: float,
               most: int = 1000) -> list[float]:
    """Let a program that exits at once run for `seconds` (or `most` starts); the times
    it was spawned."""
    times: list[float] = []
    end = world.now + seconds
    while world.now < end and len(times) < most:
        if inst.pid is not None:
            times.append(world.now)
            world.exit(inst.pid, exited(1))
        delays = world.pending()
        if not delays:
            break
        world.advance(min(delays[0], end - world.now))
    return times


def test_crash_loop_is_held_back_after_the_burst(world: FakeWorld) -> None:
    inst = make(world, startsecs=0, autorestart="true")  # defaults: 5 starts in 10 s
    inst.start()
    starts = crash_loop(world, inst, 0.5)
    assert starts == [0.0] * 5
    assert inst.state == S.BACKOFF and inst.backoff_reason == "start_limit"
    event = world.events[-1]
    assert (event.to_state, event.reason) == (S.BACKOFF, "start_limit")
    assert event.retry_at == EPOCH + 10.0  # when the window has room again
    assert world.path()[-2:] == [(S.RUNNING, S.EXITED), (S.EXITED, S.BACKOFF)]


def test_crash_loop_rate_stays_bounded_and_waits_grow(world: FakeWorld) -> None:
    inst = make(world, startsecs=0, autorestart="true", start_limit_burst=3,
                start_limit_interval=2)
    inst.start()
    starts = crash_loop(world, inst, 600)
    bursts: list[float] = []
    for a, b in itertools.pairwise(starts):
        if b > a:
            bursts.append(b - a)
    # waits: room in the window (2 s), then 2 s (2nd hit), 4, 8, ... capped at 60 s
    assert bursts[:5] == [2.0, 2.0, 4.0, 8.0, 16.0]
    assert max(bursts) == START_LIMIT_BACKOFF_MAX
    assert len(starts) < 3 * 20  # about 3 starts a minute once capped
    for window_start in starts:
        assert sum(1 for t in starts if window_start <= t < window_start + 2) <= 3


def test_a_long_run_resets_the_growing_wait(world: FakeWorld) -> None:
    inst = make(world, startsecs=0, autorestart="true", start_limit_burst=2,
                start_limit_interval=5)
    inst.start()
    crash_loop(world, inst, 40)
    assert inst._limit_hits > 1
    world.advance(max(world.pending()))
    assert inst.state == S.RUNNING
    world.advance(5)  # ran as long as the window: healthy again
    world.exit(inst.pid, exited(1))
    assert inst._limit_hits == 0


def test_limit_zero_turns_it_off(world: FakeWorld) -> None:
    inst = make(world, startsecs=0, autorestart="true", start_limit_burst=0)
    inst.start()
    assert len(crash_loop(world, inst, 0.1, most=200)) == 200
    assert S.BACKOFF not in {e.to_state for e in world.events}


def test_an_explicit_start_clears_the_limit(world: FakeWorld) -> None:
    inst = make(world, startsecs=0, autorestart="true")
    inst.start()
    crash_loop(world, inst, 0.1)
    assert inst.state == S.BACKOFF
    inst.start()
    assert inst.state == S.RUNNING


# ---- adoption (re-exec, re-adoption) -------------------------------------------------


def test_adopt_running_goes_through_unknown(world: FakeWorld) -> None:
    inst = make(world, autorestart="true", startsecs=0)
    inst.adopt({"state": "RUNNING", "pid": 42, "want": True, "restarts": 7, "uptime": 30.0})
    assert world.path() == [(S.STOPPED, S.UNKNOWN), (S.UNKNOWN, S.RUNNING)]
    assert {e.reason for e in world.events} == {"adopted"}
    assert inst.uptime() == 30.0 and inst.restarts == 7
    world.exit(42, exited(1))
    world.advance(0)
    assert inst.state == S.RUNNING and inst.restarts == 8


@pytest.mark.parametrize("state, then", [
    ("STARTING", S.RUNNING), ("STOPPING", S.STOPPING), ("BACKOFF", S.STARTING),
    ("EXITED", S.EXITED), ("FATAL", S.FATAL),
])
def test_adopt_each_state_resumes_its_timer(world: FakeWorld, state: str,
                                            then: ProgramState) -> None:
    inst = make(world, startsecs=1, stop_timeout=2)
    pid = None if state in ("BACKOFF", "EXITED", "FATAL") else 42
    inst.adopt({"state": state, "pid": pid, "want": state != "STOPPING", "backoff": 1,
                "retry_at": EPOCH + 1.0 if state == "BACKOFF" else None})
    assert inst.state == ProgramState(state)
    world.advance(1.5)
    assert inst.state == then
    if state == "STOPPING":
        world.advance(1)
        assert world.signals == [(42, signal.SIGKILL)]


def test_adopt_a_foreign_process_already_gone_is_a_failed_start(world: FakeWorld) -> None:
    inst = make(world, autorestart="true")
    inst.adopt({"state": "RUNNING", "pid": -5, "want": True}, foreign=True)
    assert inst.state == S.BACKOFF and inst.pid is None
    assert world.path() == [(S.STOPPED, S.UNKNOWN), (S.UNKNOWN, S.STARTING),
                            (S.STARTING, S.BACKOFF)]


def test_only_a_fresh_slot_adopts(world: FakeWorld) -> None:
    inst = make(world)
    inst.start()
    with pytest.raises(RuntimeError):
        inst.adopt({"state": "RUNNING", "pid": 42})


def test_a_restart_decided_before_a_reexec_happens_after_it(world: FakeWorld) -> None:
    inst = make(world, startsecs=0, autorestart="true")
    inst.start()
    hold_turn(inst)  # the restart waits for a turn of its own
    world.exit(inst.pid, exited(1))
    snap = inst.snapshot()  # the exit was reaped just before the exec
    twin = make(world, startsecs=0, autorestart="true")
    twin.adopt(snap)
    assert twin.state == S.EXITED
    world.advance(0)
    assert twin.state == S.RUNNING and twin.restarts == 1


def test_readiness_survives_a_reexec(world: FakeWorld) -> None:
    inst = make(world, startsecs=0, readiness={"fd": 3, "timeout_seconds": 10})
    inst.start()
    world.advance(4)
    snap = inst.snapshot()
    fresh = make(world, startsecs=0, readiness={"fd": 3, "timeout_seconds": 10})
    fresh.adopt(snap)
    world.advance(5.9)
    assert fresh.state == S.RUNNING and not fresh._not_ready
    world.advance(0.1)  # what was left of the timeout: 6 s, not 10
    assert fresh._not_ready
    ready = make(world, startsecs=0, readiness={"fd": 3})
    ready.start()
    ready.mark_ready("fd")
    again = make(world, startsecs=0, readiness={"fd": 3})
    again.adopt(ready.snapshot())
    assert again.ready_at == ready.ready_at


def test_snapshot_round_trip(world: FakeWorld) -> None:
    inst = make(world, startsecs=0, autorestart="true")
    inst.start()
    crash_loop(world, inst, 0.1)
    snap = inst.snapshot()
    twin = make(world, startsecs=0, autorestart="true")
    twin.adopt(snap)
    assert (twin.state, twin.retry_at, twin.backoff_reason, twin.restarts) == \
        (inst.state, inst.retry_at, inst.backoff_reason, inst.restarts)
    assert list(twin._starts) == list(inst._starts)


# ---- coverage of the table -----------------------------------------------------------

#: Allowed by the table (supervisord's) but never taken by pmd's machine: an EXITED or
#: FATAL instance that is stopped stays where it is, and adoption never lands in
#: STOPPED or UNKNOWN (a STOPPED snapshot leaves the fresh slot as it is).
NOT_TAKEN = {(S.EXITED, S.STOPPED), (S.FATAL, S.STOPPED), (S.UNKNOWN, S.STOPPED),
             (S.UNKNOWN, S.UNKNOWN)}


def test_zz_every_transition_was_driven() -> None:
    """Runs last in this file (pytest keeps file order): the union of what the tests above
    drove covers the whole table."""
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert table - NOT_TAKEN - SEEN.transitions == set()
    assert SEEN.transitions <= table


# ---- a boot plan's process ---------------------------------------------------------

def prespawned(world: FakeWorld, argv: list[str], age: float) -> Prespawned:
    """What pid1/early.py hands over: a process started `age` seconds ago."""
    child: Any = FakeChild(5000)
    return Prespawned(name="p", popen=child, argv=argv, env={}, cwd=None, account=None,
                      rlimits=[], pipes=None,
                      started_at=world.time() - age, started_mono=world.monotonic() - age)


def test_a_boot_plan_process_started_as_configured_is_taken_over(world: FakeWorld) -> None:
    inst = make(world, startsecs=1)
    inst.prespawned = prespawned(world, ["/bin/prog"], age=0.6)
    inst.start()
    assert world.spawned == []  # no fork: the process is the plan's
    assert inst.state == S.STARTING and inst.pid == 5000 and 5000 in world.watched
    assert inst.started_at == EPOCH - 0.6  # its run began at the plan's spawn
    world.advance(0.4)  # startsecs counts from then too
    assert inst.state == S.RUNNING
    hold_turn(inst)
    world.exit(5000, exited(1))  # and it is supervised like any other run
    assert inst.state == S.EXITED and inst.exit_code == 1 and inst.pid is None
    inst.start()
    assert world.spawned[0].argv == ["/bin/prog"] and inst.pid == 1000


def test_a_boot_plan_process_started_otherwise_is_killed_and_replaced(world: FakeWorld) -> None:
    inst = make(world, startsecs=1)
    inst.prespawned = prespawned(world, ["/bin/old"], age=0.1)
    inst.start()
    assert (5000, signal.SIGKILL) in world.signals
    assert [req.argv for req in world.spawned] == [["/bin/prog"]]
    assert inst.pid == 1000 and inst.prespawned is None


def test_a_boot_plan_process_whose_start_fails_now_is_killed(world: FakeWorld) -> None:
    inst = make(world, user="no-such-user-here")
    early = prespawned(world, ["/bin/prog"], age=0.1)
    inst.prespawned = early
    inst.start()
    assert (5000, signal.SIGKILL) in world.signals and early.settled
    assert world.spawned == [] and inst.state == S.BACKOFF
    assert inst.spawn_error == "user 'no-such-user-here' does not exist"


# ---- the capture pipes across restarts -----------------------------------------------


def logging_instance(world: FakeWorld, tmp_path: Path) -> tuple[Instance, list[int]]:
    """An instance whose spawns get real pipes, read by real captures on the world's loop
    (never run: nothing is written); returns it and the inode of each spawn's stdout."""
    rt = world.runtime()
    rt.log_dir = tmp_path
    rt.capture = lambda fd, logfile, forward, prefix, on_eof, count, style, tap: Capture(
        world.loop, fd, logfile, None, prefix, on_eof=on_eof, count=count)
    inodes: list[int] = []

    def spawn(req: SpawnRequest) -> FakeChild:
        assert isinstance(req.stdout, int)
        inodes.append(os.fstat(req.stdout).st_ino)
        return world.spawn(req)

    rt.spawn = spawn
    spec = ProgramSpec.model_validate({"name": "p", "command": "/bin/prog", "id": 1,
                                       "startsecs": 0, "autorestart": "true"})
    return Program(rt, spec).primary, inodes


def test_a_restart_from_the_queue_writes_into_the_same_pipes(world: FakeWorld,
                                                             tmp_path: Path) -> None:
    inst, inodes = logging_instance(world, tmp_path)
    inst.start()
    world.exit(inst.pid, exited(1))  # restarted at once
    world.exit(inst.pid, exited(1))  # in the same reaper pass: from the queue, next turn
    assert inst.state == S.EXITED
    world.advance(0)
    assert inst.state == S.RUNNING and len(inodes) == 3 and len(set(inodes)) == 1
    assert len(inst.captures) == 2


def test_a_waiting_restart_called_off_lets_go_of_the_pipes(world: FakeWorld,
                                                           tmp_path: Path) -> None:
    inst, inodes = logging_instance(world, tmp_path)
    inst.start()
    hold_turn(inst)
    world.exit(inst.pid, exited(1))
    inst.stop()  # before its turn came
    world.advance(1)
    assert inst.state == S.EXITED and len(inodes) == 1
    for capture in list(inst.captures):  # what the loop does once the pipe reads EOF
        assert capture._read() == -1
    assert inst.captures == []
    inst.start()
    assert len(inodes) == 2 and inodes[0] != inodes[1]  # new pipes
