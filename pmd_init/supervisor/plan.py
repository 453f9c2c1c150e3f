"""Which programs a start boots, and which of those a boot plan (pid1/early.py) can start
before the supervisor exists, with what their spawn reads.

Apart from the rest of the supervisor so that pmd's start can reach it with the models
only: asyncio, the watchers and the HTTP stack come after the boot programs are spawned.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..model.policies import rlimit_number
from ..model.spec import ProgramSpec


def boots(spec: ProgramSpec) -> bool:
    """Whether a start (or a reset) starts it."""
    return spec.enabled and spec.boot and not spec.lazy_load and not spec.on_connection


def spawn_rlimits(spec: ProgramSpec) -> list[tuple[int, int, int]]:
    """(RLIMIT_*, soft, hard) of `rlimits`, as the spawn sets them."""
    return [(rlimit_number(name), *limit.pair())
            for name, limit in (spec.rlimits.items() if spec.rlimits else {}).items()]


def plan_entry(spec: ProgramSpec, rlimits: list[tuple[int, int, int]]) -> dict[str, Any] | None:
    """A boot program's plan entry, or None when it cannot be started before the
    supervisor exists (a delay, dependencies, sockets, ports, a readiness that pmd takes
    part in). `spec` is a boot program (`boots`); `rlimits` as its spawn's."""
    readiness = spec.readiness
    if spec.delay_seconds or spec.depends_on or spec.sockets or spec.port_range \
            or (readiness is not None and (readiness.notify or readiness.fd is not None)):
        return None
    return {"name": spec.name, "command": spec.command, "directory": spec.directory,
            "user": spec.user, "stdout_logfile": spec.stdout_logfile,
            "stderr_logfile": spec.stderr_logfile, "env_file": list(spec.env_file),
            "environment": dict(spec.environment), "terminal_shell": spec.terminal_shell,
            "display": spec.display, "logs_enabled": spec.logs_enabled,
            "rlimits": [list(t) for t in rlimits]}


def plan_entries(specs: Iterable[ProgramSpec]) -> list[dict[str, Any]]:
    """The plan entries of a configuration's programs, in boot's order (ascending
    priority, then the order of the files)."""
    order = sorted(enumerate(specs), key=lambda item: (item[1].priority, item[0]))
    entries = (plan_entry(spec, spawn_rlimits(spec)) for _, spec in order if boots(spec))
    return [entry for entry in entries if entry is not None]
