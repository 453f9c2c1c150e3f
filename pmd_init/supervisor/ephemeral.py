"""Identity of this container boot, and of a process, for ephemeral.json reconciliation.

A quick-start entry is stale when it was written by an earlier boot of the container: the
kernel's boot id differs (machine reboot) or PID 1 is a different process (container
restart: a new PID namespace whose PID 1 started at another time), or its pid is gone or
now belongs to another process (same pid, different start time).
"""

from __future__ import annotations

from pathlib import Path


def kernel_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def boot_identity() -> dict[str, object]:
    return {"boot_id": kernel_boot_id(), "init_start": process_start_ticks(1)}


def same_process(pid: int | None, start_ticks: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    return start_ticks is not None and process_start_ticks(pid) == start_ticks
