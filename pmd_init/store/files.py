"""Atomic file writes: a reader sees the old file or the new one, never half of either.

A write goes to `.<name>.<pid>.tmp` beside the file, then is renamed over it. A failed
write removes its temp file at once (on a full disk a partial one keeps the space it took);
one left by a pmd that was killed mid-write is removed at the next start.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import logging

#: pmd's temp file names: `.<name>.<pid>.tmp`.
TEMP_NAME = re.compile(r"^\.(?P<name>[^/]+)\.(?P<pid>\d+)\.tmp$")


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """durable=False skips the fsyncs: still atomic, for files that mean nothing after a
    machine crash (pids)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not durable:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def json_bytes(value: Any) -> bytes:
    """How pmd's JSON files are written: indented, with a final newline."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"


def atomic_write_json(path: Path, value: Any, durable: bool = True) -> None:
    atomic_write_bytes(path, json_bytes(value), durable=durable)


def remove_stale_temps(folder: Path) -> list[str]:
    """Remove the temp files of pmd's naming in `folder`; the names removed.

    Called at start, before pmd writes anything: every write is synchronous, so no write
    is in flight then, and a temp file of any pid is left over from a pmd that was killed
    mid-write. That includes our own pid: after a re-exec, or as PID 1 of a restarted
    container, the new pmd has the pid of the one that left the file.
    """
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not TEMP_NAME.match(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(entry.name)
    return removed


def read_json(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def store_log() -> logging.Logger:
    """The store's logger. logging is imported at the first line the store logs: a first
    start validates programs.json and spawns before anything is logged (4 ms of imports
    off its path to the first spawn, docs/performance.md)."""
    import logging
    return logging.getLogger("pmd.store")
