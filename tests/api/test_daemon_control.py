"""Control and status: start (wait, timeout, if_not_running, port), stop (port, all),
enable, disable, restart, /status and /status/{id} (port-range form), /health."""

from __future__ import annotations

import pytest

from tests.api.helpers import API, assert_error, program, wait_until


def add(http, body) -> int:  # noqa: ANN001
    response = http.post(f"{API}/programs/add", json=body)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def status_of(http, program_id, **params):  # noqa: ANN001, ANN003, ANN201
    return http.get(f"{API}/status/{program_id}", params=params).json()["status"]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_start_with_wait_reaches_running(http, uds):
    for client, name in ((http, "waited-tcp"), (uds, "waited-uds")):
        i = add(client, program(name, startsecs=0.2))
        response = client.post(f"{API}/programs/{i}/start", json={"wait": True, "timeout": 5})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["success"] is True and body["already_running"] is False
        inst = body["instance"]
        assert inst["status"] == "RUNNING" and inst["instance_name"] == name
        assert inst["port"] is None and alive(inst["pid"]) and inst["uptime"] == "0:00:00"


def test_start_without_wait_answers_at_once(http):
    i = add(http, program("nowait", startsecs=0.3))
    inst = http.post(f"{API}/programs/{i}/start").json()["instance"]
    assert inst["status"] == "STARTING"
    wait_until(lambda: status_of(http, i)["status"] == "RUNNING", what="RUNNING")


def test_start_twice_and_if_not_running(http):
    i = add(http, program("twice"))
    first = http.post(f"{API}/programs/{i}/start", json={"wait": True}).json()["instance"]
    error = assert_error(http.post(f"{API}/programs/{i}/start", json={}), 400,
                         "ALREADY_RUNNING")
    assert error["details"]["instance"]["pid"] == first["pid"]
    again = http.post(f"{API}/programs/{i}/start", json={"if_not_running": True}).json()
    assert again["success"] is True and again["already_running"] is True
    assert again["instance"]["pid"] == first["pid"]


def test_wait_reports_a_program_that_cannot_start(http):
    i = add(http, program("broken", "sh -c 'exit 3'", startretries=0, startsecs=0.2))
    error = assert_error(http.post(f"{API}/programs/{i}/start", json={"wait": True,
                                                                      "timeout": 5}),
                         500, "START_FAILED")
    assert error["details"]["status"] == "FATAL" and error["details"]["exit_code"] == 3
    i = add(http, program("missing-binary", "/nonexistent/binary", startretries=0))
    error = assert_error(http.post(f"{API}/programs/{i}/start", json={"wait": True}), 500,
                         "START_FAILED")
    assert error["details"]["spawn_error"]


def test_wait_timeout(http):
    i = add(http, program("slowstart", startsecs=3))
    error = assert_error(http.post(f"{API}/programs/{i}/start",
                                   json={"wait": True, "timeout": 1}), 504, "WAIT_TIMEOUT",
                         "timeout")
    assert error["details"]["status"] == "STARTING"
    http.post(f"{API}/programs/{i}/stop")


@pytest.mark.parametrize("body, code, field", [
    ({"timeout": 0}, "VALIDATION_ERROR", "timeout"),
    ({"timeout": 301}, "VALIDATION_ERROR", "timeout"),
    ({"wait": "soon"}, "VALIDATION_ERROR", "wait"),
    ({"port": 0}, "VALIDATION_ERROR", "port"),
    ({"port": 1234}, "VALIDATION_ERROR", "port"),
    ({"nope": 1}, "UNKNOWN_FIELD", "nope"),
])
def test_start_rejections(http, body, code, field):
    i = add(http, program(f"startbad-{len(http.get(f'{API}/programs').json()['programs'])}"))
    assert_error(http.post(f"{API}/programs/{i}/start", json=body), 400, code, field)
    assert status_of(http, i)["status"] == "STOPPED"


def test_disabled_program_cannot_start(http):
    i = add(http, program("off", enabled=False))
    assert_error(http.post(f"{API}/programs/{i}/start"), 409, "PROGRAM_DISABLED", "enabled")
    assert_error(http.post(f"{API}/programs/{i}/restart"), 409, "PROGRAM_DISABLED", "enabled")
    assert status_of(http, i)["status"] == "STOPPED"


def test_stop_waits_until_stopped(http):
    i = add(http, program("stopme"))
    pid = http.post(f"{API}/programs/{i}/start", json={"wait": True}).json()["instance"]["pid"]
    body = http.post(f"{API}/programs/{i}/stop").json()
    assert body["success"] is True and body["stopped"] == ["stopme"]
    assert body["status"]["status"] == "STOPPED" and not alive(pid)
    # stopping a stopped program is not an error
    assert http.post(f"{API}/programs/{i}/stop").json() == {
        "success": True, "stopped": [], "status": body["status"]}


