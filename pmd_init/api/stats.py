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


class ProcessTable:
    """One pass over /proc per request: the parent and session of every process, so the
    trees of many programs cost one scan, not one each."""

    def __init__(self) -> None:
        self.children: dict[int, list[int]] = {}
        self.members: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue  # gone meanwhile
            # the command name may hold spaces and parentheses: split after the last ')'
            fields = data[data.rfind(b")") + 2 :].split()
            try:
                pid, ppid, sid = int(entry.name), int(fields[1]), int(fields[3])
            except (IndexError, ValueError):
                continue
            self.children.setdefault(ppid, []).append(pid)
            self.members.setdefault(sid, []).append(pid)

    def tree(self, root: int) -> list[int]:
        """The program's process, its descendants, and the members of its session (spawn
        starts one per program) with theirs: a daemonizing child re-parented to pmd still
        belongs to the program that started it."""
        found: list[int] = []
        seen: set[int] = set()
        todo = [root, *self.members.get(root, [])]
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            found.append(pid)
            todo.extend(self.children.get(pid, []))
        return found


class Sampler:
    def __init__(self) -> None:
        # pid -> (create_time, cpu seconds, monotonic time of the sample)
        self._last: dict[int, tuple[float, float, float]] = {}
        self._asked = 0.0

    def _forget_stale(self, now: float) -> None:
        if now - self._asked > FORGET_AFTER or len(self._last) > MAX_REMEMBERED:
            self._last.clear()
        self._asked = now

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

    def instance_stats(self, inst: Instance, table: ProcessTable | None = None
                       ) -> dict[str, Any] | None:
        """The stats object of the extras page, or None when nothing runs."""
        if inst.pid is None:
            return None
        table = table or ProcessTable()
        now = time.monotonic()
        self._forget_stale(now)
        processes = []
        for pid in table.tree(inst.pid):
            try:
                proc = psutil.Process(pid)
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
