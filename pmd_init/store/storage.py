"""The writes pmd makes to its config dir and its state dir, and how they are going.

Every such write goes through `Storage`: a failure becomes a `StorageError` that names the
dir and says why (full, read-only, other), and the dir is reported as failing in /health
until a write there shows the problem is gone: the same file written, or a write at least
as large as the one that failed (a full disk still takes pids.json's few bytes). Nothing
polls a failing dir: space that comes back is noticed by the next write, which an API call
or a state change makes anyway.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import atomic_write_bytes, json_bytes, remove_stale_temps, store_log

FULL = "STORAGE_FULL"
READ_ONLY = "STORAGE_READ_ONLY"
FAILED = "STORAGE_FAILED"

_WHY = {FULL: "is full", READ_ONLY: "is read-only", FAILED: "cannot be written"}


def storage_code(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return FULL
    if exc.errno == errno.EROFS:
        return READ_ONLY
    return FAILED


class StorageError(OSError):
    """A write to the config or state dir failed; the file keeps its previous content."""

    def __init__(self, cause: OSError, path: Path, kind: str, size: int = 0) -> None:
        reason = cause.strerror or str(cause)
        super().__init__(cause.errno, reason, str(path))
        self.size = size
        self.code = storage_code(cause)
        self.kind = kind
        self.folder = path.parent
        self.file = path.name
        self.reason = reason
        self.message = (f"the {kind} dir {self.folder} {_WHY[self.code]}: "
                        f"{self.file} could not be written ({reason})")

    def __str__(self) -> str:
        return self.message

    def details(self) -> dict[str, Any]:
        return {"dir": str(self.folder), "kind": self.kind, "file": self.file,
                "reason": self.reason,
                "errno": errno.errorcode.get(self.errno or 0) if self.errno else None}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


@dataclass
class DirStatus:
    kind: str
    path: Path
    problem: StorageError | None = None
    last_error: StorageError | None = None
    last_error_at: float | None = None
    failures: int = 0
    stale_temps_removed: list[str] = field(default_factory=list)

    def failed(self, error: StorageError) -> None:
        if self.problem is None:
            store_log().error("%s", error.message)
        self.problem = self.last_error = error
        self.last_error_at = time.time()
        self.failures += 1

    def succeeded(self, path: Path, size: int) -> None:
        problem = self.problem
        if problem is None:
            return
        if problem.code == FULL and path.name != problem.file and size < problem.size:
            return  # a small write fits where the one that failed did not
        store_log().info("the %s dir %s is writable again", self.kind, self.path)
        self.problem = None

    def view(self) -> dict[str, Any]:
        last = self.last_error
        return {
            "dir": str(self.path),
            "ok": self.problem is None,
            "code": self.problem.code if self.problem else None,
            "error": self.problem.message if self.problem else None,
            "last_error": None if last is None else {
                "code": last.code, "message": last.message, "file": last.file,
                "time": _iso(self.last_error_at)},
            "failures": self.failures,
            "stale_temp_files_removed": len(self.stale_temps_removed),
        }


class Storage:
    def __init__(self, config_dir: Path, state_dir: Path) -> None:
        self.dirs = {"config": DirStatus("config", config_dir),
                     "state": DirStatus("state", state_dir)}

    def _status_of(self, path: Path) -> DirStatus | None:
        for status in self.dirs.values():
            if path.parent == status.path or (
                    path.parent.name == "programs.d" and path.parent.parent == status.path):
                return status
        return None

    def write_bytes(self, path: Path, data: bytes, durable: bool = True) -> None:
        self._write(path, len(data), lambda: atomic_write_bytes(path, data, durable=durable))

    def write_json(self, path: Path, value: Any, durable: bool = True) -> None:
        self.write_bytes(path, json_bytes(value), durable=durable)

    def _write(self, path: Path, size: int, write: Callable[[], None]) -> None:
        status = self._status_of(path)
        try:
            write()
        except OSError as exc:
            if status is None or isinstance(exc, StorageError):
                raise
            error = StorageError(exc, path, status.kind, size)
            status.failed(error)
            raise error from exc
        if status is not None:
            status.succeeded(path, size)

    def remove_stale_temps(self) -> int:
        """At start: the temp files of writes that a killed pmd left behind."""
        total = 0
        for status in self.dirs.values():
            removed = remove_stale_temps(status.path)
            if removed:
                store_log().warning("removed %d stale temp file(s) from the %s dir %s: %s",
                            len(removed), status.kind, status.path, ", ".join(removed))
            status.stale_temps_removed += removed
            total += len(removed)
        return total

    def ok(self) -> bool:
        return all(status.problem is None for status in self.dirs.values())

    def view(self) -> dict[str, Any]:
        return {kind: status.view() for kind, status in self.dirs.items()}