def test_stop_escalates_to_sigkill(http):
    i = add(http, program("stubborn", "sh -c 'trap \"\" TERM; while :; do sleep 0.1; done'",
                          stop_timeout=0.3))
    pid = http.post(f"{API}/programs/{i}/start", json={"wait": True}).json()["instance"]["pid"]
    body = http.post(f"{API}/programs/{i}/stop").json()
    assert body["status"]["status"] == "STOPPED" and not alive(pid)


def test_restart_gives_a_new_process(http):
    i = add(http, program("again"))
    old = http.post(f"{API}/programs/{i}/start", json={"wait": True}).json()["instance"]["pid"]
    body = http.post(f"{API}/programs/{i}/restart", json={"wait": True, "timeout": 5}).json()
    assert body["success"] is True
    new = body["instances"][0]
    assert new["status"] == "RUNNING" and new["pid"] != old and not alive(old)
    # restart of a stopped program starts it
    http.post(f"{API}/programs/{i}/stop")
    body = http.post(f"{API}/programs/{i}/restart", json={"wait": True}).json()
    assert body["instances"][0]["status"] == "RUNNING"


def test_enable_and_disable(pmd, http):
    i = add(http, program("toggled", boot=True))
    pid = wait_until(lambda: status_of(http, i).get("pid"), what="a pid")
    body = http.post(f"{API}/programs/{i}/disable").json()
    assert body["success"] is True and body["enabled"] is False
    assert body["status"]["status"] == "STOPPED" and not alive(pid)
    assert http.get(f"{API}/programs/{i}").json()["program"]["enabled"] is False
    assert '"enabled": false' in (pmd.config_dir / "programs.json").read_text().replace(
        '"enabled":false', '"enabled": false')
    body = http.post(f"{API}/programs/{i}/enable").json()
    assert body["success"] is True and body["enabled"] is True
    wait_until(lambda: status_of(http, i)["status"] == "RUNNING", what="boot program back")
    statuses = http.get(f"{API}/status").json()
    assert statuses["success"] is True
    mine = [s for s in statuses["statuses"] if s["id"] == i][0]
    assert mine["name"] == "toggled" and mine["enabled"] is True
    assert mine["status"]["status"] == "RUNNING" and mine["status"]["id"] == i


def test_port_range_program(http):
    i = add(http, program("ranged", "python3 -c 'import sys, time; print(sys.argv); "
                          "time.sleep(30)'", port_range={"start": 46000, "end": 46002},
                          port_param="--bind"))
    assert_error(http.post(f"{API}/programs/{i}/start", json={}), 400, "VALIDATION_ERROR",
                 "port")
    assert_error(http.post(f"{API}/programs/{i}/start", json={"port": 46003}), 400,
                 "VALIDATION_ERROR", "port")
    for port in (46000, 46001):
        inst = http.post(f"{API}/programs/{i}/start", json={"port": port, "wait": True}).json()[
            "instance"]
        assert inst["port"] == port and inst["instance_name"] == f"ranged:{port}"
        assert inst["status"] == "RUNNING"
    status = status_of(http, i)
    assert status["type"] == "port-range" and status["status"] == "RUNNING"
    assert status["running_instances"] == 2 and status["total_instances"] == 3
    assert [x["port"] for x in status["instances"]] == [46000, 46001, 46002]
    one = http.get(f"{API}/status/{i}", params={"port": 46001, "include_stats": "true"}).json()
    assert one["status"]["port"] == 46001 and one["status"]["status"] == "RUNNING"
    assert one["stats"]["pid"] == one["status"]["pid"]
    with_stats = status_of(http, i, include_stats="true")
    assert "stats" in with_stats["instances"][0] and "stats" not in with_stats["instances"][2]
    logs = http.get(f"{API}/programs/{i}/logs", params={"port": 46001}).json()
    wait_until(lambda: "--bind" in http.get(f"{API}/programs/{i}/logs",
                                            params={"port": 46001}).json()["logs"])
    assert logs["log_file"].endswith("46001/stdout.log")
    assert_error(http.get(f"{API}/programs/{i}/logs"), 400, "VALIDATION_ERROR", "port")
    body = http.post(f"{API}/programs/{i}/stop", json={"port": 46000}).json()
    assert body["stopped"] == ["ranged:46000"]
    assert status_of(http, i)["running_instances"] == 1
    assert_error(http.post(f"{API}/programs/{i}/stop", json={"port": 46001, "all": True}), 400,
                 "VALIDATION_ERROR", "all")
    body = http.post(f"{API}/programs/{i}/stop", json={"all": True}).json()
    assert body["stopped"] == ["ranged:46001"]
    assert status_of(http, i)["running_instances"] == 0


def test_health_and_status_shapes(pmd, http):
    health = http.get(f"{API}/health").json()
    assert health["status"] == "ok" and health["pid"] == pmd.pid
    assert health["memory"]["rss"] > 0 and health["fds"] > 0 and health["started"]
    assert_error(http.get(f"{API}/status/1", params={"include_stats": "yes"}), 400,
                 "VALIDATION_ERROR", "include_stats")
