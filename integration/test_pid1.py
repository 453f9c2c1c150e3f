"""pmd_init as PID 1 of a fresh PID namespace: reaping, signals, the main command."""

from __future__ import annotations

import signal
import time

import pytest

from integration.helpers import children, state, zombies_under
from tests.harness import Pmd, can_unshare

pytestmark = pytest.mark.skipif(not can_unshare(), reason="needs unshare --pid (root)")

ORPHANS = """
import os
for _ in range(3000):
    if os.fork() == 0:
        if os.fork() == 0:
            os._exit(0)
        os._exit(0)
    os.wait()
print("forked", flush=True)
"""


def test_3000_double_forked_orphans_leave_no_zombie(tmp_path):
    script = tmp_path / "orphans.py"
    script.write_text(ORPHANS)
    programs = [{"name": "forker", "command": f"python3 {script}", "boot": True,
                 "startsecs": 0, "autorestart": "false"}]
    with Pmd(tmp_path, programs, pid1=True) as pmd:
        http = pmd.http
        pmd.wait_for(lambda: state(http, 1) == "EXITED", timeout=60, what="forker done")
        assert (pmd.log_dir / "forker" / "stdout.log").read_text() == "forked\n"
        pid = pmd.pid
        pmd.wait_for(lambda: zombies_under(pid) == 0, timeout=5, what="no zombies")
        assert children(pid) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT])
def test_shutdown_reverse_priority_escalates_and_exits_within_grace(tmp_path, sig):
    record = tmp_path / "stops"

    def trapper(name: str) -> str:
        return (f"sh -c 'trap \"echo {name} >> {record}; exit 0\" TERM; "
                f"while :; do sleep 0.05; done'")

    programs = [
        {"name": "db", "command": trapper("db"), "boot": True, "priority": 10,
         "startsecs": 0},
        {"name": "app", "command": trapper("app"), "boot": True, "priority": 50,
         "startsecs": 0},
        {"name": "web", "command": trapper("web"), "boot": True, "priority": 90,
         "startsecs": 0},
        {"name": "stubborn", "command": "sh -c 'trap \"\" TERM; while :; do sleep 0.05; done'",
         "boot": True, "priority": 90, "startsecs": 0, "stop_timeout": 0.5},
        {"name": "hupper", "command": f"sh -c 'trap \"echo hupper >> {record}; exit 0\" HUP; "
                                      f"while :; do sleep 0.05; done'",
         "boot": True, "priority": 20, "startsecs": 0, "stop_signal": "HUP"},
    ]
    pmd = Pmd(tmp_path, programs, pid1=True, grace=4)
    with pmd:
        http = pmd.http
        for pid in range(1, 6):
            pmd.wait_for(lambda pid=pid: state(http, pid) == "RUNNING", what=f"{pid} running")
        begin = time.monotonic()
        pmd.signal(sig)
        code = pmd.wait(timeout=10)
        took = time.monotonic() - begin
    assert code == 0
    assert took < 4.0
    order = record.read_text().split()
    # web (90) first, then app (50), hupper (20, its own stop signal), db (10)
    assert order == ["web", "app", "hupper", "db"]
    assert "stubborn did not stop" in pmd.stderr_text()


def test_grace_caps_a_program_with_a_long_stop_timeout(tmp_path):
    programs = [{"name": "deaf", "command": "sh -c 'trap \"\" TERM; while :; do sleep 0.05; done'",
                 "boot": True, "startsecs": 0, "stop_timeout": 60}]
    with Pmd(tmp_path, programs, pid1=True, grace=1) as pmd:
        http = pmd.http
        pmd.wait_for(lambda: state(http, 1) == "RUNNING")
        begin = time.monotonic()
        pmd.signal(signal.SIGTERM)
        assert pmd.wait(timeout=10) == 0
        assert time.monotonic() - begin < 2.5


