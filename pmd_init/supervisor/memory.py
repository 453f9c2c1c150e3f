"""max_memory_restart: restart an instance whose process group uses more memory than its
program allows.

Only RUNNING instances of programs with a limit are sampled, by one timer that runs only
while there is at least one of them (`interval` seconds apart: settings' memory_interval,
PMD_MEMORY_INTERVAL, default 5). What
counts is the program's process group, as the supervisor's sampler (proctree) measures it.

`MemoryWatch` follows the EventBus: an instance is watched from its RUNNING event until an
event takes it out of RUNNING. `close` (at shutdown) cancels the timer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..model.states import ProgramState
from .events import EventBus
from .instance import Instance, follow_running

if TYPE_CHECKING:
    from .proctree import ProcessSampler
    from .runtime import Cancellable, Timers

log = logging.getLogger("pmd.memory")

DEFAULT_INTERVAL = 5.0


class MemoryWatch:
    """Samples the RUNNING instances of programs with a limit; `restart` is how one over
    its limit is restarted."""

    def __init__(self, timers: Timers, events: EventBus, restart: Callable[[Instance], None],
                 sampler: ProcessSampler, interval: float = DEFAULT_INTERVAL) -> None:
        self.timers = timers
        self.restart = restart
        self.sampler = sampler
        self.interval = max(0.05, interval)  # a timer that fires back to back is a spin
        self.watched: set[Instance] = set()
        self.restarts = 0
        self._timer: Cancellable | None = None
        self._unsubscribe: Callable[[], None] | None = follow_running(
            events, self.track, self.untrack)

    def track(self, inst: Instance) -> None:
        if inst.program.spec.max_memory_restart is None:
            return
        self.watched.add(inst)
        if self._timer is None:
            self._timer = self.timers.call_later(self.interval, self._sample)

    def untrack(self, inst: Instance) -> None:
        self.watched.discard(inst)
        if not self.watched and self._timer is not None:  # nothing to sample: no timer
            self._timer.cancel()
            self._timer = None

    def _sample(self) -> None:
        self._timer = None
        for inst in list(self.watched):
            limit = inst.program.spec.max_memory_restart
            if limit is None or inst.state != ProgramState.RUNNING or inst.pid is None:
                self.watched.discard(inst)
                continue
            rss = self.sampler.rss(inst.pid)
            if rss is not None and rss > limit:
                log.warning("%s uses %d bytes, over max_memory_restart %d: restarting",
                            inst.name, rss, limit)
                self.watched.discard(inst)  # tracked again once it is RUNNING again
                self.restarts += 1
                self.restart(inst)
        if self.watched and self._timer is None:
            self._timer = self.timers.call_later(self.interval, self._sample)

    def close(self) -> None:
        """Stop following the bus and sampling."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.watched.clear()
