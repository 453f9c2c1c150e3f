"""Resource stats for include_stats: CPU, memory and the whole process tree of a program.

psutil is touched only while someone asks (DESIGN: no polling while idle). CPU percent
needs two samples: the first time a process is asked about, it is its average since it
started (what `ps` shows); later asks measure the interval since the previous ask. The
remembered samples are dropped when nobody has asked for a while, on the next ask.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psutil

from ..supervisor.instance import Instance
from .views import iso

FORGET_AFTER = 300.0  # seconds without an ask before the remembered samples are dropped
MAX_REMEMBERED = 20000  # dead pids pile up between asks; past this, start over


class Sampler:
    def __init__(self) -> None:
        # pid -> (create_time, cpu seconds, monotonic time of the sample)
        self._last: dict[int, tuple[float, float, float]] = {}
        self._asked = 0.0

    def _forget_stale(self, now: float) -> None:
        if now - self._asked > FORGET_AFTER or len(self._last) > MAX_REMEMBERED:
            self._last.clear()
        self._asked = now

    def tree(self, root: int) -> list[psutil.Process]:
        """The program's process and everything under it: its descendants, plus members of
        its session that were re-parented to pmd (a daemonizing child stays in the session
        pmd gave the program, since spawn starts a new one)."""
        try:
            top = psutil.Process(root)
            found = {root: top}
            for child in top.children(recursive=True):
                found.setdefault(child.pid, child)
        except psutil.Error:
            return []
        for child in psutil.Process().children():
            if child.pid not in found:
                try:
                    if os.getsid(child.pid) == root:
                        found[child.pid] = child
                        for grandchild in child.children(recursive=True):
                            found.setdefault(grandchild.pid, grandchild)
                except (OSError, psutil.Error):
                    continue
        return list(found.values())

    def _cpu_percent(self, proc: psutil.Process, now: float) -> float:
        try:
            times = proc.cpu_times()
            created = proc.create_time()
        except psutil.Error:
            return 0.0
        used = times.user + times.system
        last = self._last.get(proc.pid)
        self._last[proc.pid] = (created, used, now)
        if last is not None and last[0] == created and now > last[2]:
            return max(0.0, (used - last[1]) / (now - last[2]) * 100.0)
        alive = time.time() - created
        return max(0.0, used / alive * 100.0) if alive > 0 else 0.0

    def instance_stats(self, inst: Instance) -> dict[str, Any] | None:
        """The stats object of the extras page, or None when nothing runs."""
        if inst.pid is None:
            return None
        now = time.monotonic()
        self._forget_stale(now)
        processes = []
        for proc in self.tree(inst.pid):
            try:
                with proc.oneshot():
                    name = proc.name()
                    rss = proc.memory_info().rss
                    cpu = self._cpu_percent(proc, now)
            except psutil.Error:
                continue
            processes.append({"pid": proc.pid, "name": name, "cpu_percent": round(cpu, 1),
                              "memory_rss_bytes": rss})
        if not processes:
            return None
        processes.sort(key=lambda p: p["pid"])
        return {
            "pid": inst.pid,
            "started_at": iso(inst.started_at),
            "cpu_percent": round(sum(p["cpu_percent"] for p in processes), 1),
            "memory_rss_bytes": sum(p["memory_rss_bytes"] for p in processes),
            "process_count": len(processes),
            "processes": processes,
        }