@pytest.mark.parametrize("command,expected", [
    (["sh", "-c", "exit 0"], 0),
    (["sh", "-c", "exit 3"], 3),
    (["sh", "-c", "kill -KILL $$"], 137),
    (["sh", "-c", "kill -TERM $$"], 143),
])
def test_main_command_exit_code_becomes_pmds(tmp_path, command, expected):
    pmd = Pmd(tmp_path, [], pid1=True, command=command)
    pmd.start(wait=False)
    try:
        assert pmd.wait(timeout=15) == expected
    finally:
        pmd.kill_all()


def test_main_command_missing_is_127(tmp_path):
    pmd = Pmd(tmp_path, [], pid1=True, command=["/nonexistent/binary"])
    pmd.start(wait=False)
    try:
        assert pmd.wait(timeout=15) == 127
    finally:
        pmd.kill_all()


def test_main_command_not_executable_is_126(tmp_path):
    # in a folder named like the other case: the code must come from errno, not the text
    folder = tmp_path / "not found"
    folder.mkdir()
    script = folder / "script"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    pmd = Pmd(tmp_path, [], pid1=True, command=[str(script)])
    pmd.start(wait=False)
    try:
        assert pmd.wait(timeout=15) == 126
    finally:
        pmd.kill_all()
    assert "permission denied" in pmd.stderr_text()


def test_remap_exit(tmp_path):
    pmd = Pmd(tmp_path, [], pid1=True, command=["sh", "-c", "kill -TERM $$"],
              args=["--remap-exit", "143:0"])
    pmd.start(wait=False)
    try:
        assert pmd.wait(timeout=15) == 0
    finally:
        pmd.kill_all()


def test_signals_are_forwarded_to_the_main_command(tmp_path):
    record = tmp_path / "got"
    script = (f"trap 'echo HUP >> {record}' HUP; trap 'echo USR1 >> {record}' USR1; "
              f"trap 'echo USR2 >> {record}' USR2; trap 'echo WINCH >> {record}' WINCH; "
              f"trap 'echo TERM >> {record}; exit 7' TERM; "
              f"echo ready > {tmp_path}/ready; while :; do sleep 0.05; done")
    pmd = Pmd(tmp_path, [], pid1=True, command=["sh", "-c", script])
    with pmd:
        pmd.wait_for(lambda: (tmp_path / "ready").exists(), what="main ready")
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH):
            pmd.signal(sig)
            pmd.wait_for(lambda sig=sig: record.exists() and
                         sig.name[3:] in record.read_text().split(), what=sig.name)
        pmd.signal(signal.SIGTERM)
        assert pmd.wait(timeout=10) == 7
    assert record.read_text().split() == ["HUP", "USR1", "USR2", "WINCH", "TERM"]


def test_main_command_exit_stops_programs_gracefully(tmp_path):
    record = tmp_path / "stopped"
    programs = [{"name": "svc", "boot": True, "startsecs": 0,
                 "command": f"sh -c 'trap \"echo svc >> {record}; exit 0\" TERM; "
                            f"while :; do sleep 0.05; done'"}]
    command = ["sh", "-c", f"while [ ! -s {tmp_path}/go ]; do sleep 0.05; done; exit 5"]
    with Pmd(tmp_path, programs, pid1=True, command=command) as pmd:
        http = pmd.http
        pmd.wait_for(lambda: state(http, 1) == "RUNNING")
        (tmp_path / "go").write_text("1")
        assert pmd.wait(timeout=10) == 5
    assert record.read_text().split() == ["svc"]


def test_shutdown_on_exit_program_ends_the_container_with_its_code(tmp_path):
    programs = [
        {"name": "critical", "boot": True, "startsecs": 0, "autorestart": "false",
         "shutdown_on_exit": True, "command": "sh -c 'sleep 0.3; exit 4'"},
        {"name": "other", "boot": True, "startsecs": 0, "command": "sleep 100"},
    ]
    pmd = Pmd(tmp_path, programs, pid1=True)
    pmd.start(wait=False)  # it may well be over before the API is up
    try:
        assert pmd.wait(timeout=10) == 4
    finally:
        pmd.kill_all()
    assert "critical is gone for good" in pmd.stderr_text()
