"""Logs and rotation, the state that survives: programs.json fallbacks, re-exec, ephemeral."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from integration.helpers import state, status
from tests.harness import Pmd, can_unshare

pytestmark = pytest.mark.skipif(not can_unshare(), reason="needs unshare --pid (root)")

WRITER = """
import hashlib, sys
h = hashlib.sha256()
line = 0
total = 0
while total < 50_000_000:
    chunk = b"".join(b"line %09d %s\\n" % (line + i, b"x" * 80) for i in range(1000))
    line += 1000
    total += len(chunk)
    sys.stdout.buffer.write(chunk)
    h.update(chunk)
sys.stdout.flush()
open(sys.argv[1], "w").write(f"{total} {h.hexdigest()}")
"""


def captured(folder: Path) -> int:
    try:
        return sum(os.path.getsize(p) for p in folder.glob("stdout.log*"))
    except OSError:  # rotated away between the listing and the look
        return 0


def test_50mb_is_rotated_into_backups_without_losing_a_byte(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    digest = tmp_path / "digest"
    programs = [{"name": "chatty", "boot": True, "startsecs": 0, "autorestart": "false",
                 "command": f"python3 {script} {digest}", "log_max_bytes": 5_000_000,
                 "log_backups": 20}]
    with Pmd(tmp_path, programs, pid1=True, env={"PMD_LOG_FORWARD": "0"}) as pmd:
        http = pmd.http
        pmd.wait_for(lambda: state(http, 1) == "EXITED", timeout=60)
        # EXITED comes from the reap, which may be ahead of the last reads of the pipe
        folder = pmd.log_dir / "chatty"
        written = int(pmd.wait_for(lambda: digest.exists() and digest.read_text().split(),
                                   what="the digest")[0])
        pmd.wait_for(lambda: captured(folder) >= written, what="every byte captured")
    files = sorted(folder.glob("stdout.log*"), key=lambda p: (len(p.name), p.name))
    # 50 MB in 5 MB files: the live file and 9 or 10 backups, all kept (log_backups 20)
    assert 10 <= len(files) <= 11
    ordered = [folder / f"stdout.log.{i}" for i in range(len(files) - 1, 0, -1)]
    ordered.append(folder / "stdout.log")
    data = b"".join(p.read_bytes() for p in ordered)
    total, hexdigest = digest.read_text().split()
    assert len(data) == int(total)
    assert hashlib.sha256(data).hexdigest() == hexdigest
    for path in ordered[:-1]:
        assert os.path.getsize(path) <= 5_000_000


def test_rotation_keeps_only_log_backups(tmp_path):
    programs = [{"name": "small", "boot": True, "startsecs": 0, "autorestart": "false",
                 "command": "sh -c 'i=0; while [ $i -lt 400 ]; do echo line-$i-padding; "
                            "i=$((i+1)); done'",
                 "log_max_bytes": 1000, "log_backups": 2}]
    with Pmd(tmp_path, programs, pid1=True) as pmd:
        http = pmd.http
        pmd.wait_for(lambda: state(http, 1) == "EXITED")
    names = sorted(p.name for p in (pmd.log_dir / "small").glob("stdout.log*"))
    assert names == ["stdout.log", "stdout.log.1", "stdout.log.2"]
    last = (pmd.log_dir / "small" / "stdout.log").read_text().splitlines()[-1]
    assert last == "line-399-padding"


def test_logs_disabled_writes_nothing(tmp_path):
    programs = [{"name": "quiet", "boot": True, "startsecs": 0, "autorestart": "false",
                 "logs_enabled": False, "command": "echo should-not-appear"}]
    with Pmd(tmp_path, programs, pid1=True) as pmd:
        http = pmd.http
        pmd.wait_for(lambda: state(http, 1) == "EXITED")
    assert not (pmd.log_dir / "quiet").exists()
    assert "should-not-appear" not in pmd.stdout_text()


def test_stderr_is_captured_and_forwarded_with_the_name(tmp_path):
    programs = [{"name": "both", "boot": True, "startsecs": 0, "autorestart": "false",
                 "command": "sh -c 'echo to-out; echo to-err >&2'"}]
    with Pmd(tmp_path, programs, pid1=True) as pmd:
        http = pmd.http
        pmd.wait_for(lambda: state(http, 1) == "EXITED")
    assert (pmd.log_dir / "both" / "stdout.log").read_text() == "to-out\n"
    assert (pmd.log_dir / "both" / "stderr.log").read_text() == "to-err\n"
    assert "[both] to-out" in pmd.stdout_text()
    assert "[both] to-err" in pmd.stderr_text()


def test_corrupt_programs_json_boots_from_the_last_good_copy(tmp_path):
    good = [{"name": "svc", "boot": True, "startsecs": 0, "command": "sleep 100"}]
    pmd = Pmd(tmp_path, good, pid1=True)
    with pmd:
        pmd.wait_for(lambda: state(pmd.http, 1) == "RUNNING")
    (pmd.config_dir / "programs.json").write_text('{"version": 1, "programs": [{"name": ')
    with pmd:
        http = pmd.http
        pmd.wait_for(lambda: state(http, 1) == "RUNNING")
        health = http.get("/api/v1/daemon/health").json()
        assert "not valid JSON" in health["config_problem"]
    aside = list(pmd.config_dir.glob("programs.json.bad-*"))
    assert len(aside) == 1
    assert aside[0].read_text().startswith('{"version": 1, "programs": [{"name": ')
    assert "booting from last-good" in pmd.stderr_text()


def test_invalid_program_falls_back_to_the_default_snapshot(tmp_path):
    default = [{"name": "from-default", "boot": True, "startsecs": 0, "command": "sleep 100"}]
    bad = [{"name": "x", "command": "sleep 1", "priority": 5000}]
    pmd = Pmd(tmp_path, bad, pid1=True, default_programs=default)
    with pmd:
        http = pmd.http
        listed = http.get("/api/v1/daemon/status").json()["statuses"]
        assert [s["name"] for s in listed] == ["from-default"]
        assert "priority" in http.get("/api/v1/daemon/health").json()["config_problem"]


def test_first_boot_snapshots_programs_default_json(tmp_path):
    programs = [{"name": "svc", "command": "sleep 100"}]
    with Pmd(tmp_path, programs, pid1=True) as pmd:
        pass
    default = json.loads((pmd.config_dir / "programs.default.json").read_text())
    assert [p["name"] for p in default["programs"]] == ["svc"]


def test_reexec_keeps_every_pid_and_log_stream(tmp_path):
    ticker = ("sh -c 'i=0; while :; do echo tick-$i; echo err-$i >&2; i=$((i+1)); "
              "sleep 0.05; done'")
    programs = [
        {"name": "ticker", "boot": True, "startsecs": 0, "command": ticker},
        {"name": "ports", "boot": True, "startsecs": 0, "command": "sh -c 'exec sleep 100'",
         "port_range": {"start": 7200, "end": 7201}},
        {"name": "starting", "boot": True, "startsecs": 30, "command": "sleep 100"},
        {"name": "crashy", "boot": True, "startsecs": 0, "autorestart": "true",
         "command": "sh -c 'sleep 0.4; exit 1'"},
    ]
    with Pmd(tmp_path, programs, pid1=True) as pmd:
        http = pmd.http
        pmd.wait_for(lambda: state(http, 1) == "RUNNING" and state(http, 2) == "RUNNING")
        before = {s["id"]: s["status"] for s in
                  http.get("/api/v1/daemon/status").json()["statuses"]}
        pmd_pid = pmd.pid
        log = pmd.log_dir / "ticker" / "stdout.log"
        size_before = log.stat().st_size
        # the operator's command: `pmd reexec` over the Unix socket
        done = subprocess.run([sys.executable, "-m", "pmd_init.cli.pmd", "--socket",
                               str(pmd.socket), "reexec"], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, done.stderr
        pmd.wait_for(lambda: "re-executed" in pmd.stderr_text(), what="re-exec")
        pmd.wait_ready()
        http = pmd.http
        after = {s["id"]: s["status"] for s in
                 http.get("/api/v1/daemon/status").json()["statuses"]}
        assert pmd.pid == pmd_pid
        assert after[1]["pid"] == before[1]["pid"]
        assert [i["pid"] for i in after[2]["instances"]] == \
            [i["pid"] for i in before[2]["instances"]]
        assert after[3]["pid"] == before[3]["pid"]
        assert after[3]["status"] == "STARTING"
        # the log stream goes on through the same pipe, with no line lost or doubled
        pmd.wait_for(lambda: log.stat().st_size > size_before + 200, what="more log")
        lines = log.read_text().splitlines()
        assert lines == [f"tick-{i}" for i in range(len(lines))]
        errs = (pmd.log_dir / "ticker" / "stderr.log").read_text().splitlines()
        assert errs == [f"err-{i}" for i in range(len(errs))]
        # the restart policy carries on
        restarts = after[4]["restarts"]
        pmd.wait_for(lambda: status(http, 4)["restarts"] > restarts, what="crashy restarts")
        pmd.signal(signal.SIGTERM)
        assert pmd.wait() == 0


def test_stale_ephemeral_entries_from_an_earlier_boot_are_cleaned(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (tmp_path / "log" / "quick_old").mkdir(parents=True)
    (tmp_path / "log" / "quick_old" / "stdout.log").write_text("old\n")
    (state_dir / "ephemeral.json").write_text(json.dumps({
        "version": 1,
        "boot": {"boot_id": "an-earlier-boot", "init_start": 1},
        "programs": [{"temporary_id": "quick_1_1", "pid": 1, "pid_start": 1,
                      "created_at": 1.0, "expires_at": None,
                      "spec": {"name": "quick_old", "command": "sleep 100"}}],
    }))
    with Pmd(tmp_path, [], pid1=True) as pmd:
        assert "quick_1_1 cleaned up: earlier container boot" in pmd.stderr_text()
        cleaned = pmd.http.get("/api/v1/daemon/health").json()["ephemeral_cleaned"]
        assert [(c["temporary_id"], c["cleaned"]) for c in cleaned] == \
            [("quick_1_1", "earlier container boot")]
    doc = json.loads((state_dir / "ephemeral.json").read_text())
    assert doc["programs"] == []
    assert not (tmp_path / "log" / "quick_old").exists()


def pids_running(pmd: Pmd) -> set[int]:
    try:
        doc = json.loads((pmd.state_dir / "pids.json").read_text())
    except (OSError, ValueError):
        return set()
    return {e["pid"] for e in doc["instances"] if e["state"] == "RUNNING"}


def test_subreaper_killed_and_restarted_readopts_live_programs(tmp_path):
    go = tmp_path / "go"
    programs = [
        {"name": "survivor", "boot": True, "startsecs": 0,
         "command": f"sh -c 'echo first; while [ ! -e {go} ]; do sleep 0.05; done; "
                    f"echo second; exec sleep 100'"},
        {"name": "crasher", "boot": True, "startsecs": 0, "autorestart": "true",
         "command": f"sh -c 'while [ ! -e {go} ]; do sleep 0.05; done; exit 3'"},
    ]
    pmd = Pmd(tmp_path, programs, pid1=False)
    with pmd:
        http = pmd.http
        pmd.wait_for(lambda: state(http, 1) == "RUNNING" and state(http, 2) == "RUNNING")
        survivor = status(http, 1)["pid"]
        crasher = status(http, 2)["pid"]
        # pids.json is written a moment after a change: wait for it to show both running
        pmd.wait_for(lambda: pids_running(pmd) == {survivor, crasher}, what="pids.json")
        os.kill(pmd.pid, signal.SIGKILL)
        pmd.wait()
        pmd.start()
        http = pmd.http
        assert status(http, 1)["pid"] == survivor
        assert status(http, 1)["status"] == "RUNNING"
        assert status(http, 2)["pid"] == crasher
        assert "re-adopted 2 running program instance(s)" in pmd.stderr_text()
        go.write_text("")
        out = pmd.log_dir / "survivor" / "stdout.log"
        pmd.wait_for(lambda: out.read_text() == "first\nsecond\n", what="second line")
        # the adopted crasher's exit is seen (through its pidfd) and the policy restarts it
        # (it then exits at once each time, so the start-rate limit may hold it in BACKOFF)
        pmd.wait_for(lambda: status(http, 2)["restarts"] >= 1, what="crasher restarted")
        assert status(http, 2).get("pid") != crasher


def test_a_full_disk_never_blocks_a_program_and_the_loss_is_reported(tmp_path):
    # /dev/full answers every write with ENOSPC, as a full disk does.
    programs = [{"name": "writer", "boot": True, "startsecs": 0, "autorestart": "false",
                 "stdout_logfile": "/dev/full", "log_max_bytes": 0,
                 "command": "head -c 1048576 /dev/zero"}]
    with Pmd(tmp_path, programs, pid1=True, env={"PMD_LOG_FORWARD": "0"}) as pmd:
        http = pmd.http
        got = pmd.wait_for(lambda: (s := status(http, 1))["status"] == "EXITED" and s)
        assert got["exit_code"] == 0
        pmd.wait_for(lambda: status(http, 1).get("log_dropped_bytes") == 1048576)
        assert http.get("/api/v1/daemon/health").json()["status"] == "ok"


def test_sigusr1_reopens_log_files_after_an_outside_rotation(tmp_path):
    go = tmp_path / "go"
    programs = [{"name": "svc", "boot": True, "startsecs": 0,
                 "command": f"sh -c 'echo before; while [ ! -e {go} ]; do sleep 0.05; done; "
                            f"echo after; exec sleep 100'"}]
    with Pmd(tmp_path, programs, pid1=True) as pmd:
        log = pmd.log_dir / "svc" / "stdout.log"
        pmd.wait_for(lambda: log.exists() and log.read_text() == "before\n")
        log.rename(log.with_name("stdout.log.moved"))
        pmd.signal(signal.SIGUSR1)
        pmd.wait_for(lambda: log.exists(), what="reopened file")
        go.write_text("")
        pmd.wait_for(lambda: log.read_text() == "after\n", what="after in the new file")
        assert log.with_name("stdout.log.moved").read_text() == "before\n"
