"""Boot order, restart policy, supervisord's startsecs/backoff/FATAL, spawn errors."""

from __future__ import annotations

import json

import pytest

from integration.helpers import state, status
from tests.harness import Pmd, can_unshare

pytestmark = pytest.mark.skipif(not can_unshare(), reason="needs unshare --pid (root)")


def test_boot_follows_priority_and_delays_do_not_hold_others(tmp_path):
    record = tmp_path / "starts"

    # Each program stamps its own start with `date` rather than a Python start-up, whose
    # cost on a cold machine, with pmd importing its HTTP stack alongside, would blur the
    # interval measured below.
    def cmd(name: str) -> str:
        return f"sh -c 'echo {name} $(date +%s.%N) >> {record}; exec sleep 100'"

    programs = [
        {"name": "late", "command": cmd("late"), "boot": True, "priority": 1,
         "delay_seconds": 1},
        {"name": "c", "command": cmd("c"), "boot": True, "priority": 300},
        {"name": "a", "command": cmd("a"), "boot": True, "priority": 100},
        {"name": "b", "command": cmd("b"), "boot": True, "priority": 200},
        {"name": "never", "command": cmd("never"), "boot": False},
        {"name": "disabled", "command": cmd("disabled"), "boot": True, "enabled": False},
        {"name": "lazy", "command": cmd("lazy"), "lazy_load": True},
    ]
    with Pmd(tmp_path, programs, pid1=True) as pmd:
        pmd.wait_for(lambda: record.exists() and len(record.read_text().splitlines()) >= 4,
                     what="four starts")
        # a program may stamp its start before pmd has logged the spawn
        log = pmd.wait_for(lambda: (text := pmd.stderr_text()).count("STOPPED -> STARTING")
                           >= 4 and text, what="four spawns logged")
    lines = [line.split() for line in record.read_text().splitlines()]
    names = [n for n, _ in lines]
    times = {n: float(t) for n, t in lines}
    assert sorted(names) == ["a", "b", "c", "late"]
    # spawn order is priority order (the shells may then run in any order)
    spawned = [line.split("pmd INFO ")[1].split(":")[0] for line in log.splitlines()
               if "STOPPED -> STARTING" in line]
    assert spawned == ["a", "b", "c", "late"]
    # the delayed program (priority 1) did not hold up the others
    assert names[-1] == "late"
    assert times["late"] - max(times[n] for n in "abc") >= 0.5


def test_autorestart_policies(tmp_path):
    programs = [
        {"name": "always", "command": "sh -c 'sleep 0.2; exit 0'", "autorestart": "true",
         "boot": True, "startsecs": 0.1},
        {"name": "never", "command": "sh -c 'sleep 0.2; exit 1'", "autorestart": "false",
         "boot": True, "startsecs": 0.1},
        {"name": "unexpected-ok", "command": "sh -c 'sleep 0.2; exit 0'",
         "autorestart": "unexpected", "boot": True, "startsecs": 0.1},
        {"name": "unexpected-bad", "command": "sh -c 'sleep 0.2; exit 2'",
         "autorestart": "unexpected", "boot": True, "startsecs": 0.1},
        {"name": "custom-codes", "command": "sh -c 'sleep 0.2; exit 2'",
         "autorestart": "unexpected", "exitcodes": [0, 2], "boot": True, "startsecs": 0.1},
    ]
    with Pmd(tmp_path, programs, pid1=True) as pmd:
        http = pmd.http
        pmd.wait_for(lambda: status(http, 1)["restarts"] >= 2, what="always restarts")
        pmd.wait_for(lambda: status(http, 4)["restarts"] >= 2, what="unexpected restarts")
        for pid, code in ((2, 1), (3, 0), (5, 2)):
            got = pmd.wait_for(lambda pid=pid: status(http, pid)["status"] == "EXITED"
                               and status(http, pid), what=f"{pid} exited")
            assert got["exit_code"] == code
            assert got["restarts"] == 0


def test_startsecs_backoff_then_fatal(tmp_path):
    # Each attempt stamps its own start: the API answers only some time after the boot
    # programs start, so an interval timed from a poll would be off by that much.
    starts = tmp_path / "starts"
    programs = [{"name": "flappy", "command": f"sh -c 'date +%s.%N >> {starts}; exit 1'",
                 "boot": True, "startsecs": 1, "startretries": 2}]
    with Pmd(tmp_path, programs, pid1=True) as pmd:
        http = pmd.http
        pmd.wait_for(lambda: state(http, 1) == "FATAL", timeout=10, what="FATAL")
    stamps = [float(line) for line in starts.read_text().split()]
    assert len(stamps) == 3  # the first attempt and startretries (2) retries
    # supervisord's delays: 1 s then 2 s between the three attempts
    first, second = stamps[1] - stamps[0], stamps[2] - stamps[1]
    assert 0.7 <= first < 1.7, stamps
    assert 1.7 <= second < 2.7, stamps
    log = pmd.stderr_text()
    assert log.count("flappy: STOPPED -> STARTING") == 1
    assert log.count("flappy: BACKOFF -> STARTING") == 2
    assert "flappy: BACKOFF -> FATAL" in log


def test_a_program_that_survives_startsecs_is_running(tmp_path):
    programs = [{"name": "steady", "command": "sleep 100", "boot": True, "startsecs": 0.3}]
    with Pmd(tmp_path, programs, pid1=True) as pmd:
        http = pmd.http
        assert state(http, 1) in ("STARTING", "RUNNING")
        pmd.wait_for(lambda: state(http, 1) == "RUNNING")


