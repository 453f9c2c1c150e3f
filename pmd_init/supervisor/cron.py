"""cron_restart: restart a running program on a schedule (PM2's cron_restart).

The expression is read in the container's time zone; one timer per scheduled program,
set for the next moment and set again when it fires, so nothing runs between moments. A
program that is not running at that moment is left alone (a schedule restarts, it does
not start). The restart's STOPPING event says `reason: "cron"`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from ..model.states import RUNNING_STATES

if TYPE_CHECKING:
    from .program import Program
    from .runtime import Cancellable, Timers

log = logging.getLogger("pmd.cron")


class CronRestarts:
    def __init__(self, timers: Timers) -> None:
        self.timers = timers
        self.fired = 0
        self._armed: dict[Program, tuple[str, Cancellable]] = {}

    def sync(self, programs: Iterable[Program]) -> None:
        """Schedule exactly the enabled programs with a cron_restart."""
        wanted = {p: p.spec.cron_restart for p in programs
                  if p.spec.cron_restart and p.spec.enabled}
        for program, (expression, timer) in list(self._armed.items()):
            if wanted.get(program) != expression:
                timer.cancel()
                del self._armed[program]
        for program, expression in wanted.items():
            if expression is not None and program not in self._armed:
                self._arm(program, expression, time.time())

    def _arm(self, program: Program, expression: str, after: float) -> None:
        from croniter import croniter

        start = datetime.fromtimestamp(after).astimezone()  # the container's zone
        moment = croniter(expression, start).get_next(float)
        delay = max(0.0, moment - time.time())
        self._armed[program] = (expression, self.timers.call_later(
            delay, lambda: self._fire(program, expression, moment)))

    def _fire(self, program: Program, expression: str, moment: float) -> None:
        self._armed.pop(program, None)
        running = [i for i in program.instances.values() if i.state in RUNNING_STATES]
        if running:
            log.info("%s: restarting on its schedule (%s)", program.name, expression)
            self.fired += 1
            for inst in running:
                inst.restart(reason="cron")
        # from the moment itself: a timer that fired a hair early does not fire twice
        self._arm(program, expression, max(moment, time.time()))

    def close(self) -> None:
        for _, timer in self._armed.values():
            timer.cancel()
        self._armed.clear()
