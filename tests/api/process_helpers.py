"""Helpers shared by the process API tests (the PM2-compatible family)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

from tests.api.helpers import wait_until

#: No rate limit (tests poll), quick memory sampling, short quick-start grace.
ENV = {"PMD_RATE_LIMIT": "0", "PMD_RATE_BURST": "0", "PMD_MEMORY_INTERVAL": "0.2",
       "PMD_EPHEMERAL_GRACE": "1.5"}

PYTHON = sys.executable
REUSEPORT_SERVER = str(Path(__file__).with_name("reuseport_http.py"))


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports on 127.0.0.1."""
    for _ in range(200):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
        probe.close()
        if base + count > 65535:
            continue
        held = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                held.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no run of free ports")


def process(http: Any, ident: str | int) -> dict[str, Any]:
    response = http.get(f"/api/processes/{ident}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_status(http: Any, ident: str | int, status: str, timeout: float = 10.0
                ) -> dict[str, Any]:
    return wait_until(lambda: (p := process(http, ident))["status"] == status and p,
                      timeout, f"{ident} {status}")


def create(http: Any, **body: Any) -> dict[str, Any]:
    body.setdefault("min_uptime", 0.2)
    body.setdefault("kill_timeout", 2)
    response = http.post("/api/processes", json=body)
    assert response.status_code == 201, response.text
    return response.json()["process"]


def pm2_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["error"]["code"] == code, body
    assert body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    return body["error"]
