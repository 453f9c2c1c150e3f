"""What a program's processes use: CPU and resident memory, read from /proc on demand.

The supervisor owns one sampler (`Supervisor.sampler`), behind the Daemon API's
`include_stats`, the process API's `cpu_usage` and `memory_usage` (list, detail, /ws
metrics) and the max_memory_restart watch: every ask in the same second shares its scan.

Which processes are a program's: the members of its process group. Every program is
spawned as the leader of a new session and process group (its pgid is its pid), and the
supervisor acts on that group and nothing else: the stop signal, the SIGKILL after
`stop_timeout` and the kill of stragglers after an exit all go through `killpg`. So:
- a child forked in the group counts, also once its parent is gone and it has been
  re-parented to pmd (a daemonizing double fork): a stop still ends it;
- a descendant that left the group (`setsid`, or `setpgid` to a job-control group of its
  own) does not count: no stop reaches it, and counting it would let max_memory_restart
  restart a program over and over for memory that the restart never frees.
Descendants by parent pid would be wrong both ways: they lose the re-parented daemon and
keep the escaped one.

Nothing polls. An ask reads /proc once for every process on the machine (process group,
CPU ticks, start time, resident pages) and the scan is reused for FRESH seconds, so a list
of a hundred programs, or the API and the memory watch in the same second, cost one scan.
CPU percent (100 is one core) is a process's CPU time between the previous scan and this
one over the time between them; a process the previous scan did not see (or a previous
scan older than FORGET_AFTER) gets its average since it started, as `ps` shows. Between
asks the sampler keeps only the last scan's CPU counters.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

FRESH = 1.0  # seconds a scan is reused
FORGET_AFTER = 300.0  # a previous scan older than this measures nothing useful
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
COMM_MAX = 15  # the kernel cuts a command name to this many bytes


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of /proc/<pid>/stat the sampler needs."""

    pid: int
    name: str
    pgid: int
    ticks: int  # utime + stime
    start: int  # start time, in ticks after boot
    rss: int  # bytes


@dataclass(frozen=True, slots=True)
class ProcessUsage:
    pid: int
    name: str
    cpu_percent: float
    rss: int


@dataclass(frozen=True, slots=True)
class GroupUsage:
    """A program's process group, its members ordered by pid."""

    processes: tuple[ProcessUsage, ...]

    @property
    def cpu_percent(self) -> float:
        return sum(p.cpu_percent for p in self.processes)

    @property
    def rss(self) -> int:
        return sum(p.rss for p in self.processes)


