"""Helpers shared by the daemon API tests."""

from __future__ import annotations

import time
from typing import Any

API = "/api/v1/daemon"


def program(name: str, command: str = "sleep 30", **fields: object) -> dict[str, object]:
    """An add body for a quick, real program run as root (the user must exist)."""
    return {"name": name, "command": command, "user": "root", "startsecs": 0.1,
            "stop_timeout": 2, **fields}


def assert_error(response, status: int, code: str, field: str | None = None) -> dict:  # noqa: ANN001
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if field is not None:
        assert body["error"]["field"] == field, body
        assert field.split(".")[0] in body["error"]["message"], body
    return body["error"]


def wait_until(predicate: Any, timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
