"""Health checks of all three kinds (http, tcp, script), restart_on_unhealthy, and
max_memory_restart, with real programs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.helpers import wait_until
from tests.api.process_helpers import ENV, PYTHON, create, free_ports, process, wait_status
from tests.harness import Pmd

FAST = {"interval": 0.2, "timeout": 1, "retries": 2}


@pytest.fixture(scope="module")
def pmd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pmd]:
    base: Path = tmp_path_factory.mktemp("pm2-health")
    with Pmd(base, [], env=ENV) as running:
        yield running


@pytest.fixture(scope="module")
def http(pmd: Pmd):  # noqa: ANN201
    return pmd.http


def health(http, name):  # noqa: ANN001, ANN201
    return process(http, name)["health_check"]


def web_server(port: int) -> list[str]:
    return ["-m", "http.server", "--bind", "127.0.0.1", str(port)]


def test_http_check_turns_healthy_then_unhealthy(http):
    port = free_ports(1)
    create(http, name="web-ok", script=PYTHON, args=web_server(port), health_check={
        "type": "http", "url": f"http://127.0.0.1:{port}/", **FAST})
    wait_until(lambda: health(http, "web-ok")["status"] == "healthy", 10, "healthy")
    view = health(http, "web-ok")
    assert view["enabled"] is True and view["check_type"] == "http"
    assert view["url"] == f"http://127.0.0.1:{port}/"
    assert view["last_check"].endswith("Z") and view["response_time"] >= 0
    assert process(http, "web-ok")["health_status"] == "healthy"
    listed = http.get("/api/processes", params={"name": "web-ok"}).json()
    assert listed[0]["health_status"] == "healthy"
    # the same server, but a check that wants a status it does not get
    port2 = free_ports(1)
    create(http, name="web-404", script=PYTHON, args=web_server(port2), health_check={
        "type": "http", "url": f"http://127.0.0.1:{port2}/missing", "expected_status": 200,
        **FAST})
    wait_until(lambda: health(http, "web-404")["status"] == "unhealthy", 10, "unhealthy")
    assert "404" in health(http, "web-404")["last_error"]
    assert process(http, "web-404")["status"] == "online"  # no restart unless asked


def test_tcp_check_and_restart_on_unhealthy(http):
    listening = free_ports(1)
    create(http, name="tcp-ok", script=PYTHON, args=web_server(listening), health_check={
        "type": "tcp", "port": listening, **FAST})
    wait_until(lambda: health(http, "tcp-ok")["status"] == "healthy", 10, "tcp healthy")
    nobody = free_ports(1)
    create(http, name="tcp-dead", script="sleep 60", health_check={
        "type": "tcp", "port": nobody, "restart_on_unhealthy": True, **FAST})
    restarted = wait_until(lambda: (p := process(http, "tcp-dead"))["restarts"] >= 1 and p,
                           10, "a restart for being unhealthy")
    assert restarted["status"] in ("online", "launching", "stopping")


def test_script_check_follows_the_command(http, tmp_path):
    flag = tmp_path / "ready"
    create(http, name="scripted", script="sleep 60", health_check={
        "type": "script", "command": f"test -f {flag}", **FAST})
    wait_until(lambda: health(http, "scripted")["status"] == "unhealthy", 10, "unhealthy")
    assert "exited with 1" in health(http, "scripted")["last_error"]
    flag.touch()
    wait_until(lambda: health(http, "scripted")["status"] == "healthy", 10, "healthy")
    # a script that hangs is killed at its timeout
    create(http, name="hanging", script="sleep 60", health_check={
        "type": "script", "command": "sleep 30", "interval": 0.2, "timeout": 0.3,
        "retries": 1})
    wait_until(lambda: health(http, "hanging")["status"] == "unhealthy", 10, "timed out")
    assert "no answer within" in health(http, "hanging")["last_error"]


def test_stopped_programs_are_unknown_and_probes_leave_no_zombies(http, pmd):
    create(http, name="stopper", script="sleep 60", health_check={
        "type": "script", "command": "true", **FAST})
    wait_until(lambda: health(http, "stopper")["status"] == "healthy", 10, "healthy")
    http.post("/api/processes/stopper/stop")
    assert health(http, "stopper")["status"] == "unknown"
    zombies = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] == "Z" and int(fields[1]) == pmd.pid:
                zombies.append(entry)
    assert zombies == []


def test_memory_limit_restarts_the_program(http):
    hog = "import time; data = b'x' * (64 << 20); print('allocated', flush=True); time.sleep(60)"
    created = create(http, name="hog", script=PYTHON, args=["-c", hog],
                     max_memory_restart="32M")
    assert created["config"]["max_memory_restart"] == 32 << 20
    restarted = wait_until(lambda: (p := process(http, "hog"))["restarts"] >= 1 and p, 15,
                           "a memory restart")
    assert restarted["restarts"] >= 1
    # a program under its limit is left alone
    create(http, name="slim", script="sleep 60", max_memory_restart="256M")
    wait_status(http, "slim", "online")
    wait_until(lambda: process(http, "hog")["restarts"] >= 2, 15, "a second memory restart")
    assert process(http, "slim")["restarts"] == 0


def test_checks_follow_quick_restarts(http):
    # exits every 0.5 s and is restarted from the exit itself (min_uptime 0): each run
    # must get its own checks, not lose them to the previous run's cleanup
    create(http, name="flapper", script="sh", args=["-c", "sleep 0.5; exit 1"],
           min_uptime=0, health_check={"type": "script", "command": "true",
                                       "interval": 0.1, "retries": 1})
    wait_until(lambda: process(http, "flapper")["restarts"] >= 2, 10, "two restarts")
    wait_until(lambda: (p := process(http, "flapper"))["restarts"] >= 3
               and p["health_status"] == "healthy", 10, "healthy after restarts")
