"""depends_on, readiness, oneshot and backoff through the API: accepted by add, edit and
POST /api/processes, returned by get and list, described in the OpenAPI document; every
rule of the graph refused with a 400 (or a 409) that changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.helpers import API, assert_error, program
from tests.harness import Pmd, can_unshare


@pytest.fixture(scope="module")
def pmd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pmd]:
    """The dependency rules run against pmd as PID 1 of its own PID namespace (the
    issue's setting), where unshare is allowed; else as a subreaper."""
    base: Path = tmp_path_factory.mktemp("pmd-deps")
    with Pmd(base, [], pid1=can_unshare()) as running:
        yield running


def add(http, body):  # noqa: ANN001, ANN201
    response = http.post(f"{API}/programs/add", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def snapshot(pmd, http):  # noqa: ANN001, ANN201
    return (pmd.config_dir / "programs.json").read_bytes(), http.get(f"{API}/programs").json()


NEW_FIELDS = {
    "depends_on": {"dep-db": "healthy", "dep-migrate": "completed_successfully"},
    "readiness": {"log_line": "^listening on \\d+$", "timeout_seconds": 30},
    "backoff": "exponential", "backoff_max_seconds": 120, "startretries": -1,
}


def test_new_fields_are_accepted_and_returned(pmd, http):
    add(http, program("dep-db"))
    add(http, program("dep-migrate", oneshot=True))
    answer = add(http, program("dep-api", **NEW_FIELDS))
    for key, value in NEW_FIELDS.items():
        assert answer["program"][key] == value, key
    got = http.get(f"{API}/programs/{answer['id']}").json()["program"]
    assert got == answer["program"]
    listed = {p["name"]: p for p in http.get(f"{API}/programs").json()["programs"]}
    assert listed["dep-api"]["depends_on"] == NEW_FIELDS["depends_on"]
    migrate = listed["dep-migrate"]
    assert (migrate["oneshot"], migrate["autorestart"], migrate["startsecs"]) == \
        (True, "false", 0)
    # a list means `ready` for each, in an edit too
    edited = http.post(f"{API}/programs/edit/{answer['id']}",
                       json={"depends_on": ["dep-db"], "readiness": {"fd": 5}}).json()
    assert edited["program"]["depends_on"] == {"dep-db": "ready"}
    assert edited["program"]["readiness"] == {"fd": 5}


@pytest.mark.parametrize("change, field, words", [
    ({"depends_on": ["rule-nobody"]}, "depends_on", "'rule-nobody', which is not a program"),
    ({"depends_on": ["rule-new"]}, "depends_on", "itself"),
    ({"depends_on": {"rule-base": "alive"}}, "depends_on.rule-base", "completed"),
    ({"readiness": {"carrier_pigeon": True}}, "readiness.carrier_pigeon", "unknown"),
    ({"readiness": {"log_line": "(oops"}}, "readiness.log_line", "regular expression"),
    ({"readiness": {"fd": 2}}, "readiness.fd", "3"),
    ({"readiness": {"fd": 300}}, "readiness.fd", "255"),
    ({"readiness": {"fd": 4, "notify": True}}, "readiness", "exactly one"),
    # the program's fds 3 and 4 are its sockets (systemd's LISTEN_FDS): pmd's own there
    ({"readiness": {"fd": 4}, "sockets": [{"name": "web", "path": "/run/rule-web.sock"},
                                          {"name": "admin", "path": "/run/rule-admin.sock"}]},
     "readiness.fd", "taken by the sockets (fds 3 to 4): choose 5"),
    ({"readiness": {"log_line": "^up$"}, "logs_enabled": False}, "readiness.log_line",
     "needs logs_enabled"),
    ({"backoff": "fibonacci"}, "backoff", "linear"),
    ({"startretries": -5}, "startretries", "-1"),
])
def test_add_rejections_change_nothing(pmd, http, change, field, words):
    if "rule-base" not in {p["name"] for p in http.get(f"{API}/programs").json()["programs"]}:
        add(http, program("rule-base"))
    before = snapshot(pmd, http)
    error = assert_error(http.post(f"{API}/programs/add", json=program("rule-new", **change)),
                         400, "UNKNOWN_FIELD" if "carrier" in field else "VALIDATION_ERROR",
                         field)
    assert words in error["message"], error
    assert snapshot(pmd, http) == before


def test_a_cycle_is_refused_listing_it_and_changes_nothing(pmd, http):
    a = add(http, program("cyc-a"))["id"]
    add(http, program("cyc-b", depends_on=["cyc-a"]))
    add(http, program("cyc-c", depends_on={"cyc-b": "started"}))
    before = snapshot(pmd, http)
    error = assert_error(http.post(f"{API}/programs/edit/{a}", json={"depends_on": ["cyc-c"]}),
                         400, "VALIDATION_ERROR", "depends_on")
    assert "cyc-a -> cyc-c -> cyc-b -> cyc-a" in error["message"]
    assert snapshot(pmd, http) == before


def test_removing_or_renaming_a_dependency_is_409_listing_the_dependents(pmd, http):
    db = add(http, program("rm-db"))["id"]
    add(http, program("rm-api", depends_on=["rm-db"]))
    add(http, program("rm-jobs", depends_on={"rm-db": "started"}))
    before = snapshot(pmd, http)
    error = assert_error(http.post(f"{API}/programs/remove/{db}"), 409, "HAS_DEPENDENTS")
    assert "rm-api, rm-jobs" in error["message"]
    assert error["details"]["dependents"] == ["rm-api", "rm-jobs"]
    error = assert_error(http.post(f"{API}/programs/edit/{db}", json={"name": "rm-db2"}),
                         409, "HAS_DEPENDENTS")
    assert snapshot(pmd, http) == before


def test_process_api_accepts_the_fields(pmd, http):
    answer = http.post("/api/processes", json={
        "name": "pm2-dep-base", "script": "sleep 30", "max_restarts": -1,
        "backoff": "exponential", "readiness": {"probe": {"type": "tcp", "port": 1}}})
    assert answer.status_code in (200, 201), answer.text
    answer = http.post("/api/processes", json={
        "name": "pm2-dep", "script": "true", "oneshot": True,
        "depends_on": ["pm2-dep-base"]})
    assert answer.status_code in (200, 201), answer.text
    stored = {p["name"]: p for p in http.get(f"{API}/programs").json()["programs"]}
    assert stored["pm2-dep-base"]["startretries"] == -1
    assert stored["pm2-dep-base"]["backoff"] == "exponential"
    assert stored["pm2-dep"]["depends_on"] == {"pm2-dep-base": "ready"}
    assert stored["pm2-dep"]["oneshot"] is True
    before = snapshot(pmd, http)
    for body, field in (({"depends_on": ["nobody-here"]}, "depends_on"),
                        ({"depends_on": ["pm2-bad"]}, "depends_on"),
                        ({"readiness": {"fd": 256}}, "readiness.fd"),
                        ({"readiness": {"log_line": "[x"}}, "readiness.log_line")):
        bad = http.post("/api/processes", json={"name": "pm2-bad", "script": "true", **body})
        assert bad.status_code == 400 and bad.json()["error"]["field"] == field, bad.text
    assert snapshot(pmd, http) == before
    assert "pm2-bad" not in {p["name"] for p in http.get("/api/processes").json()}


def test_openapi_describes_the_fields(http):
    schemas = http.get("/api/openapi.json").json()["components"]["schemas"]
    add_fields = schemas["AddProgramRequest"]["properties"]
    for name in ("depends_on", "readiness", "oneshot", "backoff", "backoff_max_seconds"):
        assert name in add_fields, name
        assert name in schemas["EditProgramRequest"]["properties"], name
    assert "ReadinessSpec" in schemas


def test_oneshot_runs_once_and_reports_its_verdict(http):
    from tests.api.helpers import wait_until

    ok = add(http, program("once-ok", "sh -c 'exit 0'", oneshot=True, boot=True))["id"]
    bad = add(http, program("once-bad", "sh -c 'exit 3'", oneshot=True, boot=True))["id"]
    done = wait_until(lambda: (s := http.get(f"{API}/status/{ok}").json()["status"])
                      ["status"] == "EXITED" and s, what="once-ok exited")
    assert done["completed"] is True and done["exit_code"] == 0 and done["restarts"] == 0
    failed = wait_until(lambda: (s := http.get(f"{API}/status/{bad}").json()["status"])
                        ["status"] == "FATAL" and s, what="once-bad fatal")
    assert failed["completed"] is False and failed["exit_code"] == 3
    pm2 = {p["name"]: p["status"] for p in http.get("/api/processes").json()}
    assert (pm2["once-ok"], pm2["once-bad"]) == ("stopped", "errored")
