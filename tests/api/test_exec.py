"""POST /api/v1/daemon/exec and its WebSocket, spoken to with a real WebSocket client:
the frames and control messages, bad input, the admin level, and a client that stops
reading (the command pauses, pmd's memory does not grow)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.api.helpers import API, assert_error
from tests.api.process_helpers import ENV
from tests.harness import Pmd

KEY = "exec-api-secret"


@pytest.fixture(scope="module")
def pmd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pmd]:
    base: Path = tmp_path_factory.mktemp("exec-api")
    with Pmd(base, [], env=ENV, api_key=KEY) as running:
        yield running


def open_run(pmd: Pmd, body: dict[str, Any], max_queue: int | None = 16
             ) -> ClientConnection:
    answer = pmd.http.post(f"{API}/exec", json=body)
    assert answer.status_code == 200, answer.text
    created = answer.json()
    assert created["success"] is True and created["id"].startswith("exec_")
    assert created["websocket"] == f"{API}/exec/{created['id']}/ws"
    return connect(f"ws://127.0.0.1:{pmd.port}{created['websocket']}", open_timeout=5,
                   additional_headers={"X-API-Key": KEY}, max_queue=max_queue,
                   max_size=None)


def collect(ws: ClientConnection, timeout: float = 10
            ) -> tuple[dict[int, bytes], list[dict[str, Any]]]:
    """Everything up to the close: data per stream, and the control messages in order."""
    streams: dict[int, bytes] = {}
    controls: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            message = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - the close ends the collection
            return streams, controls
        if isinstance(message, bytes):
            streams[message[0]] = streams.get(message[0], b"") + message[1:]
        else:
            controls.append(json.loads(message))


def test_streams_then_exit_last(pmd: Pmd) -> None:
    with open_run(pmd, {"command": ["sh", "-c", "echo out; echo err >&2; exit 7"]}) as ws:
        streams, controls = collect(ws)
    assert streams == {1: b"out\n", 2: b"err\n"}
    assert controls[0]["type"] == "started" and controls[0]["pid"] > 0
    assert controls[-1] == {"type": "exit", "exit_code": 7, "signal": None, "reason": None}


def test_stdin_and_end_of_input(pmd: Pmd) -> None:
    with open_run(pmd, {"command": ["sh", "-c", "cat; echo done"], "stdin": True}) as ws:
        ws.send(b"\x00hello ")
        ws.send(b"\x00world\n")
        ws.send(json.dumps({"type": "eof"}))
        streams, controls = collect(ws)
    assert streams[1] == b"hello world\ndone\n"
    assert controls[-1]["exit_code"] == 0


def test_shell_and_environment(pmd: Pmd) -> None:
    body = {"command": ['echo "$0 $1 $WHO"', "zero", "one"], "shell": True,
            "environment": {"WHO": "me"}}
    with open_run(pmd, body) as ws:
        streams, controls = collect(ws)
    assert streams[1] == b"zero one me\n" and controls[-1]["exit_code"] == 0


def test_signal_and_resize_control_messages(pmd: Pmd) -> None:
    script = ('trap "stty size" WINCH; trap "echo bye; exit 9" USR1; stty size; '
              "echo ready; while :; do sleep 0.05; done")
    body = {"command": ["sh", "-c", script], "terminal": True, "rows": 30, "cols": 100}
    with open_run(pmd, body) as ws:
        seen = b""
        while b"ready" not in seen:
            message = ws.recv(timeout=10)
            if isinstance(message, bytes):
                seen += message[1:]
        assert b"30 100" in seen
        ws.send(json.dumps({"type": "resize", "rows": 50, "cols": 132}))
        while b"50 132" not in seen:
            message = ws.recv(timeout=10)
            if isinstance(message, bytes):
                seen += message[1:]
        ws.send(json.dumps({"type": "signal", "signal": "USR1"}))
        streams, controls = collect(ws)
    assert b"bye" in streams[1]
    assert controls[-1]["exit_code"] == 9


def test_bad_control_messages_are_answered_and_change_nothing(pmd: Pmd) -> None:
    body = {"command": ["sh", "-c", "read line; echo got $line"], "stdin": True}
    with open_run(pmd, body) as ws:
        for bad in ("not json", "[1]", '{"type": "nope"}', '{"type": "signal", '
                    '"signal": "SIGNOPE"}', '{"type": "resize", "rows": 0, "cols": 5}'):
            ws.send(bad)
        ws.send(b"\x07stray")
        ws.send(b"\x00fine\n")
        streams, controls = collect(ws)
    errors = [c for c in controls if c["type"] == "error"]
    assert [e["code"] for e in errors] == ["BAD_MESSAGE"] * 5 + ["BAD_STREAM"]
    assert "resize" in errors[4]["message"] and "signal" in errors[3]["message"]
    assert streams[1] == b"got fine\n" and controls[-1]["exit_code"] == 0


@pytest.mark.parametrize(("body", "code", "field"), [
    ({}, "MISSING_FIELD", "command"),
    ({"command": []}, "VALIDATION_ERROR", "command"),
    ({"command": "ls"}, "VALIDATION_ERROR", "command"),
    ({"command": ["a\x00b"]}, "VALIDATION_ERROR", "command.0"),
    ({"command": ["true"], "user": "no-such-user-x"}, "VALIDATION_ERROR", "user"),
    ({"command": ["true"], "directory": "relative"}, "VALIDATION_ERROR", "directory"),
    ({"command": ["true"], "directory": "/no/such/dir"}, "VALIDATION_ERROR", "directory"),
    ({"command": ["true"], "timeout": 0}, "VALIDATION_ERROR", "timeout"),
    ({"command": ["true"], "rows": 0}, "VALIDATION_ERROR", "rows"),
    ({"command": ["true"], "environment": {"A=B": "x"}}, "VALIDATION_ERROR", "environment"),
    ({"command": ["true"], "tty": True}, "UNKNOWN_FIELD", "tty"),
])
def test_bad_requests(pmd: Pmd, body: dict[str, Any], code: str, field: str) -> None:
    assert_error(pmd.http.post(f"{API}/exec", json=body), 400, code, field)


def test_unknown_run_and_second_client(pmd: Pmd) -> None:
    with connect(f"ws://127.0.0.1:{pmd.port}{API}/exec/exec_1_1/ws",
                 additional_headers={"X-API-Key": KEY}) as ws:
        streams, controls = collect(ws)
    assert controls == [{"type": "error", "code": "NOT_FOUND",
                         "message": "no exec run 'exec_1_1'"}]
    created = pmd.http.post(f"{API}/exec", json={"command": ["sleep", "5"]}).json()
    url = f"ws://127.0.0.1:{pmd.port}{created['websocket']}"
    with connect(url, additional_headers={"X-API-Key": KEY}) as first:
        assert json.loads(first.recv(timeout=5))["type"] == "started"
        with connect(url, additional_headers={"X-API-Key": KEY}) as second:
            _, controls = collect(second)
        assert controls[0]["code"] == "OPERATION_REFUSED"


def test_the_key_is_needed_over_tcp(pmd: Pmd) -> None:
    anonymous = httpx.Client(base_url=pmd.url)
    assert_error(anonymous.post(f"{API}/exec", json={"command": ["true"]}), 401,
                 "UNAUTHORIZED")
    assert pmd.uds.post(f"{API}/exec", json={"command": ["true"]}).status_code == 200


def test_without_a_key_exec_is_refused_over_tcp(tmp_path: Path) -> None:
    with Pmd(tmp_path, [], env=ENV) as open_pmd:
        refused = open_pmd.http.post(f"{API}/exec", json={"command": ["true"]})
        assert_error(refused, 403, "FORBIDDEN")
        assert "API key" in refused.json()["error"]["message"]
        assert open_pmd.http.get(f"{API}/quick-start").status_code == 200  # the rest: open
        assert open_pmd.uds.post(f"{API}/exec", json={"command": ["true"]}).status_code == 200


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_client_that_stops_reading_pauses_the_command(pmd: Pmd, tmp_path: Path) -> None:
    done = tmp_path / "done"
    total = 100 << 20
    script = f"head -c {total} /dev/zero; date +%s.%N > {done}"
    ws = open_run(pmd, {"command": ["sh", "-c", script]}, max_queue=1)
    with ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "started"
        before = rss(pmd.pid)
        time.sleep(2.0)  # the command writes as fast as it can while nobody reads
        assert not done.exists()  # it is held back by the full pipe
        paused = rss(pmd.pid)
        assert paused - before < 4 << 20, (before, paused)
        received = 0
        exit_message = None
        while exit_message is None:
            message = ws.recv(timeout=30)
            if isinstance(message, bytes):
                received += len(message) - 1
            else:
                exit_message = json.loads(message)
    assert received == total and exit_message["exit_code"] == 0
    assert done.exists()
    assert rss(pmd.pid) - before < 4 << 20
