"""Programs on /api/v1/daemon: list with the nine filters, get, add, edit, remove, reset,
validation (every rule rejects with a 400 and changes nothing), auth, TCP and Unix socket."""

from __future__ import annotations

import json
import os

import pytest

from tests.api.helpers import API, assert_error, program, wait_until
from tests.harness import Pmd


def add(http, body):  # noqa: ANN001, ANN201
    response = http.post(f"{API}/programs/add", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def status_of(http, program_id):  # noqa: ANN001, ANN201
    return http.get(f"{API}/status/{program_id}").json()["status"]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_list_is_a_bare_programs_object(pmd, http, uds):
    for client in (http, uds):
        body = client.get(f"{API}/programs").json()
        assert set(body) == {"programs"}
        assert isinstance(body["programs"], list)


def test_add_every_documented_field_then_get(pmd, http):
    sent = {
        "name": "full", "command": "sleep 30", "user": "root", "id": 4242,
        "description": "every field", "enabled": True, "boot": False, "delay_seconds": 7,
        "autorestart": "true", "directory": str(pmd.base), "priority": 12,
        "stdout_logfile": str(pmd.base / "full" / "out.log"),
        "stderr_logfile": str(pmd.base / "full" / "err.log"),
        "logs_enabled": True, "log_max_bytes": 1000, "log_backups": 3,
        "environment": {"A": "1", "B": "two"}, "hoody_kit": False,
        "port_range": {"start": 41000, "end": 41002}, "port_param": "--listen",
        "lazy_load": True, "display": ":1", "terminal_id": 7, "terminal_shell": "bash",
        "terminal_interactive": False,
        "webhooks": {"enabled": True, "urls": ["https://hooks.example.com/x"],
                     "events": ["RUNNING", "FATAL"], "headers": {"X-T": "1"}, "timeout": 5,
                     "retry": 2},
    }
    answer = add(http, sent)
    assert answer["success"] is True and answer["id"] == 4242
    for key, value in sent.items():
        assert answer["program"][key] == value, key
    got = http.get(f"{API}/programs/4242").json()
    assert got["success"] is True and got["program"] == answer["program"]
    stored = json.loads((pmd.config_dir / "programs.json").read_text())["programs"]
    assert any(p["name"] == "full" and p["port_param"] == "--listen" for p in stored)


def test_add_defaults_and_auto_id(pmd, http):
    answer = add(http, {"name": "defaults", "command": "sleep 30", "user": "root"})
    p = answer["program"]
    assert answer["id"] == p["id"] and isinstance(p["id"], int)
    expected = {"enabled": True, "boot": False, "delay_seconds": 0, "autorestart": "unexpected",
                "priority": 999, "logs_enabled": True, "log_max_bytes": 5242880,
                "log_backups": 2, "hoody_kit": False, "lazy_load": False, "environment": {}}
    assert {k: p[k] for k in expected} == expected
    # not a boot program: added, not started
    assert status_of(http, p["id"])["status"] == "STOPPED"


def test_add_enabled_boot_program_starts_and_hoody_kit_is_derived(pmd, http):
    answer = add(http, program("booted", boot=True))
    running = wait_until(lambda: status_of(http, answer["id"]).get("pid"), what="a pid")
    assert alive(running)
    kit = add(http, {"name": "kit", "command": "true", "user": "root",
                     "directory": "/hoody/plugins/thing", "hoody_kit": False})
    assert kit["program"]["hoody_kit"] is True


def test_filters_combine(pmd, http):
    ids = {}
    for name, fields in {
        "f-a": {"enabled": True, "boot": True, "port_range": {"start": 42000, "end": 42009},
                "command": "sleep 30"},
        "f-b": {"enabled": False, "lazy_load": True, "port_range": {"start": 42010,
                                                                    "end": 42019}},
        "f-c": {"enabled": True, "directory": "/hoody/plugins/c"},
    }.items():
        ids[name] = add(http, program(name, **fields))["id"]

    def names(query: str) -> set[str]:
        response = http.get(f"{API}/programs?{query}")
        assert response.status_code == 200, response.text
        return {p["name"] for p in response.json()["programs"]} & set(ids)

    assert names("") == {"f-a", "f-b", "f-c"}
    assert names("enabled=true") == {"f-a", "f-c"}
    assert names("enabled=false") == {"f-b"}
    assert names("boot=true") == {"f-a"}
    assert names("boot=false") == {"f-b", "f-c"}
    assert names("lazy_load=true") == {"f-b"}
    assert names("lazy_load=false") == {"f-a", "f-c"}
    assert names("hoody_kit=true") == {"f-c"}
    assert names("hoody_kit=false") == {"f-a", "f-b"}
    assert names("port=42005") == {"f-a"}
    assert names("port=42010") == {"f-b"}
    assert names("port=42020") == set()
    assert names("port_from=42009&port_to=42010") == {"f-a", "f-b"}
    assert names("port_from=42011&port_to=42100") == {"f-b"}
    assert names("port_from=1&port_to=41999") == set()
    assert names("port_from=42019&port_to=42000") == set()  # reversed: an empty range
    assert names("enabled=true&hoody_kit=false") == {"f-a"}
    assert names("enabled=true&boot=false&hoody_kit=true&lazy_load=false") == {"f-c"}
    assert names("enabled=false&port=42005") == set()
    assert names("lazy_load=true&port_from=42000&port_to=42019&enabled=false") == {"f-b"}

    listed = {p["name"]: p for p in
              http.get(f"{API}/programs?include_status=true").json()["programs"]}
    assert "status" in listed["f-b"] and "stats" not in listed["f-b"]
    assert listed["f-b"]["status"]["type"] == "port-range"
    assert "status" not in http.get(f"{API}/programs").json()["programs"][0]


def test_include_stats_only_for_running_programs(pmd, http):
    busy = add(http, program("stats-tree", "sh -c 'sleep 30 & sleep 30 & wait'", boot=True))
    idle = add(http, program("stats-idle"))
    wait_until(lambda: status_of(http, busy["id"])["status"] == "RUNNING", what="RUNNING")
    wait_until(lambda: len(http.get(f"{API}/status/{busy['id']}?include_stats=true").json()
                           .get("stats", {}).get("processes", [])) == 3, what="3 processes")
    listed = {p["name"]: p for p in
              http.get(f"{API}/programs?include_stats=true").json()["programs"]}
    stats = listed["stats-tree"]["stats"]
    assert listed["stats-tree"]["status"]["status"] == "RUNNING"  # stats imply status
    assert stats["pid"] == listed["stats-tree"]["status"]["pid"]
    assert stats["process_count"] == 3
    assert {p["name"] for p in stats["processes"]} == {"sh", "sleep"}
    assert stats["memory_rss_bytes"] == sum(p["memory_rss_bytes"] for p in stats["processes"])
    assert stats["memory_rss_bytes"] > 0 and stats["cpu_percent"] >= 0
    assert stats["started_at"].endswith("Z")
    assert "stats" not in listed["stats-idle"] and "status" in listed["stats-idle"]
    assert idle["program"]["name"] == "stats-idle"


@pytest.mark.parametrize("query, field", [
    ("enabled=1", "enabled"), ("boot=yes", "boot"), ("hoody_kit=True", "hoody_kit"),
    ("lazy_load=", "lazy_load"), ("include_status=on", "include_status"),
    ("include_stats=0", "include_stats"), ("port=http", "port"), ("port=70000", "port"),
    ("port_from=10", "port_to"), ("port_to=10", "port_from"),
])
def test_bad_query_values_are_400(http, query, field):
    assert_error(http.get(f"{API}/programs?{query}"), 400, "VALIDATION_ERROR", field)


LONG = "x" * 501


@pytest.mark.parametrize("change, code, field", [
    ({"name": 'say "hi"'}, "VALIDATION_ERROR", "name"),
    ({"name": "it's"}, "VALIDATION_ERROR", "name"),
    ({"description": LONG}, "VALIDATION_ERROR", "description"),
    ({"command": "sleep 1\nrm -rf /"}, "VALIDATION_ERROR", "command"),
    ({"command": "sleep 1\rx"}, "VALIDATION_ERROR", "command"),
    ({"command": "sleep 1\x00x"}, "VALIDATION_ERROR", "command"),
    ({"user": "no-such-user-here"}, "VALIDATION_ERROR", "user"),
    ({"user": "Root;"}, "VALIDATION_ERROR", "user"),
    ({"directory": "relative/dir"}, "VALIDATION_ERROR", "directory"),
    ({"stdout_logfile": "out.log"}, "VALIDATION_ERROR", "stdout_logfile"),
    ({"stderr_logfile": "/etc/pmd-test-escape.log"}, "VALIDATION_ERROR", "stderr_logfile"),
    ({"stdout_logfile": "/proc/../etc/shadow"}, "VALIDATION_ERROR", "stdout_logfile"),
    ({"delay_seconds": 3601}, "VALIDATION_ERROR", "delay_seconds"),
    ({"delay_seconds": -1}, "VALIDATION_ERROR", "delay_seconds"),
    ({"priority": 0}, "VALIDATION_ERROR", "priority"),
    ({"priority": 1000}, "VALIDATION_ERROR", "priority"),
    ({"log_backups": 101}, "VALIDATION_ERROR", "log_backups"),
    ({"terminal_id": 65536}, "VALIDATION_ERROR", "terminal_id"),
    ({"terminal_id": 0}, "VALIDATION_ERROR", "terminal_id"),
    ({"terminal_shell": "csh"}, "VALIDATION_ERROR", "terminal_shell"),
    ({"autorestart": "sometimes"}, "VALIDATION_ERROR", "autorestart"),
    ({"enabled": "maybe"}, "VALIDATION_ERROR", "enabled"),
    ({"environment": {"A": 1}}, "VALIDATION_ERROR", "environment.A"),
    ({"port_range": {"start": 5000}}, "MISSING_FIELD", "port_range.end"),
    ({"webhooks": {"timeout": 61}}, "VALIDATION_ERROR", "webhooks.timeout"),
    ({"lazy_load": True, "boot": True}, "VALIDATION_ERROR", None),
    ({"port_param": "--port"}, "VALIDATION_ERROR", None),
    ({"port_range": {"start": 43000, "end": 43001}, "port_param": ""},
     "VALIDATION_ERROR", None),
    ({"surprise": 1}, "UNKNOWN_FIELD", "surprise"),
    ({"user": None}, "VALIDATION_ERROR", "user"),
])
def test_add_rejections_change_nothing(pmd, http, change, code, field):
    if not http.get(f"{API}/programs?port=42005").json()["programs"]:
        add(http, program("overlap-anchor", port_range={"start": 42000, "end": 42009}))
    before_disk = (pmd.config_dir / "programs.json").read_bytes()
    before = http.get(f"{API}/programs").json()
    body = {**program("rejected"), **change}
    error = assert_error(http.post(f"{API}/programs/add", json=body), 400, code, field)
    if field is None:  # a rule between fields: the message still says which
        assert any(word in error["message"] for word in ("lazy_load", "port_param"))
    assert (pmd.config_dir / "programs.json").read_bytes() == before_disk
    assert http.get(f"{API}/programs").json() == before


@pytest.mark.parametrize("missing", ["name", "command", "user"])
def test_add_requires_name_command_user(http, missing):
    body = program("needs-all")
    del body[missing]
    assert_error(http.post(f"{API}/programs/add", json=body), 400, "MISSING_FIELD", missing)


def test_adjacent_port_ranges_are_fine_overlapping_ones_conflict(pmd, http):
    add(http, program("adj-1", port_range={"start": 44000, "end": 44004}))
    add(http, program("adj-2", port_range={"start": 44005, "end": 44009}))
    before = (pmd.config_dir / "programs.json").read_bytes()
    # a clash with what exists, like a taken name: 409, not a malformed request
    assert_error(http.post(f"{API}/programs/add",
                           json=program("adj-3", port_range={"start": 44009, "end": 44010})),
                 409, "PORT_CONFLICT", "port_range")
    assert (pmd.config_dir / "programs.json").read_bytes() == before


def test_log_path_through_a_symlink_is_refused(pmd, http):
    outside = pmd.base.parent / f"{pmd.base.name}-outside"
    outside.mkdir()
    (pmd.base / "sneaky").symlink_to(outside)
    (pmd.base / "victim.log").symlink_to(outside / "victim")
    for path in (pmd.base / "sneaky" / "x.log", pmd.base / "victim.log"):
        assert_error(http.post(f"{API}/programs/add",
                               json=program("sym", stdout_logfile=str(path))),
                     400, "VALIDATION_ERROR", "stdout_logfile")
    assert list(outside.iterdir()) == []


def test_duplicates_are_409(http):
    first = add(http, program("dup"))
    assert_error(http.post(f"{API}/programs/add", json=program("dup")), 409, "ALREADY_EXISTS",
                 "name")
    assert_error(http.post(f"{API}/programs/add", json=program("dup-2", id=first["id"])),
                 409, "ALREADY_EXISTS", "id")


def test_body_shapes(pmd, http):
    before_disk = (pmd.config_dir / "programs.json").read_bytes()
    assert_error(http.post(f"{API}/programs/add", content=b"{not json"), 400, "INVALID_JSON")
    assert_error(http.post(f"{API}/programs/add", json=[1, 2]), 400, "INVALID_BODY")
    assert_error(http.post(f"{API}/programs/add", content=b""), 400, "INVALID_BODY")
    assert_error(http.post(f"{API}/programs/add", content=b"null"), 400, "INVALID_BODY")
    big = program("big", description="x", environment={"PAD": "y" * (1 << 20)})
    response = http.post(f"{API}/programs/add", json=big)
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert (pmd.config_dir / "programs.json").read_bytes() == before_disk


def test_unknown_ids_are_404(http):
    for method, path in [("get", "/programs/999999"), ("post", "/programs/edit/999999"),
                         ("post", "/programs/remove/999999"), ("post", "/programs/999999/start"),
                         ("post", "/programs/999999/stop"), ("post", "/programs/999999/enable"),
                         ("post", "/programs/999999/disable"),
                         ("post", "/programs/999999/restart"), ("get", "/status/999999"),
                         ("get", "/programs/999999/logs")]:
        kwargs = {"json": {}} if method == "post" else {}
        error = assert_error(getattr(http, method)(f"{API}{path}", **kwargs), 404, "NOT_FOUND")
        assert error["field"] == "id" and "999999" in error["message"]


def test_edit_merges_and_replaces_whole_objects(pmd, http):
    created = add(http, program("editme", environment={"KEEP": "no", "OLD": "1"},
                                port_range={"start": 45000, "end": 45001},
                                description="before"))
    pid = created["id"]
    response = http.post(f"{API}/programs/edit/{pid}", json={
        "description": "after", "environment": {"NEW": "2"},
        "port_range": {"start": 45010, "end": 45012}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    p = body["program"]
    assert p["description"] == "after"
    assert p["environment"] == {"NEW": "2"}
    assert p["port_range"] == {"start": 45010, "end": 45012}
    assert p["command"] == "sleep 30" and p["user"] == "root"  # untouched fields stay
    assert http.get(f"{API}/programs/{pid}").json()["program"] == p
    stored = {s["name"]: s for s in
              json.loads((pmd.config_dir / "programs.json").read_text())["programs"]}
    assert stored["editme"]["environment"] == {"NEW": "2"}
    # null puts a field back to its default; the whole GET object can be sent back
    back = http.post(f"{API}/programs/edit/{pid}", json={**p, "description": None}).json()
    assert "description" not in back["program"] and back["program"]["priority"] == 999


def test_edit_rejections_change_nothing(pmd, http):
    target = add(http, program("edit-target"))["id"]
    add(http, program("edit-other"))
    before_disk = (pmd.config_dir / "programs.json").read_bytes()
    before = http.get(f"{API}/programs/{target}").json()
    for change, status, code, field in [
        ({"name": "edit-other"}, 409, "ALREADY_EXISTS", "name"),
        ({"name": "a'b"}, 400, "VALIDATION_ERROR", "name"),
        ({"user": "no-such-user-here"}, 400, "VALIDATION_ERROR", "user"),
        ({"priority": 0}, 400, "VALIDATION_ERROR", "priority"),
        ({"boot": True, "lazy_load": True}, 400, "VALIDATION_ERROR", None),
        ({"stdout_logfile": "/etc/x.log"}, 400, "VALIDATION_ERROR", "stdout_logfile"),
        ({"id": target + 1000}, 400, "VALIDATION_ERROR", "id"),
        ({"bogus": True}, 400, "UNKNOWN_FIELD", "bogus"),
        ({"command": None}, 400, "VALIDATION_ERROR", "command"),
    ]:
        response = http.post(f"{API}/programs/edit/{target}", json=change)
        assert_error(response, status, code, field)
    assert (pmd.config_dir / "programs.json").read_bytes() == before_disk
    assert http.get(f"{API}/programs/{target}").json() == before


@pytest.mark.parametrize("content, code", [
    (b"", "INVALID_BODY"), (b"null", "INVALID_BODY"), (b"[]", "INVALID_BODY"),
    (b"{not json", "INVALID_JSON"), (b"\x00\xff", "INVALID_JSON"),
])
def test_edit_needs_a_json_object(pmd, http, content, code):
    # an edit without a body is a client's mistake, not an edit that changes nothing
    target = add(http, program(f"edit-body-{len(content)}-{code}"))["id"]
    before_disk = (pmd.config_dir / "programs.json").read_bytes()
    response = http.post(f"{API}/programs/edit/{target}", content=content)
    assert_error(response, 400, code)
    assert (pmd.config_dir / "programs.json").read_bytes() == before_disk


@pytest.mark.parametrize("path", ["/programs/add", "/quick-start"])
def test_routes_that_need_a_body_refuse_an_empty_one(http, path):
    assert_error(http.post(f"{API}{path}", content=b""), 400, "INVALID_BODY")


def test_start_stop_restart_take_an_empty_body_as_defaults(http):
    target = add(http, program("empty-body-actions"))["id"]
    for action in ("start", "restart", "stop"):
        response = http.post(f"{API}/programs/{target}/{action}", content=b"")
        assert response.status_code == 200, response.text
    assert_error(http.post(f"{API}/programs/{target}/start", content=b"null"), 400,
                 "INVALID_BODY")


def test_edit_restarts_a_running_program_only_when_what_it_runs_changed(pmd, http):
    pid_of = lambda i: status_of(http, i).get("pid")  # noqa: E731
    created = add(http, program("restarting", "sh -c 'echo $GREETING; exec sleep 30'",
                                boot=True, environment={"GREETING": "one"}))
    i = created["id"]
    first = wait_until(lambda: status_of(http, i)["status"] == "RUNNING" and pid_of(i))
    http.post(f"{API}/programs/edit/{i}", json={"description": "cosmetic"})
    assert pid_of(i) == first
    assert http.post(f"{API}/programs/edit/{i}",
                     json={"environment": {"GREETING": "two"}}).status_code == 200
    second = wait_until(lambda: status_of(http, i)["status"] == "RUNNING" and pid_of(i) != first
                        and pid_of(i), what="a new pid")
    assert second != first and not alive(first)
    log = pmd.log_dir / "restarting" / "stdout.log"
    wait_until(lambda: log.exists() and log.read_text() == "one\ntwo\n", what="both greetings")


def test_remove_stops_then_forgets(pmd, http):
    created = add(http, program("doomed", boot=True))
    i = created["id"]
    pid = wait_until(lambda: status_of(http, i).get("pid"), what="a pid")
    response = http.post(f"{API}/programs/remove/{i}")
    assert response.json() == {"success": True, "id": i}
    assert not alive(pid)
    assert_error(http.get(f"{API}/programs/{i}"), 404, "NOT_FOUND")
    stored = json.loads((pmd.config_dir / "programs.json").read_text())["programs"]
    assert "doomed" not in {s["name"] for s in stored}


def test_reset_back_to_the_default_snapshot(tmp_path):
    defaults = [program("base-boot", boot=True), program("base-idle")]
    with Pmd(tmp_path, defaults, default_programs=defaults) as pmd:
        http = pmd.http
        wait_until(lambda: status_of(http, 1)["status"] == "RUNNING", what="RUNNING")
        first_pid = status_of(http, 1)["pid"]
        extra = add(http, program("extra", boot=True))
        extra_pid = wait_until(lambda: status_of(http, extra["id"]).get("pid"))
        http.post(f"{API}/programs/edit/1", json={"description": "changed"})
        assert http.post(f"{API}/programs/reset").json()["success"] is True
        names = {p["name"]: p for p in http.get(f"{API}/programs").json()["programs"]}
        assert set(names) == {"base-boot", "base-idle"}
        assert "description" not in names["base-boot"]
        assert not alive(extra_pid) and not alive(first_pid)
        wait_until(lambda: status_of(http, 1)["status"] == "RUNNING", what="boot again")
        assert status_of(http, 2)["status"] == "STOPPED"
        stored = json.loads((pmd.config_dir / "programs.json").read_text())["programs"]
        assert {s["name"] for s in stored} == {"base-boot", "base-idle"}


def test_api_key_on_tcp_trust_on_the_unix_socket(tmp_path):
    with Pmd(tmp_path, [program("guarded")], api_key="s3cret-key") as pmd:
        import httpx

        bare = httpx.Client(base_url=pmd.url)
        try:
            error = assert_error(bare.get(f"{API}/programs"), 401, "UNAUTHORIZED")
            assert "key" in error["message"]
            assert_error(bare.get(f"{API}/programs", headers={"X-API-Key": "wrong"}), 401,
                         "UNAUTHORIZED")
            assert_error(bare.post(f"{API}/quick-start", json={}), 401, "UNAUTHORIZED")
            for headers in ({"Authorization": "Bearer s3cret-key"},
                            {"Authorization": "ApiKey s3cret-key"},
                            {"X-API-Key": "s3cret-key"}):
                assert bare.get(f"{API}/programs", headers=headers).status_code == 200
            assert bare.get(f"{API}/health").json()["status"] == "ok"
        finally:
            bare.close()
        assert pmd.uds.get(f"{API}/programs").json()["programs"][0]["name"] == "guarded"
        assert os.stat(pmd.socket).st_mode & 0o777 == 0o600


def test_stats_follow_a_daemonized_child(http):
    # the subshell exits at once: its `sleep 40` is re-parented to pmd (a subreaper), but
    # stays in the program's session, so it still counts as the program's
    created = add(http, program("daemonizer", "sh -c '(sleep 40 &); exec sleep 41'", boot=True))
    i = created["id"]

    def tree() -> list[str]:
        stats = http.get(f"{API}/status/{i}", params={"include_stats": "true"}).json()
        return sorted(p["name"] for p in stats.get("stats", {}).get("processes", []))

    assert wait_until(lambda: tree() == ["sleep", "sleep"], what="both sleeps")
    pids = [p["pid"] for p in http.get(f"{API}/status/{i}?include_stats=true").json()["stats"][
        "processes"]]
    http.post(f"{API}/programs/{i}/stop")
    wait_until(lambda: not any(alive(p) for p in pids), what="the whole group stopped")
