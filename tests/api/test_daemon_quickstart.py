"""Quick-start (ephemeral) programs: create, list, status, logs, stop; TTL expiry, cleanup
when the program exits, the grace period then 404, never in programs.json, tracked in
ephemeral.json, unique ids under a burst, survival across re-exec, and cleanup of entries
left by an earlier container boot."""

from __future__ import annotations

import calendar
import json
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.api.helpers import API, assert_error, program, wait_until
from tests.harness import Pmd

QS = f"{API}/quick-start"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def quick(http, **fields: object) -> dict:  # noqa: ANN001
    body = {"command": "sleep 30", "user": "root", "startsecs": 0.1, "stop_timeout": 2,
            **fields}
    response = http.post(QS, json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["success"] is True
    return answer


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def tracked(pmd: Pmd) -> set[str]:
    doc = json.loads((pmd.state_dir / "ephemeral.json").read_text())
    return {entry["temporary_id"] for entry in doc["programs"]}


def test_start_without_wait(pmd, http):
    answer = quick(http, startsecs=0.3)
    assert re.fullmatch(r"quick_\d{13}_\d+", answer["temporary_id"])
    assert answer["status"] == "starting"
    assert answer["name"] == "quick_sleep_" + answer["temporary_id"].removeprefix("quick_")
    assert ISO.match(answer["created_at"]) and "expires_at" not in answer
    status = wait_until(lambda: (s := http.get(f"{QS}/{answer['temporary_id']}/status").json())
                        ["status"] == "running" and s, what="running")
    assert status["success"] is True and alive(status["pid"]) and status["uptime"]
    names = {p["name"] for p in http.get(f"{API}/programs").json()["programs"]}
    assert answer["name"] not in names
    stored = json.loads((pmd.config_dir / "programs.json").read_text())["programs"]
    assert answer["name"] not in {s["name"] for s in stored}
    assert answer["temporary_id"] in tracked(pmd)


def test_start_with_wait_and_every_field(pmd, http, uds):
    workdir = pmd.base / "qs-dir"
    workdir.mkdir()
    out = pmd.base / "qs-logs" / "out.log"
    for client in (http, uds):
        name = f"qs-full-{'uds' if client is uds else 'tcp'}"
        answer = quick(
            client, command="sh -c 'echo $GREETING in $(pwd) on $DISPLAY; exec sleep 30'",
            name=name, autorestart="false", directory=str(workdir),
            environment={"GREETING": "hello"}, priority=5, delay_seconds=0,
            stdout_logfile=str(out.with_name(f"{name}.log")), logs_enabled=True,
            log_max_bytes=10000, log_backups=1, ttl=600, wait=True, timeout=5, display=":7",
            terminal_id=3, terminal_interactive=False)
        assert answer["status"] == "running" and answer["name"] == name
        assert alive(answer["pid"]) and answer["uptime"] == "0:00:00"
        assert ISO.match(answer["expires_at"])
        tid = answer["temporary_id"]
        logs = wait_until(lambda c=client, t=tid: c.get(f"{QS}/{t}/logs").json()["logs"],
                          what="logs")
        assert logs == f"hello in {workdir} on :7"
        body = client.get(f"{QS}/{tid}/logs", params={"type": "stdout", "lines": 50}).json()
        assert body == {"success": True, "logs": logs, "type": "stdout", "lines": 50,
                        "log_file": str(out.with_name(f"{name}.log"))}


def test_directory_defaults_to_the_users_home(http):
    answer = quick(http, command="sh -c 'pwd; exec sleep 30'", wait=True)
    tid = answer["temporary_id"]
    assert wait_until(lambda: http.get(f"{QS}/{tid}/logs").json()["logs"]) == "/root"


def test_list_entries(http):
    started = quick(http, ttl=300, wait=True)
    listed = http.get(QS).json()
    assert listed["success"] is True and listed["count"] == len(listed["ephemeral_programs"])
    entry = [e for e in listed["ephemeral_programs"]
             if e["temporary_id"] == started["temporary_id"]][0]
    for key in ("temporary_id", "name", "command", "user", "stdout_logfile", "stderr_logfile",
                "logs_enabled", "log_max_bytes", "log_backups", "status", "pid", "uptime",
                "created_at", "expires_at"):
        assert key in entry, key
    assert entry["status"] == "running" and entry["command"] == "sleep 30"
    assert entry["user"] == "root" and entry["pid"] == started["pid"]


def test_stop_cleans_up_then_404_after_the_grace(pmd, http):
    answer = quick(http, wait=True)
    tid, pid = answer["temporary_id"], answer["pid"]
    stopped = http.post(f"{QS}/{tid}/stop").json()
    assert stopped["success"] is True and stopped["temporary_id"] == tid
    assert stopped["cleaned_up"] is True and stopped["message"]
    assert not alive(pid) and tid not in tracked(pmd)
    status = http.get(f"{QS}/{tid}/status").json()
    assert status["status"] == "stopped" and "pid" not in status
    assert http.post(f"{QS}/{tid}/stop").json()["cleaned_up"] is True  # twice is fine
    wait_until(lambda: http.get(f"{QS}/{tid}/status").status_code == 404, timeout=5,
               what="404 after the grace period")
    assert_error(http.get(f"{QS}/{tid}/logs"), 404, "NOT_FOUND")
    assert_error(http.post(f"{QS}/{tid}/stop"), 404, "NOT_FOUND")
    assert tid not in {e["temporary_id"] for e in http.get(QS).json()["ephemeral_programs"]}


def test_cleanup_when_the_program_exits(pmd, http):
    answer = quick(http, command="sh -c 'echo finished; sleep 0.3'", wait=True)
    tid = answer["temporary_id"]
    status = wait_until(lambda: (s := http.get(f"{QS}/{tid}/status").json())["status"]
                        == "exited" and s, what="exited")
    assert status["exit_code"] == 0 and "finished_at" in status
    assert tid not in tracked(pmd)
    assert http.get(f"{QS}/{tid}/logs").json()["logs"] == "finished"  # during the grace
    wait_until(lambda: http.get(f"{QS}/{tid}/status").status_code == 404, timeout=5,
               what="404 after the grace period")
    assert not (pmd.log_dir / answer["name"]).exists()


def test_ttl_expiry(pmd, http):
    answer = quick(http, ttl=1, wait=True)
    tid, pid = answer["temporary_id"], answer["pid"]
    created = time.mktime(time.strptime(answer["created_at"], "%Y-%m-%dT%H:%M:%SZ"))
    expires = time.mktime(time.strptime(answer["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))
    assert expires - created == 1
    wait_until(lambda: not alive(pid), timeout=4, what="TTL stop")
    status = http.get(f"{QS}/{tid}/status").json()
    assert status["status"] == "stopped" and tid not in tracked(pmd)


def test_wait_timeout_and_failure(http):
    error = assert_error(http.post(QS, json={"command": "sleep 30", "user": "root",
                                             "startsecs": 3, "wait": True, "timeout": 1}),
                         504, "WAIT_TIMEOUT", "timeout")
    assert error["details"]["status"] == "STARTING"
    error = assert_error(http.post(QS, json={"command": "sh -c 'exit 4'", "user": "root",
                                             "startsecs": 0.2, "startretries": 0,
                                             "wait": True, "timeout": 5}),
                         500, "START_FAILED")
    assert error["details"]["status"] == "FATAL" and error["details"]["temporary_id"]


@pytest.mark.parametrize("change, field, says", [
    ({"command": "/nonexistent/binary --flag"}, "command", "command not found"),
    ({"command": "no-such-command-anywhere"}, "command", "command not found"),
    ({"command": "NOT-EXECUTABLE"}, "command", "permission denied"),
    ({"command": "true", "environment": {"PATH": "/nonexistent"}}, "command",
     "command not found"),
    ({"command": "true", "directory": "/nonexistent/dir"}, "directory", "does not exist"),
    ({"command": "true", "directory": "/etc/hostname"}, "directory", "not a directory"),
    ({"command": "${PMD_TEST_UNSET}/true"}, "command", "PMD_TEST_UNSET"),
    ({"command": "${PMD_TEST_UNSET:-/nonexistent}/true"}, "command", "command not found"),
])
@pytest.mark.parametrize("wait", [False, True])
def test_a_command_that_cannot_run_is_the_requests_fault(pmd, http, tmp_path, change, field,
                                                        says, wait):
    """Refused as a 400 naming the field, and nothing created: no entry in the list, in
    ephemeral.json, or in pmd's log folder (docs/daemon-api.md, Errors)."""
    if change["command"] == "NOT-EXECUTABLE":
        plain = tmp_path / "plain.txt"
        plain.write_text("not a program\n")
        plain.chmod(0o644)
        change = {"command": str(plain)}
    before, listed = tracked(pmd), http.get(QS).json()["count"]
    logs_before = sorted(p.name for p in pmd.log_dir.iterdir())
    error = assert_error(http.post(QS, json={"user": "root", "wait": wait, **change}), 400,
                         "VALIDATION_ERROR", field)
    assert says in error["message"] and says in error["details"]["spawn_error"]
    assert http.get(QS).json()["count"] == listed
    assert tracked(pmd) == before
    assert sorted(p.name for p in pmd.log_dir.iterdir()) == logs_before


def test_a_command_found_on_the_programs_own_path_runs(http, tmp_path):
    tool = tmp_path / "bin" / "my-tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\nexec sleep 30\n")
    tool.chmod(0o755)
    answer = quick(http, command="my-tool", environment={"PATH": f"{tool.parent}:/bin"},
                   wait=True)
    assert answer["status"] == "running" and alive(answer["pid"])


def test_the_check_sees_the_command_as_its_start_will(http):
    """${VAR}s are expanded before the command is looked for, as at the start."""
    answer = quick(http, command="${PMD_TEST_UNSET:-/bin}/sleep 30", wait=True)
    assert answer["status"] == "running" and alive(answer["pid"])


def test_temporary_ids_unique_under_a_burst(http):
    def launch(_: int) -> str:
        return quick(http, command="true", startsecs=0)["temporary_id"]

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(launch, range(24)))
    assert len(set(ids)) == 24
    assert all(re.fullmatch(r"quick_\d{13}_\d+", i) for i in ids)


@pytest.mark.parametrize("change, code, field", [
    ({"ttl": 0}, "VALIDATION_ERROR", "ttl"),
    ({"ttl": 86401}, "VALIDATION_ERROR", "ttl"),
    ({"timeout": 0}, "VALIDATION_ERROR", "timeout"),
    ({"timeout": 301}, "VALIDATION_ERROR", "timeout"),
    ({"user": "no-such-user-here"}, "VALIDATION_ERROR", "user"),
    ({"name": 'bad"name'}, "VALIDATION_ERROR", "name"),
    ({"command": "echo a\nb"}, "VALIDATION_ERROR", "command"),
    ({"directory": "tmp"}, "VALIDATION_ERROR", "directory"),
    ({"stdout_logfile": "/etc/quick.log"}, "VALIDATION_ERROR", "stdout_logfile"),
    ({"priority": 1000}, "VALIDATION_ERROR", "priority"),
    ({"delay_seconds": 3601}, "VALIDATION_ERROR", "delay_seconds"),
    ({"log_backups": -1}, "VALIDATION_ERROR", "log_backups"),
    ({"terminal_shell": "ksh"}, "VALIDATION_ERROR", "terminal_shell"),
    ({"autorestart": "never"}, "VALIDATION_ERROR", "autorestart"),
    ({"boot": True}, "UNKNOWN_FIELD", "boot"),
    ({"port_range": {"start": 1, "end": 2}}, "UNKNOWN_FIELD", "port_range"),
    # pmd's readiness knobs, validated as a program's; a quick-start is not in the graph
    ({"readiness": {"log_line": "(oops"}}, "VALIDATION_ERROR", "readiness.log_line"),
    ({"readiness": {"fd": 2}}, "VALIDATION_ERROR", "readiness.fd"),
    ({"backoff": "fibonacci"}, "VALIDATION_ERROR", "backoff"),
    ({"depends_on": ["taken-name"]}, "UNKNOWN_FIELD", "depends_on"),
])
def test_quick_start_rejections_change_nothing(pmd, http, change, code, field):
    # earlier tests' programs may finish meanwhile: nothing may be added, that is all
    state = pmd.state_dir / "ephemeral.json"
    ids = lambda: {e["temporary_id"] for e in http.get(QS).json()["ephemeral_programs"]}  # noqa: E731
    before, before_tracked = ids(), tracked(pmd) if state.exists() else set()
    body = {"command": "sleep 30", "user": "root", **change}
    assert_error(http.post(QS, json=body), 400, code, field)
    assert ids() <= before
    assert (tracked(pmd) if state.exists() else set()) <= before_tracked


def test_quick_start_required_fields_and_duplicates(http):
    assert_error(http.post(QS, json={"command": "sleep 1"}), 400, "MISSING_FIELD", "user")
    assert_error(http.post(QS, json={"user": "root"}), 400, "MISSING_FIELD", "command")
    http.post(f"{API}/programs/add", json=program("taken-name"))
    assert_error(http.post(QS, json={"command": "sleep 1", "user": "root",
                                     "name": "taken-name"}), 409, "ALREADY_EXISTS", "name")
    assert_error(http.get(f"{QS}/quick_0_0/status"), 404, "NOT_FOUND")


def test_survives_reexec_with_the_same_pids(tmp_path):
    with Pmd(tmp_path, [program("kept", boot=True)], pid1=True) as pmd:
        http = pmd.http
        wait_until(lambda: http.get(f"{API}/status/1").json()["status"]["status"] == "RUNNING")
        kept_pid = http.get(f"{API}/status/1").json()["status"]["pid"]
        # a TTL longer than a re-exec takes on a loaded machine, short enough to see it fire
        answer = quick(http, command="sh -c 'echo before; exec sleep 30'", ttl=10, wait=True)
        tid, pid = answer["temporary_id"], answer["pid"]
        pmd_pid = pmd.pid
        (pmd.state_dir / "api.json").unlink()  # the new image binds a new port (port 0)
        assert http.post(f"{API}/reexec").json()["success"] is True
        pmd.wait_ready()
        http = pmd.http
        status = http.get(f"{QS}/{tid}/status").json()
        assert pmd.pid == pmd_pid
        assert status["pid"] == pid and status["status"] == "running"
        assert status["created_at"] == answer["created_at"]
        assert status["expires_at"] == answer["expires_at"]
        assert http.get(f"{API}/status/1").json()["status"]["pid"] == kept_pid
        assert http.get(f"{QS}/{tid}/logs").json()["logs"] == "before"
        # the TTL is still armed after the re-exec
        wait_until(lambda: http.get(f"{QS}/{tid}/status").json()["status"] == "stopped",
                   timeout=20, what="TTL stop after re-exec")


def test_stale_entries_of_an_earlier_boot_are_cleaned(tmp_path):
    stranger = subprocess.Popen(["sleep", "30"])  # alive, but not from "this boot"
    try:
        pmd = Pmd(tmp_path, [])
        name = "quick_sleep_1700000000000_1"
        (pmd.log_dir / name).mkdir(parents=True)
        (pmd.log_dir / name / "stdout.log").write_text("old boot\n")
        (pmd.state_dir / "ephemeral.json").write_text(json.dumps({
            "version": 1,
            "boot": {"boot_id": "another-boot", "init_start": 1},
            "programs": [{
                "temporary_id": "quick_1700000000000_1",
                "spec": {"name": name, "command": "sleep 30", "user": "root"},
                "created_at": 1700000000.0, "expires_at": None,
                "pid": stranger.pid, "pid_start": None,
            }],
        }))
        with pmd:
            http = pmd.http
            assert http.get(QS).json() == {"success": True, "count": 0,
                                           "ephemeral_programs": []}
            assert_error(http.get(f"{QS}/quick_1700000000000_1/status"), 404, "NOT_FOUND")
            assert tracked(pmd) == set()
            assert not (pmd.log_dir / name).exists()
            assert stranger.poll() is None  # pids of another boot are never signalled
    finally:
        stranger.send_signal(signal.SIGKILL)
        stranger.wait()


def test_cleanup_when_pmd_exits(tmp_path):
    pmd = Pmd(tmp_path, [])
    with pmd:
        answer = quick(pmd.http, wait=True)
    assert not alive(answer["pid"])
    with Pmd(tmp_path, []) as again:
        assert again.http.get(QS).json()["count"] == 0
        assert_error(again.http.get(f"{QS}/{answer['temporary_id']}/status"), 404, "NOT_FOUND")


def test_a_finished_programs_name_is_free_again(pmd, http):
    first = quick(http, name="rerun", command="sh -c 'echo first; exec sleep 30'", wait=True)
    assert_error(http.post(QS, json={"command": "sleep 1", "user": "root", "name": "rerun"}),
                 409, "ALREADY_EXISTS", "name")
    http.post(f"{QS}/{first['temporary_id']}/stop")
    second = quick(http, name="rerun", command="sh -c 'echo second; exec sleep 30'", wait=True)
    assert second["temporary_id"] != first["temporary_id"]
    # the first one's purge after its grace period leaves the second one's logs alone
    wait_until(lambda: http.get(f"{QS}/{first['temporary_id']}/status").status_code == 404,
               timeout=5, what="the first one purged")
    assert (pmd.log_dir / "rerun" / "stdout.log").read_text() == "first\nsecond\n"
    assert http.get(f"{QS}/{second['temporary_id']}/logs").json()["logs"] == "first\nsecond"


def test_a_quick_start_shows_its_readiness_its_verdict_and_its_backoff(pmd, http):
    """The fields a quick-start shares with programs show in its entry as in a program's
    status: `ready`/`ready_at` with readiness, `completed` with oneshot, `retry_at` and
    `backoff_reason` while it backs off."""
    mark = pmd.base / "quick-ready.mark"
    ready = quick(http, command=f"sh -c 'sleep 0.5; date +%s.%N > {mark}; echo up; "
                                "exec sleep 30'", startsecs=0, ttl=600,
                  readiness={"log_line": "^up$", "timeout_seconds": 20})
    status = f"{QS}/{ready['temporary_id']}/status"
    entry = wait_until(lambda: (e := http.get(status).json())["status"] == "running"
                       and e.get("ready") and e, what="ready")
    made = float(mark.read_text())
    ready_at = calendar.timegm(time.strptime(entry["ready_at"], "%Y-%m-%dT%H:%M:%SZ"))
    assert made - 1 <= ready_at <= made + 1  # whole seconds: ISO without a fraction
    task = quick(http, command="sh -c 'exit 3'", oneshot=True, exitcodes=[0])
    done = wait_until(lambda: (e := http.get(f"{QS}/{task['temporary_id']}/status").json())
                      ["status"] == "fatal" and e, what="the task's verdict")
    assert (done["completed"], done["exit_code"]) == (False, 3)
    flaky = quick(http, command="sh -c 'exit 1'", startsecs=1, startretries=5,
                  backoff="exponential")
    backing = wait_until(lambda: (e := http.get(f"{QS}/{flaky['temporary_id']}/status")
                                  .json())["status"] == "backoff" and e, what="backoff")
    assert backing["backoff_reason"] == "failed_start" and ISO.match(backing["retry_at"])
    for answer in (ready, task, flaky):
        http.post(f"{QS}/{answer['temporary_id']}/stop")
