"""Local event hooks against a real pmd: each run gets the event as JSON on stdin and in
PMD_EVENT_* variables, a program's hooks see its events in order, and a slow or failing
hook is killed or counted while the supervisor goes on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.helpers import API, program
from tests.harness import Pmd


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pmd")


@pytest.fixture(scope="module")
def pmd(base: Path) -> Iterator[Pmd]:
    record = (f"cat >> {base}/events.jsonl; "
              f"echo \"$PMD_EVENT $PMD_EVENT_FROM_STATE $PMD_EVENT_EXIT_CODE\" >> {base}/env.txt")
    programs = [
        {**program("svc", "sh -c 'sleep 0.5; exit 3'", startsecs=0.2, autorestart="false",
                   hooks=[{"events": ["STARTING", "RUNNING", "EXITED"], "command": record}]),
         "id": 1, "boot": True},
        {**program("slow", "sleep 60", startsecs=0.1, hooks=[
            {"events": ["RUNNING"], "command": "sleep 30", "timeout_seconds": 1},
            {"events": ["RUNNING"], "command": f"echo second > {base}/second; exit 7"}]),
         "id": 2, "boot": True},
    ]
    with Pmd(base, programs) as running:
        yield running


def hooks(pmd: Pmd) -> dict[str, Any]:
    found: dict[str, Any] = pmd.http.get(f"{API}/health").json()["hooks"]
    return found


def test_hooks_get_each_event_in_order_on_stdin_and_in_variables(pmd: Pmd,
                                                                 base: Path) -> None:
    events = base / "events.jsonl"
    pmd.wait_for(lambda: events.exists() and len(events.read_text().splitlines()) == 3,
                 what="three events recorded")
    got = [json.loads(line) for line in events.read_text().splitlines()]
    assert [(e["program"], e["from_state"], e["to_state"]) for e in got] == [
        ("svc", "STOPPED", "STARTING"), ("svc", "STARTING", "RUNNING"),
        ("svc", "RUNNING", "EXITED")]
    assert got[2]["exit_code"] == 3 and got[0]["pid"] == got[1]["pid"] > 0
    # PMD_EVENT_EXIT_CODE is empty when the event has none (each hook writes env.txt
    # after events.jsonl: the last one may still be on its way)
    env = base / "env.txt"
    pmd.wait_for(lambda: len(env.read_text().splitlines()) == 3, what="three hooks' lines")
    assert env.read_text().splitlines() == [
        "STARTING STOPPED ", "RUNNING STARTING ", "EXITED RUNNING 3"]


def test_a_slow_hook_is_killed_and_a_failing_one_counted(pmd: Pmd, base: Path) -> None:
    counts = pmd.wait_for(lambda: (lambda h: h if h["timeout"] >= 1 and h["failed"] >= 1
                                   else None)(hooks(pmd)), timeout=15,
                          what="the slow hook killed, the failing one counted")
    assert counts["ok"] >= 3 and counts["dropped"] == 0 and counts["error"] == 0
    # the second hook of the same event ran only after the first ended: one at a time
    assert (base / "second").read_text() == "second\n"
    stderr = pmd.stderr_text()
    assert "hook 'sleep 30' ran past 1 s: killed" in stderr
    assert "failed: exit 7" in stderr
    status = pmd.http.get(f"{API}/status/2").json()["status"]
    assert status["status"] == "RUNNING"  # the program never waited for its hooks
    metrics = pmd.http.get("/metrics").text
    assert 'pmd_hook_runs_total{result="timeout"} 1' in metrics


def test_hooks_are_validated_and_returned(pmd: Pmd) -> None:
    http = pmd.http
    for bad in ([{"events": ["EXPLODED"], "command": "true"}],
                [{"events": [], "command": "true"}],
                [{"events": ["RUNNING"], "command": "  "}],
                [{"events": ["RUNNING"], "command": "true", "timeout_seconds": 0}]):
        response = http.post(f"{API}/programs/add", json=program("bad", hooks=bad))
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "VALIDATION_ERROR" and error["field"].startswith("hooks.0.")
    spec = http.get(f"{API}/programs/2").json()["program"]
    assert spec["hooks"][0] == {"events": ["RUNNING"], "command": "sleep 30",
                                "timeout_seconds": 1}
    assert http.get("/api/processes/slow").json()["config"]["hooks"][1]["command"] \
        .endswith("exit 7")
