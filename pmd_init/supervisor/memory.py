"""max_memory_restart: restart an instance whose process group uses more memory than its
program allows.

Only RUNNING instances of programs with a limit are sampled, by one timer that runs only
while there is at least one of them (PMD_MEMORY_INTERVAL seconds apart, default 5). What
counts is the program's process group, as the shared sampler (proctree) measures it.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Protocol

from ..model.states import ProgramState
from .proctree import SAMPLER

if TYPE_CHECKING:
    import asyncio

    from .instance import Instance

log = logging.getLogger("pmd.memory")

DEFAULT_INTERVAL = 5.0


class Owner(Protocol):
    """What MemoryWatch needs of the Supervisor that owns it: the loop its timer runs on."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...


class MemoryWatch:
    def __init__(self, sup: Owner, interval: float | None = None) -> None:
        self.sup = sup
        if interval is None:
            try:
                interval = float(os.environ.get("PMD_MEMORY_INTERVAL") or DEFAULT_INTERVAL)
            except ValueError:
                interval = DEFAULT_INTERVAL
        self.interval = max(0.05, interval)
        self.watched: set[Instance] = set()
        self.restarts = 0
        self._timer: asyncio.TimerHandle | None = None

    def track(self, inst: Instance) -> None:
        if inst.program.spec.max_memory_restart is None:
            return
        self.watched.add(inst)
        if self._timer is None:
            self._timer = self.sup.loop.call_later(self.interval, self._sample)

    def _sample(self) -> None:
        self._timer = None
        for inst in list(self.watched):
            limit = inst.program.spec.max_memory_restart
            if limit is None or inst.state != ProgramState.RUNNING or inst.pid is None:
                self.watched.discard(inst)
                continue
            rss = SAMPLER.rss(inst.pid)
            if rss is not None and rss > limit:
                log.warning("%s uses %d bytes, over max_memory_restart %d: restarting",
                            inst.name, rss, limit)
                self.watched.discard(inst)  # tracked again once it is RUNNING again
                self.restarts += 1
                inst.restart()
        if self.watched:
            self._timer = self.sup.loop.call_later(self.interval, self._sample)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.watched.clear()
