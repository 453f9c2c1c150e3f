"""The last N lines of a log file, read backwards in blocks (never the whole file)."""

from __future__ import annotations

import os
from pathlib import Path

BLOCK = 64 << 10


def tail_lines(path: Path, lines: int, max_bytes: int = 64 << 20) -> list[str]:
    """Up to `lines` last lines of `path`; [] when it does not exist. Reads at most
    `max_bytes` from the end. Bytes that are not UTF-8 are replaced."""
    if lines <= 0:
        return []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return []
    try:
        end = os.fstat(fd).st_size
        chunks: list[bytes] = []
        newlines = 0
        pos = end
        while pos > 0 and newlines <= lines and end - pos < max_bytes:
            size = min(BLOCK, pos)
            pos -= size
            block = os.pread(fd, size, pos)
            chunks.append(block)
            newlines += block.count(b"\n")
        data = b"".join(reversed(chunks))
    finally:
        os.close(fd)
    text = data.decode("utf-8", "replace")
    result = text.split("\n")
    if result and result[-1] == "":
        result.pop()
    return result[-lines:]
