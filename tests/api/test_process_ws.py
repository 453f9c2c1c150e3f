"""/ws: a snapshot on connect, a message per state change, health changes and periodic
metrics while connected."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.api.helpers import API, program
from tests.api.process_helpers import ENV, create, wait_status
from tests.harness import Pmd


@pytest.fixture(scope="module")
def pmd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pmd]:
    base: Path = tmp_path_factory.mktemp("pm2-ws")
    with Pmd(base, [], env=ENV) as running:
        yield running


def receive_until(ws: ClientConnection, predicate: Any, timeout: float = 10.0
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        seen.append(message)
        if predicate(message):
            return message, seen
    raise AssertionError(f"no matching message in {seen}")


def test_snapshot_then_state_changes_then_metrics(pmd):
    http = pmd.http
    create(http, name="before", script="sleep 60")
    wait_status(http, "before", "online")
    with connect(f"ws://127.0.0.1:{pmd.port}/ws?interval=0.3", open_timeout=5) as ws:
        snapshot = json.loads(ws.recv(timeout=5))
        assert snapshot["type"] == "snapshot" and snapshot["time"].endswith("Z")
        (entry,) = [p for p in snapshot["processes"] if p["name"] == "before"]
        assert entry["status"] == "online" and entry["pid"] > 0
        created = create(http, name="watched", script="sleep 60", min_uptime=0.3)
        starting, _ = receive_until(ws, lambda m: m["type"] == "state_change"
                                    and m["name"] == "watched" and m["to"] == "STARTING")
        assert starting["from"] == "STOPPED" and starting["status"] == "launching"
        assert starting["id"] == created["id"] and starting["time"].endswith("Z")
        running, _ = receive_until(ws, lambda m: m.get("name") == "watched"
                                   and m.get("to") == "RUNNING")
        assert running["from"] == "STARTING" and running["status"] == "online"
        assert running["pid"] > 0 and running["exit_code"] is None
        assert running["process_status"] == "online"
        http.post("/api/processes/watched/stop")
        stopped, _ = receive_until(ws, lambda m: m.get("name") == "watched"
                                   and m.get("to") == "STOPPED")
        assert stopped["exit_code"] == 143 and stopped["status"] == "stopped"
        metrics, _ = receive_until(ws, lambda m: m["type"] == "metrics", timeout=5)
        names = {p["name"]: p for p in metrics["processes"]}
        assert names["before"]["status"] == "online" and names["before"]["memory_usage"] > 0
        assert names["watched"]["memory_usage"] == 0
        assert len(metrics["system"]["load_average"]) == 3


def test_health_changes_are_streamed(pmd):
    http = pmd.http
    with connect(f"ws://127.0.0.1:{pmd.port}/ws", open_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "snapshot"
        create(http, name="checked", script="sleep 60", health_check={
            "type": "script", "command": "true", "interval": 0.2, "retries": 1})
        health, _ = receive_until(ws, lambda m: m["type"] == "health" and m["to"] == "healthy")
        assert health["name"] == "checked" and health["from"] == "unknown"


def test_listeners_go_away_with_their_connection(pmd):
    http = pmd.http
    for _ in range(3):
        with connect(f"ws://127.0.0.1:{pmd.port}/ws", open_timeout=5) as ws:
            ws.recv(timeout=5)
    create(http, name="after-close", script="sleep 60")
    wait_status(http, "after-close", "online")  # publishing to closed sockets breaks nothing
    assert http.get("/api/processes").status_code == 200
    assert "subscriber failed" not in pmd.stderr_text()
    assert "Traceback" not in pmd.stderr_text()


def test_ws_and_the_list_agree_on_expected_exits(pmd):
    """One rule for both: a code in exitcodes is a clean stop, a death by signal never is
    (137 is listed, but it is SIGKILL's 128+9)."""
    http = pmd.http
    commands = {"exits-listed": "sh -c 'sleep 0.5; exit 3'",
                "killed-listed": "sh -c 'sleep 0.5; kill -KILL $$$$'"}
    with connect(f"ws://127.0.0.1:{pmd.port}/ws", open_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "snapshot"
        for name, command in commands.items():
            response = http.post(f"{API}/programs/add", json=program(
                name, command, boot=True, autorestart="false", exitcodes=[0, 3, 137],
                startsecs=0.2))
            assert response.status_code in (200, 201), response.text
        exits = {}
        while len(exits) < len(commands):
            message, _ = receive_until(ws, lambda m: m.get("to") == "EXITED")
            exits[message["name"]] = message
    assert exits["exits-listed"]["exit_code"] == 3
    assert exits["killed-listed"]["exit_code"] == 137
    listed = {p["name"]: p for p in http.get("/api/processes").json()}
    assert exits["exits-listed"]["status"] == listed["exits-listed"]["status"] == "stopped"
    assert exits["killed-listed"]["status"] == listed["killed-listed"]["status"] == "errored"
    assert exits["exits-listed"]["process_status"] == "stopped"


def test_a_start_held_by_the_start_rate_limit_is_streamed_with_its_reason(pmd):
    http = pmd.http
    with connect(f"ws://127.0.0.1:{pmd.port}/ws", open_timeout=5) as ws:
        json.loads(ws.recv(timeout=5))  # the snapshot
        create(http, name="looper", script="sh -c 'exit 1'", min_uptime=0,
               autorestart=True)
        held, seen = receive_until(ws, lambda m: m.get("name") == "looper"
                                   and m.get("to") == "BACKOFF")
        assert held["from"] == "EXITED" and held["reason"] == "start_limit"
        assert held["retry_at"].endswith("Z") and held["retry_at"] >= held["time"]
        starts = [m for m in seen if m.get("name") == "looper" and m.get("to") == "STARTING"]
        assert len(starts) == 5  # systemd's default burst, then the wait
    http.delete("/api/processes/looper")
