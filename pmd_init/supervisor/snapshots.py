"""The shapes pmd hands to its next self across a re-exec (typed, checked on the way in).

Written by `Supervisor.snapshot()` and read back by `Supervisor.adopt()` in the new process
image. Monotonic times (`starts`) stay meaningful: the clock is the kernel's, and a re-exec
keeps the boot.
"""

from __future__ import annotations

from typing import Any

from typing_extensions import TypedDict  # pydantic validates it on Python < 3.12


class InstanceSnapshot(TypedDict, total=False):
    port: int | None
    state: str
    pid: int | None
    started_at: float | None
    uptime: float | None
    restarts: int
    backoff: int
    want: bool
    exit_code: int | None
    spawn_error: str | None
    capture_fds: list[int]
    restart_after_stop: bool
    retry_at: float | None
    backoff_reason: str | None
    starts: list[float]
    limit_hits: int
    restart_pending: bool
    #: Automatic restarts in a row (restart_delays' index).
    streak: int
    completed: bool | None
    ready_at: float | None
    notify_status: str | None
    notify_stopping: bool
    #: readiness `fd`: the notification pipe's read end, kept open across the exec.
    ready_fd: int | None
    log_times: dict[str, list[float] | None]
    #: Bytes read from each stream so far (`pmd_log_bytes_total` must not fall back).
    log_bytes: dict[str, int]


class ProgramSnapshot(TypedDict, total=False):
    key: str
    spec: dict[str, Any]
    temporary_id: str | None
    created_at: float | None
    expires_at: float | None
    finished_at: float | None
    instances: list[InstanceSnapshot]
    #: Instances in no slot when pmd re-executed: a reload's replacement, or the instance
    #: it replaced while that one stops. Adopted too, so that nothing runs unwatched.
    extra_instances: list[InstanceSnapshot]


class SupervisorSnapshot(TypedDict, total=False):
    programs: list[ProgramSnapshot]
    #: Keys of the programs whose start waited for their dependencies.
    waiting: list[str]
    ephemeral_report: list[dict[str, Any]]
    #: The notify socket, kept open across the exec: {"fd": n, "path": p}.
    notify_socket: dict[str, Any] | None
    #: The sockets held for programs, kept open across the exec: {"name", "spec", "fd"}.
    sockets: list[dict[str, Any]]
