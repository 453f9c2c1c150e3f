"""Helpers of the access tests: identities.json with keys of each level, and a client
that talks to pmd's Unix socket as another uid (a forked child that drops root)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

#: One key per level, as identities.json names them; the admin key comes from --api-key.
KEYS = {"metrics": "metrics-key-8c1f0e5b2a", "read": "read-key-41d7c9e3f0",
        "operate": "operate-key-a95b3e7d12", "admin": "admin-identity-key-5f2c8b"}
ADMIN_KEY = "the-admin-key-e4b9d1c7a3"
LEVELS = ["open", "metrics", "read", "operate", "admin"]
#: A uid with an identity (operate), and one with none.
LOCAL_UID, STRANGER_UID = 1000, 1001


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def identities(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": 1, "identities": {
        f"{level}-caller": {"level": level, "key_sha256": sha256(key)}
        for level, key in KEYS.items()}}
    doc["identities"]["deployer"] = {"level": "operate", "local": {"uid": LOCAL_UID}}
    doc["identities"].update(extra.pop("more", {}))
    doc.update(extra)
    return doc


def write_identities(config_dir: Path, doc: dict[str, Any]) -> None:
    path = config_dir / "identities.json"
    path.write_text(json.dumps(doc))
    path.chmod(0o600)


def shared_base() -> Path:
    """A folder other uids may reach the socket in (pytest's are root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="pmd-access-"))
    base.chmod(0o755)
    return base


def request_as(uid: int, socket_path: Path, method: str, path: str,
               body: dict[str, Any] | None = None, gid: int | None = None
               ) -> tuple[int, Any]:
    """One HTTP request over the Unix socket from a child that runs as `uid`: the status
    and the decoded body; status 0 and the error when it could not connect."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        answer: list[Any] = [0, "the child failed"]
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid if gid is None else gid)
            os.setuid(uid)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(20)
            try:
                sock.connect(str(socket_path))
            except OSError as exc:
                answer = [0, exc.strerror]
            else:
                payload = json.dumps(body).encode() if body is not None else b""
                head = (f"{method} {path} HTTP/1.1\r\nHost: pmd\r\nConnection: close\r\n"
                        f"Content-Type: application/json\r\n"
                        f"Content-Length: {len(payload)}\r\n\r\n").encode()
                sock.sendall(head + payload)
                raw = b""
                while chunk := sock.recv(65536):
                    raw += chunk
                status_line, _, rest = raw.partition(b"\r\n")
                _, _, content = rest.partition(b"\r\n\r\n")
                try:
                    decoded = json.loads(content) if content else None
                except ValueError:  # /metrics: text
                    decoded = content.decode(errors="replace")
                answer = [int(status_line.split()[1]), decoded]
        except Exception as exc:  # noqa: BLE001 - reported, not raised in a fork
            answer = [0, repr(exc)]
        finally:
            os.write(write_end, json.dumps(answer).encode())
            os._exit(0)
    os.close(write_end)
    data = b""
    with os.fdopen(read_end, "rb") as reader:
        data = reader.read()
    os.waitpid(child, 0)
    status, content = json.loads(data)
    return status, content