def read_stat(pid: int) -> ProcStat | None:
    """None when the process is gone (or was never there)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: it ends at the last ')'.
    close = raw.rfind(b")")
    fields = raw[close + 2:].split()
    try:
        return ProcStat(pid=pid, name=raw[raw.find(b"(") + 1:close].decode("utf-8", "replace"),
                        pgid=int(fields[2]), ticks=int(fields[11]) + int(fields[12]),
                        start=int(fields[19]), rss=int(fields[21]) * PAGE)
    except (IndexError, ValueError):
        return None


def _full_name(proc: ProcStat) -> str:
    """The name `ps -o comm` would show, uncut when the kernel cut it (as psutil does)."""
    if len(proc.name.encode()) < COMM_MAX:
        return proc.name
    try:
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0]
    except OSError:
        return proc.name
    base = os.path.basename(argv0.decode("utf-8", "replace"))
    return base if base.startswith(proc.name) else proc.name


def _uptime() -> float:
    try:
        with open("/proc/uptime") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return time.monotonic()


def _cpu_counters() -> tuple[int, int] | None:
    """(busy, total) ticks of all CPUs since boot, from /proc/stat."""
    try:
        with open("/proc/stat", "rb") as f:
            first = f.readline().split()
        values = [int(v) for v in first[1:9]]  # user .. steal; guest is inside user
    except (OSError, ValueError):
        return None
    total = sum(values)
    return total - values[3] - values[4], total  # less idle and iowait


class ProcessSampler:
    def __init__(self, fresh: float = FRESH) -> None:
        self.fresh = fresh
        self._groups: dict[int, list[ProcStat]] = {}
        self._scanned = float("-inf")  # monotonic time of the scan in _groups
        self._uptime = 0.0
        # pid -> (start, ticks) of the previous scan, at uptime _previous_uptime
        self._previous: dict[int, tuple[int, int]] = {}
        self._previous_uptime = 0.0
        self._system: tuple[float, float] | None = None  # (monotonic time, percent)
        self._system_counters: tuple[int, int] | None = None

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._scanned < self.fresh:
            return
        if now - self._scanned > FORGET_AFTER:
            self._previous = {}
        elif self._groups:
            self._previous = {p.pid: (p.start, p.ticks)
                              for members in self._groups.values() for p in members}
            self._previous_uptime = self._uptime
        groups: dict[int, list[ProcStat]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                proc = read_stat(int(entry))
                if proc is not None:
                    groups.setdefault(proc.pgid, []).append(proc)
        self._groups = groups
        self._uptime = _uptime()
        self._scanned = now

    def _members(self, pgid: int) -> list[ProcStat]:
        members = self._groups.get(pgid, [])
        leader = next((p for p in members if p.pid == pgid), None)
        if leader is None or leader.rss == 0:
            # Started since the scan (its own children show in the next one), or caught
            # between two address spaces in the middle of an exec: read it again.
            fresh = read_stat(pgid)
            if fresh is not None and fresh.pgid == pgid:
                members = [p for p in members if p.pid != pgid] + [fresh]
                self._groups[pgid] = members
        return members

    def _cpu_percent(self, proc: ProcStat) -> float:
        previous = self._previous.get(proc.pid)
        elapsed = self._uptime - self._previous_uptime
        if previous is not None and previous[0] == proc.start and elapsed > 0:
            used = (proc.ticks - previous[1]) / TICKS
        else:
            used = proc.ticks / TICKS
            elapsed = self._uptime - proc.start / TICKS
        return max(0.0, used / elapsed * 100.0) if elapsed > 0 else 0.0

    def group(self, pgid: int) -> GroupUsage | None:
        """The usage of process group `pgid` (a program's pid); None when it has no member
        left."""
        self._refresh()
        members = self._members(pgid)
        if not members:
            return None
        return GroupUsage(tuple(
            ProcessUsage(pid=p.pid, name=_full_name(p), cpu_percent=self._cpu_percent(p),
                         rss=p.rss)
            for p in sorted(members, key=lambda p: p.pid)))

    def usage(self, pgid: int) -> tuple[float, int]:
        """(cpu percent, resident bytes) of process group `pgid`; (0.0, 0) when it is gone."""
        self._refresh()
        members = self._members(pgid)
        return sum(self._cpu_percent(p) for p in members), sum(p.rss for p in members)

    def rss(self, pgid: int) -> int | None:
        """Resident bytes of process group `pgid`; None when it is gone."""
        self._refresh()
        members = self._members(pgid)
        return sum(p.rss for p in members) if members else None

    def totals(self, pgid: int) -> tuple[float, int] | None:
        """(CPU seconds used, resident bytes) of process group `pgid`'s members, for the
        metrics; None when it has no member left. The seconds are those of the members
        alive now: a member that exited takes its share with it."""
        self._refresh()
        members = self._members(pgid)
        if not members:
            return None
        return sum(p.ticks for p in members) / TICKS, sum(p.rss for p in members)

    def system_cpu(self) -> float:
        """Whole-machine CPU percent since the previous ask (since boot on the first),
        reused as long as a scan is."""
        now = time.monotonic()
        if self._system is not None and now - self._system[0] < self.fresh:
            return self._system[1]
        counters = _cpu_counters()
        if counters is None:
            return 0.0
        busy, total = counters
        if self._system_counters is not None:
            busy -= self._system_counters[0]
            total -= self._system_counters[1]
        value = max(0.0, busy / total * 100.0) if total > 0 else 0.0
        self._system_counters = counters
        self._system = (now, value)
        return value

