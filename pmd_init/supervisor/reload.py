"""Zero-downtime reload of a port-range program, one instance at a time.

For each port: start a replacement instance while the old one keeps serving, wait until
the replacement is RUNNING (and healthy, when the program has a health check), put it in
the old one's slot, then stop the old one. If a replacement fails (it exits, backs off,
turns unhealthy or takes too long), it is stopped, the old instance keeps serving, and the
reload stops there and says which port failed and why. Ports already replaced stay
replaced: each of them passed the same test.

Sharing a port: the old and the new process listen on the same port at the same time, so
the program must bind with SO_REUSEPORT (the kernel then spreads new connections over both
listeners; the old one's queue is gone once it closes). A program that binds without it
fails to start its replacement (address in use), which is exactly the failed-replacement
path above: the reload reports it and nothing stops serving. A program without a port
range has nothing to hand over and is simply restarted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..model.states import STOPPED_STATES, ProgramState
from .errors import Disabled
from .events import Event, ReadyEvent, StateEvent
from .instance import Instance
from .waits import until_running

if TYPE_CHECKING:
    from .program import Program
    from .supervisor import Supervisor

log = logging.getLogger("pmd.reload")
S = ProgramState



@dataclass(slots=True)
class ReloadReport:
    mode: str  # "zero-downtime" or "restart"
    replaced: list[int] = field(default_factory=list)
    started: list[int] = field(default_factory=list)
    failed_port: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed_port is None

    def as_dict(self) -> dict[str, object]:
        return {"mode": self.mode, "replaced": self.replaced, "started": self.started,
                "failed_port": self.failed_port, "reason": self.reason}


#: How long a replacement may take to say it is ready when its readiness has no timeout.
READY_BUDGET = 60.0


def replacement_timeout(program: Program) -> float:
    """Long enough for startsecs, readiness, and every retry of the health check."""
    spec = program.spec
    budget = spec.startsecs + 10.0
    if spec.readiness is not None:
        budget += spec.readiness.timeout_seconds or READY_BUDGET
    check = spec.health_check
    if check is not None:
        budget += check.retries * (check.interval + check.timeout)
    return budget


async def reload_program(sup: Supervisor, program: Program,
                         timeout: float | None = None) -> ReloadReport:
    """One reload. The caller keeps two of the same program from overlapping (the
    service does), and owns the task it runs in: cancelled half way, it leaves the
    replacement in `extra_instances`, which shutdown and re-exec stop."""
    if not program.spec.enabled:
        raise Disabled(program.name)
    if program.spec.port_range is None:
        sup.restart(program)
        return ReloadReport(mode="restart")
    return await _rolling(sup, program, timeout or replacement_timeout(program))


async def _rolling(sup: Supervisor, program: Program, timeout: float) -> ReloadReport:
    report = ReloadReport(mode="zero-downtime")
    for port, old in list(program.instances.items()):
        assert port is not None
        if program.instances.get(port) is not old:
            continue  # the program was edited under us
        if old.state != S.RUNNING:
            # Nothing serves on this port: there is nothing to keep up, just start it.
            old.restart()
            report.started.append(port)
            continue
        new = program.new_instance(port)
        new.stdout_log, new.stderr_log = old.stdout_log, old.stderr_log  # same files
        new.restarts = old.restarts + 1
        sup.extra_instances.add(new)
        new.start()
        reason = await _ready(sup, new, timeout)
        if reason is None and not _still_wanted(sup, program, port, old):
            reason = "the program was stopped, changed or removed during the reload"
        if reason is not None:
            log.warning("reload of %s: replacement on port %d failed: %s; the old instance "
                        "keeps serving", program.name, port, reason)
            await _retire(sup, new)
            report.failed_port, report.reason = port, reason
            return report
        program.replace_instance(new)
        sup.extra_instances.discard(new)
        sup.extra_instances.add(old)
        await _retire(sup, old)
        report.replaced.append(port)
    return report


def _still_wanted(sup: Supervisor, program: Program, port: int, old: Instance) -> bool:
    """May the replacement take over: is the old instance still the one wanted there?"""
    if program.is_ephemeral:
        registered = sup.ephemeral.get(program.temporary_id or "") is program
    else:
        registered = program.id is not None and sup.programs.get(program.id) is program
    return registered and program.instances.get(port) is old and old.want


async def _retire(sup: Supervisor, inst: Instance) -> None:
    """Stop an instance that is in no slot; shutdown stops it too while it is listed."""
    await _settle(inst.stop(), inst.program.spec.stop_seconds + 5)
    if inst.state in STOPPED_STATES:
        sup.extra_instances.discard(inst)
    else:  # still going after its stop timeout: forget it once it is gone
        inst.wait_state(STOPPED_STATES).add_done_callback(
            lambda _: sup.extra_instances.discard(inst))


async def _ready(sup: Supervisor, new: Instance, timeout: float) -> str | None:
    """None once the replacement may take over, else why it may not."""
    deadline = time.monotonic() + timeout
    try:
        state = await until_running(new, timeout, retries=False)
    except TimeoutError:
        return f"not RUNNING after {timeout:g}s"
    if state != S.RUNNING:
        if new.spawn_error:
            return new.spawn_error
        return f"{state.value.lower()} (exit code {new.exit_code})"
    if new.program.spec.readiness is not None:
        # The old instance serves until the new one says it is ready, not merely running.
        try:
            ready = await asyncio.wait_for(_until_ready(sup, new),
                                           max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return f"not ready after {timeout:g}s"
        if not ready:
            return f"not ready: {new.state.value.lower()} (exit code {new.exit_code})"
    if new.program.spec.health_check is None:
        return None
    try:
        healthy = await asyncio.wait_for(sup.health.wait_healthy(new),
                                         max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        return f"not healthy after {timeout:g}s"
    if healthy:
        return None
    check = sup.health.state_of(new)
    detail = check.last_error if check is not None and check.last_error else new.state.value
    return f"unhealthy: {detail}"


async def _until_ready(sup: Supervisor, inst: Instance) -> bool:
    """True once `inst` is ready; False if its run ends first (it left RUNNING)."""
    if inst.ready_at is not None:
        return True
    outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def on_event(event: Event) -> None:
        if event.source is not inst or outcome.done():
            return
        if isinstance(event, ReadyEvent):
            outcome.set_result(True)
        elif isinstance(event, StateEvent) and event.to_state != S.RUNNING:
            outcome.set_result(False)

    unsubscribe = sup.events.subscribe(on_event, (StateEvent, ReadyEvent))
    try:
        return await outcome
    finally:
        unsubscribe()


async def _settle(future: asyncio.Future[ProgramState], timeout: float) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(future), timeout)
    except TimeoutError:
        pass
