"""The state dir's records of running processes, read and written here:

- ephemeral.json: every quick-start program not yet finished, written before its launch is
  answered, so that a pmd started after a crash knows of each one;
- pids.json: every program instance with a process, for a pmd started again after being
  killed as a subreaper (its programs live on and are re-adopted).

Each carries the boot identity it was written under (`boot`); the supervisor decides what
an entry means. A bad entry is the reader's to skip, not a reason to refuse the file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from typing_extensions import TypedDict

from .files import json_bytes, read_json
from .storage import Storage

FORMAT_VERSION = 1


class EphemeralEntry(TypedDict):
    temporary_id: str | None
    spec: dict[str, Any]
    created_at: float | None
    expires_at: float | None
    pid: int | None
    pid_start: int | None


class PidsEntry(TypedDict):
    program: str
    port: int | None
    pid: int
    state: str
    start: int | None
    started_at: float | None
    restarts: int


class Records:
    def __init__(self, state_dir: Path, storage: Storage) -> None:
        self.ephemeral_path = state_dir / "ephemeral.json"
        self.pids_path = state_dir / "pids.json"
        self._storage = storage
        #: The digest of what this pmd last wrote to each file, and whether that write was
        #: synced: the same bytes again are not written again (a shutdown with no
        #: quick-start would otherwise sync an unchanged ephemeral.json, a third of the
        #: stop's time). A digest, not the bytes: pids.json is 190 bytes a program.
        self._written: dict[Path, tuple[bytes, bool]] = {}

    def _write(self, path: Path, value: Any, durable: bool) -> None:
        data = json_bytes(value)
        digest = hashlib.sha256(data).digest()
        last = self._written.get(path)
        if last is not None and last[0] == digest and (last[1] or not durable):
            return
        self._written.pop(path, None)  # unknown until this write has succeeded
        self._storage.write_bytes(path, data, durable=durable)
        self._written[path] = (digest, durable)

    def write_ephemeral(self, boot: dict[str, object], entries: list[EphemeralEntry],
                        durable: bool = True) -> None:
        """Durable by default: a quick-start is answered only once this has returned.
        durable=False (a restart's new pid) is still atomic. Raises StorageError (the dir
        is full, read-only, ...) with the file as it was."""
        self._write(self.ephemeral_path,
                    {"version": FORMAT_VERSION, "boot": boot, "programs": entries}, durable)

    def read_ephemeral(self) -> tuple[object, list[dict[str, Any]]] | None:
        """(boot, entries), or None when there is no file. Raises OSError or ValueError
        when the file cannot be read or is not a record at all."""
        return self._read(self.ephemeral_path, "programs")

    def write_pids(self, boot: dict[str, object], entries: list[PidsEntry]) -> None:
        # Not fsync'd: after a machine crash no process of it is left to re-adopt.
        self._write(self.pids_path, {"boot": boot, "instances": entries}, durable=False)

    def forget_pids(self) -> None:
        """No instance runs: no file says so as well as an empty one, and a removal costs
        the disk nothing, where replacing a file makes ext4 flush the new one's data."""
        self._written.pop(self.pids_path, None)
        self.pids_path.unlink(missing_ok=True)

    def read_pids(self) -> tuple[object, list[dict[str, Any]]] | None:
        return self._read(self.pids_path, "instances")

    @staticmethod
    def _read(path: Path, key: str) -> tuple[object, list[dict[str, Any]]] | None:
        try:
            doc = read_json(path)
        except FileNotFoundError:
            return None
        if not isinstance(doc, dict):
            raise ValueError(f"{path.name} is not a JSON object")
        entries = doc.get(key) or []
        if not isinstance(entries, list):
            raise ValueError(f"{path.name}: '{key}' is not a list")
        return doc.get("boot"), [e for e in entries if isinstance(e, dict)]
