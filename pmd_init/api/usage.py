"""cpu_usage and memory_usage of the PM2-compatible views: the whole process tree of an
instance (its process and all its descendants).

Nothing is sampled unless a view or a /ws metrics tick asks. An ask reads /proc once for
every process on the machine (parent, CPU ticks, start time, resident pages), at most once
a second: a list of a hundred programs, or a hundred lists in the same second, cost one
scan. CPU percent is the tree's CPU time between two scans over the time between them (100
is one core); the first time a process is seen it is its average since it started, as `ps`
shows.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

FRESH = 1.0  # seconds a scan is reused
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(slots=True)
class Proc:
    ppid: int
    ticks: int  # utime + stime
    start: int  # start time, ticks after boot
    rss: int  # bytes


def read_proc(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'
    fields = raw[raw.rfind(b")") + 2:].split()
    try:
        return Proc(ppid=int(fields[1]), ticks=int(fields[11]) + int(fields[12]),
                    start=int(fields[19]), rss=int(fields[21]) * PAGE)
    except (IndexError, ValueError):
        return None


def scan() -> dict[int, Proc]:
    procs: dict[int, Proc] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            proc = read_proc(int(entry))
            if proc is not None:
                procs[int(entry)] = proc
    return procs


def uptime() -> float:
    try:
        with open("/proc/uptime") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return time.monotonic()


class UsageCache:
    def __init__(self) -> None:
        self._procs: dict[int, Proc] = {}
        self._children: dict[int, list[int]] = {}
        self._scanned = float("-inf")
        self._uptime = 0.0
        # root pid -> (start, tree ticks, uptime at that scan): the previous sample
        self._previous: dict[int, tuple[int, int, float]] = {}
        self._results: dict[int, tuple[float, int]] = {}
        self._system: tuple[float, float] | None = None

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._scanned < FRESH:
            return
        self._procs = scan()
        self._uptime = uptime()
        children: dict[int, list[int]] = {}
        for pid, proc in self._procs.items():
            children.setdefault(proc.ppid, []).append(pid)
        self._children = children
        self._scanned = now
        self._results = {}
        alive = self._procs.keys()
        self._previous = {pid: v for pid, v in self._previous.items() if pid in alive}

    def sample(self, pid: int) -> tuple[float, int]:
        """(cpu percent, resident bytes) of pid's process tree; (0.0, 0) when it is gone."""
        self._refresh()
        cached = self._results.get(pid)
        if cached is not None:
            return cached
        root = self._procs.get(pid)
        if root is None or root.rss == 0:
            # Started since the last scan (itself now, its children from the next scan),
            # or caught in the middle of its exec, between two address spaces.
            root = read_proc(pid)
            if root is None:
                return 0.0, 0
            self._procs[pid] = root
        ticks, rss = 0, 0
        stack = [pid]
        seen = set()
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            proc = self._procs.get(current)
            if proc is None:
                continue
            ticks += proc.ticks
            rss += proc.rss
            stack.extend(self._children.get(current, ()))
        previous = self._previous.get(pid)
        if previous is not None and previous[0] == root.start and self._uptime > previous[2]:
            percent = (ticks - previous[1]) / TICKS / (self._uptime - previous[2]) * 100.0
        else:
            age = self._uptime - root.start / TICKS
            percent = ticks / TICKS / age * 100.0 if age > 0 else 0.0
        self._previous[pid] = (root.start, ticks, self._uptime)
        result = (max(0.0, percent), rss)
        if root.rss:
            self._results[pid] = result
        return result

    def system_cpu(self) -> float:
        """Whole-machine CPU percent since the previous ask (reused for a second)."""
        import psutil

        now = time.monotonic()
        if self._system is not None and now - self._system[0] < FRESH:
            return self._system[1]
        value = float(psutil.cpu_percent(interval=None))
        self._system = (now, value)
        return value


STATS = UsageCache()
