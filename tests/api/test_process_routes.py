"""The PM2-compatible process API over real HTTP: every route, the filters, and the error
codes of pmdaemon-rest-api.txt."""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.helpers import API, wait_until
from tests.api.process_helpers import ENV, create, free_ports, pm2_error, process, wait_status
from tests.harness import Pmd

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
UPTIME = re.compile(r"^(\d+d )?(\d+h )?(\d+m )?\d+s$|^\d+[dhm]( \d+[hm])*$")
LIST_FIELDS = {"id", "name", "status", "pid", "port", "cpu_usage", "memory_usage", "uptime",
               "restarts", "health_status"}


@pytest.fixture(scope="module")
def pmd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pmd]:
    base: Path = tmp_path_factory.mktemp("pm2")
    with Pmd(base, [], env=ENV) as running:
        yield running


@pytest.fixture(scope="module")
def http(pmd: Pmd):  # noqa: ANN201
    return pmd.http


def test_root_describes_the_api(http):
    body = http.get("/").json()
    assert body["name"] == "pmd" and body["status"] == "running" and body["version"]
    assert body["description"]
    assert body["endpoints"] == {"processes": "/api/processes", "system": "/api/system",
                                 "status": "/api/status", "websocket": "/ws",
                                 "daemon": "/api/v1/daemon", "dashboard": "/ui"}


def test_status_route(http):
    body = http.get("/api/status").json()
    assert body["status"] == "ok" and ISO.match(body["timestamp"]) and body["version"]


