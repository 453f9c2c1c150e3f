"""Health checks: http (url answers the expected status), tcp (a port accepts a connection)
or script (a command exits 0), run on a timer for each RUNNING instance of a program that
has a `health_check`.

An instance is `unknown` until its first probe succeeds (`healthy`) or `retries` probes in
a row fail (`unhealthy`); it goes back to `unknown` whenever it leaves RUNNING. The first
probe runs as soon as the instance is RUNNING, so a reload waiting for health does not wait
a whole interval; a server still binding its port just costs one of the retries.

`HealthMonitor` follows the EventBus: it starts checking an instance on its RUNNING event and
stops when a later event takes it out of RUNNING. Verdict changes are published on the same
bus as `HealthEvent`s. It owns its timers and probe tasks; `close` (at shutdown) cancels and
awaits every one of them.

Nothing polls: one timer per checked instance, armed again after each probe finishes. The
probes themselves are probes.py's, shared with readiness probes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..model.states import ProgramState
from .events import EventBus, HealthEvent
from .instance import Instance, follow_running
from .probes import probe

if TYPE_CHECKING:
    from ..model.spec import HealthCheckSpec
    from .runtime import ChildWatcher

log = logging.getLogger("pmd.health")

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
UNKNOWN = "unknown"


@dataclass(slots=True)
class CheckState:
    """What the API shows of one instance's checks."""

    spec: HealthCheckSpec
    status: str = UNKNOWN
    last_check: float | None = None
    response_time: float | None = None  # milliseconds
    failures: int = 0
    last_error: str | None = None
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None
    waiters: list[asyncio.Future[bool]] = field(default_factory=list)


class HealthMonitor:
    """Runs the health checks of RUNNING instances. `restart` is how an instance whose
    program has `restart_on_unhealthy` is restarted."""

    def __init__(self, loop: asyncio.AbstractEventLoop, events: EventBus,
                 children: ChildWatcher, base_env: Mapping[str, str],
                 restart: Callable[[Instance], None]) -> None:
        self.loop = loop
        self.events = events
        self.children = children
        self.base_env = base_env
        self.restart = restart
        self.checks: dict[Instance, CheckState] = {}
        #: Every probe under way, cancelled ones included until they end: close awaits them.
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe: Callable[[], None] | None = follow_running(
            events, self.track, self.untrack)

    # ---- tracking ------------------------------------------------------------------

    def track(self, inst: Instance) -> None:
        """The instance is RUNNING: start checking it (if its program asks for checks)."""
        spec = inst.program.spec.health_check
        if spec is None:
            return
        self.untrack(inst)  # a new run gets checks of its own
        state = self.checks[inst] = CheckState(spec)
        self._set_status(inst, state, UNKNOWN)
        self._schedule(inst, state, 0.0)

    def untrack(self, inst: Instance) -> None:
        """Stop checking inst: its verdict goes back to unknown."""
        state = self.checks.pop(inst, None)
        if state is None:
            return
        if state.timer is not None:
            state.timer.cancel()
        if state.task is not None:
            state.task.cancel()
        self._set_status(inst, state, UNKNOWN)
        self._wake(state, False)

    def state_of(self, inst: Instance) -> CheckState | None:
        return self.checks.get(inst)

    def wait_healthy(self, inst: Instance) -> asyncio.Future[bool]:
        """True once the instance is healthy; False when it turns unhealthy or stops
        being RUNNING. An instance without a health check is healthy while RUNNING."""
        future: asyncio.Future[bool] = self.loop.create_future()
        state = self.checks.get(inst)
        if state is None:
            future.set_result(inst.program.spec.health_check is None
                              and inst.state == ProgramState.RUNNING)
        elif state.status == HEALTHY:
            future.set_result(True)
        else:
            state.waiters.append(future)
        return future

    async def close(self) -> None:
        """Stop following the bus, end every check and wait for the probes under way."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for inst in list(self.checks):
            self.untrack(inst)
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- the probe cycle -----------------------------------------------------------

    def _schedule(self, inst: Instance, state: CheckState, delay: float) -> None:
        state.timer = self.loop.call_later(delay, self._fire, inst, state)

    def _fire(self, inst: Instance, state: CheckState) -> None:
        state.timer = None
        if self.checks.get(inst) is not state:
            return
        current = inst.program.spec.health_check
        if current is None:  # the program was edited: no more checks
            self.untrack(inst)
            return
        state.spec = current  # an edited check applies from its next probe
        task = state.task = self.loop.create_task(self._probe_once(inst, state),
                                                  name=f"health {inst.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe_once(self, inst: Instance, state: CheckState) -> None:
        spec = state.spec
        began = time.monotonic()
        try:
            error = await asyncio.wait_for(self._probe(inst, spec), spec.timeout)
        except TimeoutError:
            error = f"no answer within {spec.timeout:g}s"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a probe failure is data, not a crash
            error = f"{type(exc).__name__}: {exc}"
        state.task = None
        if self.checks.get(inst) is not state:
            return
        state.last_check = time.time()
        state.response_time = round((time.monotonic() - began) * 1000, 1)
        state.last_error = error
        if error is None:
            state.failures = 0
            self._set_status(inst, state, HEALTHY)
            self._wake(state, True)
        else:
            state.failures += 1
            if state.failures >= spec.retries and state.status != UNHEALTHY:
                log.warning("%s is unhealthy: %s", inst.name, error)
                self._set_status(inst, state, UNHEALTHY)
                self._wake(state, False)
                if spec.restart_on_unhealthy and inst.want:
                    log.warning("%s: restarting (restart_on_unhealthy)", inst.name)
                    self.restart(inst)  # leaves RUNNING: untrack() ends this cycle
                    return
        if self.checks.get(inst) is state:
            self._schedule(inst, state, spec.interval)

    async def _probe(self, inst: Instance, spec: HealthCheckSpec) -> str | None:
        """None when healthy, else why not."""
        return await probe(spec, inst.program.spec, inst.port, self.children, self.base_env)

    # ---- status changes ------------------------------------------------------------

    def _set_status(self, inst: Instance, state: CheckState, status: str) -> None:
        old = inst.health_status
        state.status = status
        inst.health_status = status
        if old != status and self.events.wants(HealthEvent):
            program = inst.program
            self.events.publish(HealthEvent(
                program_id=program.id, program=program.name, instance=inst.name,
                port=inst.port, from_status=old, to_status=status, time=time.time(),
                temporary_id=program.temporary_id, source=inst))

    @staticmethod
    def _wake(state: CheckState, healthy: bool) -> None:
        waiters, state.waiters = state.waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(healthy)
