"""A small tmpfs mounted over a test's folder: a disk that really fills up, or is really
read-only. Needs root (or CAP_SYS_ADMIN); tests skip cleanly without it. Every mount is
undone when the context ends, whatever happened."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=10)


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "64k") -> Iterator[Path]:
    """`folder` (created if needed) on a tmpfs of `size`; skips the test if pmd's tests
    may not mount here."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder))
    if done.returncode != 0:
        pytest.skip(f"mount not permitted here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        if _run("umount", str(folder)).returncode != 0:
            _run("umount", "-l", str(folder))  # still busy: detach it now, free it later


def remount(folder: Path, mode: str) -> None:
    """mode: "ro" or "rw"."""
    done = _run("mount", "-o", f"remount,{mode}", str(folder))
    assert done.returncode == 0, done.stderr


def fill(folder: Path, name: str = "filler") -> Path:
    """Write to `folder/name` until the disk is full; the file holds every byte written."""
    path = folder / name
    chunk = b"\0" * 4096
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    return path


def temp_files(*folders: Path) -> list[str]:
    """pmd's temp files (`.<name>.<pid>.tmp`) in these folders."""
    from pmd_init.store.files import TEMP_NAME

    return sorted(f"{folder}/{p.name}" for folder in folders if folder.exists()
                  for p in folder.iterdir() if TEMP_NAME.match(p.name))