def test_create_as_the_document_does_then_details(http):
    response = http.post("/api/processes", json={
        "name": "test-app", "script": "sh",
        "args": ["-c", 'echo "listening on $PORT"; exec sleep 60'], "port": "3000"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["success"] is True and body["message"] == "Process started successfully"
    assert body["id"] == body["process"]["id"]
    detail = wait_status(http, "test-app", "online")
    assert LIST_FIELDS <= set(detail) and {"config", "health_check", "logs"} <= set(detail)
    assert detail["port"] == "3000" and detail["pid"] > 0 and detail["restarts"] == 0
    assert isinstance(detail["cpu_usage"], float) and detail["memory_usage"] > 0
    assert UPTIME.match(detail["uptime"]), detail["uptime"]
    config = detail["config"]
    assert config["script"] == "sh" and config["args"][0] == "-c"
    assert config["instances"] == 1 and config["port"] == "3000"
    assert config["env"] == {"PORT": "3000"} and config["max_memory_restart"] is None
    assert detail["health_check"] == {"enabled": False, "check_type": None, "url": None,
                                      "status": "unknown", "last_check": None,
                                      "response_time": None}
    assert detail["logs"]["out_file"].endswith("test-app/stdout.log")
    assert detail["logs"]["error_file"].endswith("test-app/stderr.log")
    # the same process by numeric id, and in the Daemon API (one supervisor, two views)
    assert process(http, detail["id"])["name"] == "test-app"
    daemon = http.get(f"{API}/programs/{detail['id']}").json()
    assert daemon["program"]["name"] == "test-app" if "program" in daemon else daemon
    wait_until(lambda: "listening on 3000" in str(
        http.get("/api/processes/test-app/logs").json()), what="PORT in the program's env")


def test_list_and_filters(http):
    create(http, name="list-a", script="sleep", args=["60"])
    create(http, name="list-b", script="sleep 60")
    wait_status(http, "list-a", "online")
    wait_status(http, "list-b", "online")
    http.post("/api/processes/list-b/stop")
    everything = http.get("/api/processes").json()
    assert isinstance(everything, list)
    names = [p["name"] for p in everything]
    assert {"list-a", "list-b"} <= set(names)
    for item in everything:
        assert set(item) >= LIST_FIELDS
    online = http.get("/api/processes", params={"status": "online"}).json()
    assert "list-a" in [p["name"] for p in online] and "list-b" not in [p["name"] for p in online]
    assert all(p["status"] == "online" for p in online)
    stopped = http.get("/api/processes", params={"status": "stopped"}).json()
    assert [p["name"] for p in stopped] == ["list-b"]
    assert stopped[0]["pid"] is None and stopped[0]["uptime"] == "0s"
    named = http.get("/api/processes", params={"name": "list-a"}).json()
    assert [p["name"] for p in named] == ["list-a"]
    both = http.get("/api/processes", params={"name": "list-a", "status": "stopped"}).json()
    assert both == []
    assert http.get("/api/processes", params={"name": "nobody"}).json() == []


def test_names_with_spaces(http):
    create(http, name="my app", script="sleep 60")
    assert process(http, "my%20app")["name"] == "my app"
    assert http.post("/api/processes/my%20app/stop").status_code == 200


def test_not_found_lists_available_processes(http):
    create(http, name="present", script="sleep 60")
    for method, path in (("GET", "/api/processes/invalid-id"),
                         ("POST", "/api/processes/invalid-id/stop"),
                         ("POST", "/api/processes/invalid-id/restart"),
                         ("POST", "/api/processes/invalid-id/reload"),
                         ("DELETE", "/api/processes/invalid-id"),
                         ("GET", "/api/processes/invalid-id/logs"),
                         ("GET", "/api/processes/99999")):
        error = pm2_error(http.request(method, path), 404, "PROCESS_NOT_FOUND")
        ident = path.split("/")[3]
        assert error["message"] == f"Process with ID '{ident}' not found"
        assert error["details"]["requested_id"] == ident
        assert "present" in error["details"]["available_processes"]


def test_create_errors(http):
    create(http, name="taken", script="sleep 60")
    pm2_error(http.post("/api/processes", json={"name": "taken", "script": "sleep 1"}),
              409, "PROCESS_ALREADY_EXISTS")
    for body in ({"name": "x"},  # no script
                 {"script": "sleep 1"},  # no name
                 {"name": "x", "script": "sleep 1", "port": "abc"},
                 {"name": "x", "script": "sleep 1", "port": "4003-4000"},
                 {"name": "x", "script": "sleep 1", "colour": "blue"},
                 {"name": "x", "script": "sleep 1", "instances": 3},
                 {"name": "x", "script": "sleep 1", "max_memory_restart": "lots"},
                 {"name": "a/b", "script": "sleep 1"},
                 {"name": "x", "script": "sleep 1", "user": "no-such-user-here"},
                 {"name": "x", "script": "sleep 1",
                  "health_check": {"type": "http"}}):
        pm2_error(http.post("/api/processes", json=body), 400, "INVALID_CONFIGURATION")
    pm2_error(http.post("/api/processes", content=b"{not json",
                        headers={"Content-Type": "application/json"}),
              400, "INVALID_CONFIGURATION")
    pm2_error(http.post("/api/processes", json=["a list"]), 400, "INVALID_CONFIGURATION")
    assert http.get("/api/processes", params={"name": "x"}).json() == []


def test_port_range_program_has_one_instance_per_port(http):
    base = free_ports(3)
    port = f"{base}-{base + 2}"
    # each instance gets PORT and `--port N` after its arguments (sh takes them as $0 $1)
    created = create(http, name="ranged", script="sh", args=["-c", "exec sleep 60"],
                     port=port, instances=3,
                     max_memory_restart="512M", env={"MODE": "test"})
    assert created["port"] == port
    detail = wait_until(lambda: (p := process(http, "ranged"))["status"] == "online"
                        and all(i["status"] == "online" for i in p["instances"]) and p,
                        what="three instances online")
    assert [i["port"] for i in detail["instances"]] == [base, base + 1, base + 2]
    assert all(i["status"] == "online" and i["pid"] for i in detail["instances"])
    assert detail["config"]["instances"] == 3
    assert detail["config"]["max_memory_restart"] == 512 << 20
    assert detail["config"]["env"] == {"MODE": "test"}
    assert detail["memory_usage"] > 0 and all(i["memory_usage"] > 0 for i in detail["instances"])


def test_stop_restart_with_port_override_and_delete(http):
    first = create(http, name="cycle", script="sleep 60", port="5100")
    online = wait_status(http, "cycle", "online")
    stopped = http.post("/api/processes/cycle/stop")
    assert stopped.json() == {"success": True, "message": "Process stopped successfully"}
    assert process(http, "cycle")["status"] == "stopped"
    restarted = http.post("/api/processes/cycle/restart")
    assert restarted.json() == {"success": True, "message": "Process restarted successfully"}
    again = wait_status(http, "cycle", "online")
    assert again["pid"] != online["pid"]
    response = http.post(f"/api/processes/{first['id']}/restart", json={"port": "5101"})
    assert response.status_code == 200, response.text
    moved = wait_until(lambda: (p := process(http, "cycle"))["status"] == "online"
                       and p["pid"] != again["pid"] and p, what="restarted on 5101")
    assert moved["port"] == "5101" and moved["config"]["env"]["PORT"] == "5101"
    assert moved["restarts"] >= 1
    pm2_error(http.post("/api/processes/cycle/restart", json={"port": "nope"}),
              400, "INVALID_CONFIGURATION")
    deleted = http.delete("/api/processes/cycle")
    assert deleted.json() == {"success": True, "message": "Process deleted successfully"}
    pm2_error(http.get("/api/processes/cycle"), 404, "PROCESS_NOT_FOUND")
    assert http.get(f"{API}/programs/{first['id']}").status_code == 404


def test_reload_of_a_single_instance_program_restarts_it(http):
    create(http, name="single", script="sleep 60")
    before = wait_status(http, "single", "online")
    response = http.post("/api/processes/single/reload")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["message"] == "Process reloaded successfully"
    assert body["mode"] == "restart"
    after = wait_until(lambda: (p := process(http, "single"))["status"] == "online"
                       and p["pid"] != before["pid"] and p, what="restarted")
    assert after["restarts"] == 1


def test_operation_failed_on_a_disabled_program(http):
    created = create(http, name="disabled", script="sleep 60")
    assert http.post(f"{API}/programs/{created['id']}/disable").status_code == 200
    for action in ("restart", "reload"):
        error = pm2_error(http.post(f"/api/processes/disabled/{action}"), 409,
                          "OPERATION_FAILED")
        assert "disabled" in error["message"]


def test_logs_with_capture_times(http):
    began = time.time()
    create(http, name="talker", script="sh",
           args=["-c", "for i in $(seq 1 30); do echo out-$i; done; "
                       "echo err-1 >&2; echo err-2 >&2; exec sleep 60"])
    wait_until(lambda: http.get("/api/processes/talker/logs").json()["total_lines"] == 32,
               what="32 lines")
    body = http.get("/api/processes/talker/logs").json()
    assert set(body) == {"logs", "total_lines"}
    assert len(body["logs"]) == 20  # the default
    for line in body["logs"]:
        assert set(line) == {"timestamp", "type", "message"}
        assert ISO.match(line["timestamp"])
        # UTC read as UTC: mktime minus timezone is an hour off while summer time is on
        stamp = calendar.timegm(time.strptime(line["timestamp"], "%Y-%m-%dT%H:%M:%SZ"))
        assert began - 1 <= stamp <= time.time() + 1
    assert body["logs"][-1]["message"] in ("err-2", "out-30")
    out = http.get("/api/processes/talker/logs", params={"type": "out", "lines": 5}).json()
    assert [line["message"] for line in out["logs"]] == [f"out-{i}" for i in range(26, 31)]
    assert out["total_lines"] == 30 and {line["type"] for line in out["logs"]} == {"out"}
    err = http.get("/api/processes/talker/logs", params={"type": "error"}).json()
    assert [line["message"] for line in err["logs"]] == ["err-1", "err-2"]
    assert err["total_lines"] == 2 and {line["type"] for line in err["logs"]} == {"error"}
    everything = http.get("/api/processes/talker/logs", params={"lines": 100}).json()
    assert len(everything["logs"]) == 32 and everything["total_lines"] == 32
    for params in ({"lines": "x"}, {"lines": 0}, {"type": "stdout"}):
        pm2_error(http.get("/api/processes/talker/logs", params=params), 400,
                  "INVALID_CONFIGURATION")


def test_logs_reach_into_the_rotated_files(pmd, http):
    # 50 lines of 8 bytes into files of at most 200: out.log.1 holds the first 25
    created = http.post(f"{API}/programs/add", json={
        "name": "rotator", "user": "root", "boot": True, "startsecs": 0.1,
        "log_max_bytes": 200, "log_backups": 3,
        "command": "sh -c 'for i in $(seq 10 59); do echo line-$i; done; exec sleep 60'"})
    assert created.status_code in (200, 201), created.text
    logs = pmd.log_dir / "rotator"
    wait_until(lambda: (logs / "stdout.log").exists()
               and (logs / "stdout.log").read_text().endswith("line-59\n"), what="59 lines")
    assert (logs / "stdout.log.1").exists() and (logs / "stdout.log").stat().st_size <= 200
    body = http.get("/api/processes/rotator/logs", params={"type": "out", "lines": 40}).json()
    assert [line["message"] for line in body["logs"]] == [f"line-{i}" for i in range(20, 60)]
    assert all(ISO.match(line["timestamp"]) for line in body["logs"])  # .1's times kept
    everything = http.get("/api/processes/rotator/logs", params={"lines": 1000}).json()
    assert [line["message"] for line in everything["logs"]] == \
        [f"line-{i}" for i in range(10, 60)]
    # the daemon API's tail reads the same way
    daemon = http.get(f"{API}/programs/{created.json()['id']}/logs",
                      params={"lines": 40}).json()
    assert daemon["logs"].split("\n") == [f"line-{i}" for i in range(20, 60)]

def test_quick_start_programs_by_temporary_id(http):
    started = http.post(f"{API}/quick-start", json={"command": "sleep 60", "user": "root",
                                                   "name": "quick-one", "wait": True})
    assert started.status_code == 200, started.text
    temporary_id = started.json()["temporary_id"]
    detail = process(http, temporary_id)
    assert detail["id"] == temporary_id and detail["name"] == "quick-one"
    assert detail["status"] == "online"
    assert detail["quick_start"]["temporary_id"] == temporary_id
    listed = http.get("/api/processes", params={"name": "quick-one"}).json()
    assert [p["id"] for p in listed] == [temporary_id]
    assert process(http, "quick-one")["id"] == temporary_id
    assert http.post(f"/api/processes/{temporary_id}/stop").status_code == 200
    assert process(http, temporary_id)["status"] == "stopped"
    assert http.delete(f"/api/processes/{temporary_id}").status_code == 200
    pm2_error(http.get(f"/api/processes/{temporary_id}"), 404, "PROCESS_NOT_FOUND")


def test_system_metrics(http):
    body = http.get("/api/system").json()
    assert set(body) == {"hostname", "platform", "arch", "uptime", "cpu", "memory", "disk",
                         "processes"}
    assert body["platform"] == "linux" and body["arch"] and body["hostname"]
    assert re.match(r"^\d+[dhm]( \d+[hm])*$", body["uptime"]), body["uptime"]
    assert body["cpu"]["cores"] >= 1 and len(body["cpu"]["load_average"]) == 3
    assert isinstance(body["cpu"]["usage"], float)
    for section in ("memory", "disk"):
        part = body[section]
        assert set(part) == {"total", "used", "free", "usage_percent"}
        assert part["total"] > 0 and 0 <= part["usage_percent"] <= 100
    counts = body["processes"]
    assert set(counts) == {"total", "online", "stopped", "errored"}
    listed = http.get("/api/processes").json()
    assert counts["total"] == len(listed)
    assert counts["online"] == sum(p["status"] == "online" for p in listed)


def test_errored_status_for_a_program_that_keeps_failing(http):
    create(http, name="crasher", script="sh", args=["-c", "exit 3"], max_restarts=0,
           min_uptime=1)
    detail = wait_status(http, "crasher", "errored")
    assert detail["pid"] is None
    assert [p["name"] for p in http.get("/api/processes", params={"status": "errored"}).json()
            ] == ["crasher"]
