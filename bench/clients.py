"""Asking each init for its programs' status the way its own client does, over its Unix
socket: pmd's HTTP API (`pmd list`), supervisord's XML-RPC (`supervisorctl status`).

One connection per request, for both, as a command-line client makes. Only the round trip
(request written, whole answer read) is timed by callers; parsing comes after, so that the
client's own JSON or XML decoding does not count against either init.
"""

from __future__ import annotations

import http.client
import json
import socket
import xmlrpc.client
from pathlib import Path
from typing import Any


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def request(path: Path, method: str, target: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """(HTTP status, body) of one request on a fresh connection."""
    conn = UnixHTTPConnection(path, timeout)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


# ---- pmd ---------------------------------------------------------------------------

PMD_STATUS = "/api/v1/daemon/status"


def pmd_status_raw(sock: Path, timeout: float = 10.0) -> tuple[int, bytes]:
    return request(sock, "GET", PMD_STATUS, timeout=timeout)


def pmd_statuses(raw: bytes) -> list[dict[str, Any]]:
    return list(json.loads(raw)["statuses"])


def pmd_get(sock: Path, target: str) -> Any:
    status, raw = request(sock, "GET", target)
    if status != 200:
        raise RuntimeError(f"pmd: GET {target}: {status} {raw[:200]!r}")
    return json.loads(raw)


def pmd_post(sock: Path, target: str, doc: dict[str, Any] | None = None) -> Any:
    status, raw = request(sock, "POST", target, json.dumps(doc or {}).encode(),
                          {"Content-Type": "application/json"})
    if status != 200:
        raise RuntimeError(f"pmd: POST {target}: {status} {raw[:200]!r}")
    return json.loads(raw)


# ---- supervisord -------------------------------------------------------------------

ALL_INFO = xmlrpc.client.dumps((), "supervisor.getAllProcessInfo").encode()


def supervisord_status_raw(sock: Path, timeout: float = 10.0) -> tuple[int, bytes]:
    return request(sock, "POST", "/RPC2", ALL_INFO, {"Content-Type": "text/xml"},
                   timeout=timeout)


def supervisord_statuses(raw: bytes) -> list[dict[str, Any]]:
    (infos,), _ = xmlrpc.client.loads(raw)
    return list(infos)
