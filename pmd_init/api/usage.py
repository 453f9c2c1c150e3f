"""cpu_usage and memory_usage of the PM2-compatible views: the whole process tree of an
instance (its process and all descendants), sampled with psutil only when a view or a
/ws metrics tick asks, and remembered for a second so that a burst of list requests costs
one sample per process.

CPU percent is the CPU time used between two asks over the time between them (100 is one
core); the first ask of a process gives its average since it started, as `ps` does.
"""

from __future__ import annotations

import time
from typing import Any

FRESH = 1.0  # seconds a sample is served again
FORGET_AFTER = 120.0  # pids not asked about this long are forgotten


class UsageCache:
    def __init__(self) -> None:
        # pid -> (monotonic time, cpu seconds of the tree, create time, cpu %, rss)
        self._samples: dict[int, tuple[float, float, float, float, int]] = {}
        self._swept = time.monotonic()
        self._system_cpu: tuple[float, float] | None = None

    def sample(self, pid: int) -> tuple[float, int]:
        """(cpu percent, resident bytes) of pid's process tree; (0.0, 0) when it is gone."""
        now = time.monotonic()
        last = self._samples.get(pid)
        if last is not None and now - last[0] < FRESH:
            return last[3], last[4]
        if now - self._swept > FORGET_AFTER:
            self._samples = {k: v for k, v in self._samples.items()
                             if now - v[0] < FORGET_AFTER}
            self._swept = now
        measured = _measure(pid)
        if measured is None:
            self._samples.pop(pid, None)
            return 0.0, 0
        cpu_seconds, created, rss = measured
        if last is not None and last[2] == created and now > last[0]:
            percent = max(0.0, (cpu_seconds - last[1]) / (now - last[0]) * 100.0)
        else:
            alive = time.time() - created
            percent = max(0.0, cpu_seconds / alive * 100.0) if alive > 0 else 0.0
        self._samples[pid] = (now, cpu_seconds, created, percent, rss)
        return percent, rss

    def system_cpu(self) -> float:
        """Whole-machine CPU percent since the previous ask (or the last second)."""
        import psutil

        now = time.monotonic()
        if self._system_cpu is not None and now - self._system_cpu[0] < FRESH:
            return self._system_cpu[1]
        value = float(psutil.cpu_percent(interval=None))
        self._system_cpu = (now, value)
        return value


def _measure(pid: int) -> tuple[float, float, int] | None:
    import psutil

    try:
        root = psutil.Process(pid)
        with root.oneshot():
            created = root.create_time()
            times = root.cpu_times()
            rss = root.memory_info().rss
        cpu = times.user + times.system
        children: list[Any] = root.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    for child in children:
        try:
            with child.oneshot():
                t = child.cpu_times()
                cpu += t.user + t.system
                rss += child.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return cpu, created, rss


STATS = UsageCache()
