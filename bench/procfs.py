"""Reading processes from /proc, as seen from outside the PID namespaces the bench creates."""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def tasks(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def children(pid: int) -> list[int]:
    """Every child of every thread of pid (zombies included)."""
    kids: list[int] = []
    for tid in tasks(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                kids.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return kids


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = children(pid)
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children(child))
    return found


def comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def status_field(pid: int, name: str, task: str | None = None) -> int | None:
    path = f"/proc/{pid}/task/{task}/status" if task else f"/proc/{pid}/status"
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def rss_kib(pid: int) -> int | None:
    return status_field(pid, "VmRSS")


def _rollup_kib(pid: int, fields: tuple[str, ...]) -> int | None:
    total, found = 0, False
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(fields):
                    total += int(line.split()[1])
                    found = True
    except (OSError, ValueError):
        return None
    return total if found else None


def uss_kib(pid: int) -> int | None:
    """Unique set size: the pages only this process holds (Private_Clean + Private_Dirty
    of smaps_rollup), what the kernel would free if it exited. A shared library's pages
    count here only while no other process maps them: the same init's USS moves by
    several MiB with what else runs on the machine (another Python with pydantic, say)."""
    return _rollup_kib(pid, ("Private_Clean:", "Private_Dirty:"))


def anon_kib(pid: int) -> int | None:
    """Anonymous memory (smaps_rollup's Anonymous): the heap, the interpreter's objects,
    the stacks; what the process itself allocated, whatever else runs on the machine."""
    return _rollup_kib(pid, ("Anonymous:",))


def ctx_switches(pid: int) -> int:
    """voluntary + nonvoluntary context switches, summed over the live threads."""
    total = 0
    for tid in tasks(pid):
        for name in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
            total += status_field(pid, name, tid) or 0
    return total


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the whole thread group."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def minor_faults(pid: int) -> int | None:
    """Minor page faults of the whole thread group (a page touched for the first time, or
    again after the allocator gave it back)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rfind(b")") + 2:].split()[7])


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def written_bytes(pid: int) -> int | None:
    """Bytes the process has passed to write(2) and friends (/proc/<pid>/io wchar)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))
    except (OSError, StopIteration, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3] != b"Z"
