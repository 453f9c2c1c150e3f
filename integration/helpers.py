"""What integration tests read off the real system: processes, zombies, states."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def proc_state(pid: int) -> str | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split()[0].decode()


def zombies_under(pid: int) -> int:
    return sum(1 for c in children(pid) if proc_state(c) == "Z")


def status(http: httpx.Client, program_id: int) -> dict[str, Any]:
    return http.get(f"/api/v1/daemon/status/{program_id}").json()["status"]


def state(http: httpx.Client, program_id: int) -> str:
    return status(http, program_id)["status"]