@pytest.mark.parametrize("program,message", [
    ({"command": "/no/such/binary --flag"}, "command not found: /no/such/binary"),
    ({"command": "sleep 1", "user": "nosuchuser"}, "user 'nosuchuser' does not exist"),
    ({"command": "sleep 1", "directory": "/no/such/dir"}, "directory '/no/such/dir' does not"),
    ({"command": "{tmp}/not-executable"}, "permission denied"),
])
def test_spawn_errors_are_reported_not_fatal_to_pmd(tmp_path, program, message):
    (tmp_path / "not-executable").write_text("echo hi\n")
    program = {**program, "command": program["command"].replace("{tmp}", str(tmp_path))}
    programs = [{"name": "broken", "boot": True, "startretries": 0, **program},
                {"name": "fine", "boot": True, "command": "sleep 100", "startsecs": 0}]
    with Pmd(tmp_path, programs, pid1=True) as pmd:
        http = pmd.http
        got = pmd.wait_for(lambda: status(http, 1)["status"] == "FATAL" and status(http, 1),
                           what="FATAL")
        assert message in got["spawn_error"]
        assert state(http, 2) == "RUNNING"


def test_port_range_gives_each_instance_its_port(tmp_path):
    out = tmp_path / "ports"
    programs = [{"name": "multi", "boot": True, "startsecs": 0,
                 "port_range": {"start": 7100, "end": 7102}, "port_param": "--listen",
                 "command": f"sh -c 'echo \"$1 $2 $PORT\" >> {out}; exec sleep 100' sh"}]
    with Pmd(tmp_path, programs, pid1=True) as pmd:
        http = pmd.http
        got = pmd.wait_for(lambda: status(http, 1)["running_instances"] == 3 and status(http, 1))
        assert got["type"] == "port-range"
        assert len({i["pid"] for i in got["instances"]}) == 3
    lines = sorted(out.read_text().splitlines())
    assert lines == ["--listen 7100 7100", "--listen 7101 7101", "--listen 7102 7102"]
    assert (pmd.log_dir / "multi" / "7101" / "stdout.log").exists()


def test_user_switch_sets_identity_and_environment(tmp_path):
    programs = [{"name": "nobody", "boot": True, "startsecs": 0, "user": "nobody",
                 "autorestart": "false", "directory": "/",
                 "environment": {"EXTRA": "x y"},
                 "command": "sh -c 'echo $(id -u) $HOME $USER $LOGNAME \"$EXTRA\" $(pwd)'"}]
    with Pmd(tmp_path, programs, pid1=True) as pmd:
        http = pmd.http
        pmd.wait_for(lambda: state(http, 1) == "EXITED")
    import pwd

    entry = pwd.getpwnam("nobody")
    out = pmd.log_dir / "nobody" / "stdout.log"
    assert out.read_text().split() == [str(entry.pw_uid), entry.pw_dir, "nobody", "nobody",
                                       "x", "y", "/"]


def test_sighup_reload_applies_the_diff(tmp_path):
    keep = {"name": "keep", "boot": True, "startsecs": 0, "command": "sleep 100"}
    change = {"name": "change", "boot": True, "startsecs": 0, "command": "sleep 100"}
    gone = {"name": "gone", "boot": True, "startsecs": 0, "command": "sleep 100"}
    with Pmd(tmp_path, [keep, change, gone], pid1=True) as pmd:
        http = pmd.http
        for i in (1, 2, 3):
            pmd.wait_for(lambda i=i: state(http, i) == "RUNNING")
        keep_pid = status(http, 1)["pid"]
        change_pid = status(http, 2)["pid"]
        new = {"name": "new", "boot": True, "startsecs": 0, "command": "sleep 100"}
        pmd.write_programs([keep, {**change, "command": "sleep 200"}, new])
        import signal as sig

        pmd.signal(sig.SIGHUP)
        pmd.wait_for(lambda: 3 not in [s["id"] for s in
                                       http.get("/api/v1/daemon/status").json()["statuses"]])
        listed = {s["name"]: s for s in http.get("/api/v1/daemon/status").json()["statuses"]}
        assert set(listed) == {"keep", "change", "new"}
        assert listed["keep"]["status"]["pid"] == keep_pid
        got = pmd.wait_for(lambda: (s := status(http, 2))["status"] == "RUNNING"
                           and s["pid"] != change_pid and s)
        assert got["pid"] != change_pid
        new_id = listed["new"]["id"]
        pmd.wait_for(lambda: state(http, new_id) == "RUNNING")
        # a broken file is refused and changes nothing
        (pmd.config_dir / "programs.json").write_text("{not json")
        pmd.signal(sig.SIGHUP)
        pmd.wait_for(lambda: "reload refused" in (http.get("/api/v1/daemon/health").json()
                                                  ["config_problem"] or ""))
        assert status(http, 1)["pid"] == keep_pid
    assert json.loads((pmd.state_dir / "programs.last-good.json").read_text())


def test_terminal_shell_loads_the_login_environment_and_display_is_set(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".profile").write_text("export FROM_PROFILE=loaded\n")
    programs = [
        {"name": "shell", "boot": True, "startsecs": 0, "autorestart": "false",
         "terminal_shell": "sh", "display": ":7",
         "command": "echo \"$FROM_PROFILE $DISPLAY $0\""},
        {"name": "plain", "boot": True, "startsecs": 0, "autorestart": "false",
         "command": "sh -c 'echo \"[$FROM_PROFILE]\"'"},
    ]
    with Pmd(tmp_path, programs, pid1=True, env={"HOME": str(home)}) as pmd:
        http = pmd.http
        pmd.wait_for(lambda: state(http, 1) == "EXITED" and state(http, 2) == "EXITED")
    assert (pmd.log_dir / "shell" / "stdout.log").read_text() == "loaded :7 sh\n"
    assert (pmd.log_dir / "plain" / "stdout.log").read_text() == "[]\n"
