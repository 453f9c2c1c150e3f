"""depends_on with real programs: a boot in dependency order (from the programs' own
marker files), waiting and blocked programs in both API families (a oneshot that exited 3,
a dependency gone FATAL), a start of a waiting program refused unless forced, a readiness
timeout that backs off then goes FATAL, and a shutdown that stops dependents first. Each
test runs with pmd as a subreaper and as PID 1 of a PID namespace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from tests.api.helpers import API, assert_error
from tests.harness import ROOT, Pmd, both_inits, can_unshare


def stamp(base: Path, name: str, then: str = "exec sleep 60") -> str:
    """A command that writes its start time to <base>/<name>.start, and on TERM its stop
    time to <name>.stop."""
    return (f"sh -c 'date +%s.%N > {base}/{name}.start; "
            f"trap \"date +%s.%N > {base}/{name}.stop; exit 0\" TERM; {then}'")


def started(base: Path, name: str) -> float:
    return float((base / f"{name}.start").read_text())


def written(path: Path) -> bool:
    """The shell creates a marker before `date` writes into it."""
    try:
        return path.read_text().endswith("\n")
    except FileNotFoundError:
        return False


def prog(name: str, command: str, **fields: object) -> dict[str, object]:
    return {"name": name, "command": command, "boot": True, "startsecs": 0.5,
            "stop_timeout": 3, **fields}


@both_inits
def test_boot_waits_blocks_and_shuts_down_in_dependency_order(tmp_path: Path, pid1: bool) -> None:
    base = tmp_path / "marks"
    base.mkdir()
    sleeper = "trap \"date +%s.%N > {b}/{n}.stop; exit 0\" TERM; while :; do sleep 0.05; done"
    programs = [
        prog("migrate", f"sh -c 'sleep 0.6; date +%s.%N > {base}/migrate.start'",
             oneshot=True),
        prog("db", stamp(base, "db", sleeper.format(b=base, n="db")), startsecs=1,
             depends_on={"migrate": "completed_successfully"}),
        prog("api", stamp(base, "api", sleeper.format(b=base, n="api")),
             depends_on={"db": "running"}),
        prog("worker", stamp(base, "worker", sleeper.format(b=base, n="worker")),
             depends_on={"api": "running"}, priority=1),
        prog("broken", "sh -c 'exit 3'", oneshot=True),
        prog("after-broken", "sleep 60", depends_on={"broken": "completed_successfully"}),
        # exits before its startsecs with no retry left: FATAL, which blocks its dependent
        prog("crashy", "sh -c 'exit 1'", startretries=0),
        prog("after-crashy", "sleep 60", depends_on=["crashy"]),
    ]
    with Pmd(tmp_path / "pmd", programs, pid1=pid1) as pmd:
        http = pmd.http
        ids = {p["name"]: p["id"] for p in http.get(f"{API}/programs").json()["programs"]}
        pmd.wait_for(lambda: written(base / "worker.start"), timeout=15)
        # order and gaps from the programs' own clocks: each after its condition held
        assert started(base, "db") >= started(base, "migrate")
        assert started(base, "api") - started(base, "db") >= 1 - 0.3  # db's startsecs
        assert started(base, "worker") - started(base, "api") >= 0.5 - 0.3
        # a blocked dependent says why, in both families, and a start is a 409
        status = pmd.wait_for(lambda: (s := http.get(f"{API}/status/{ids['after-broken']}")
                                       .json()["status"]).get("blocked") and s)
        assert status["status"] == "STOPPED"
        assert status["waiting_for"] == ["broken (completed_successfully)"]
        assert status["blocked"] == "broken exited 3"
        pm2 = {p["name"]: p for p in http.get("/api/processes").json()}
        assert pm2["after-broken"]["status"] == "launching"
        assert pm2["after-broken"]["blocked"] == "broken exited 3"
        error = assert_error(http.post(f"{API}/programs/{ids['after-broken']}/start", json={}),
                             409, "DEPENDENCIES_NOT_READY", "force")
        assert error["details"]["waiting_for"] == ["broken (completed_successfully)"]
        assert http.get(f"{API}/status/{ids['after-broken']}").json()["status"]["status"] \
            == "STOPPED"  # the refusal changed nothing
        crashy = pmd.wait_for(lambda: (s := http.get(f"{API}/status/{ids['after-crashy']}")
                                       .json()["status"]).get("blocked") and s)
        assert crashy["status"] == "STOPPED" and crashy["waiting_for"] == ["crashy (ready)"]
        assert crashy["blocked"] == "crashy exited 1"
        assert http.get(f"{API}/status/{ids['crashy']}").json()["status"]["status"] == "FATAL"
        assert_error(http.post(f"{API}/programs/{ids['after-crashy']}/start", json={}),
                     409, "DEPENDENCIES_NOT_READY", "force")
        forced = http.post(f"{API}/programs/{ids['after-broken']}/start", json={"force": True})
        assert forced.status_code == 200, forced.text
        assert "waiting_for" not in http.get(f"{API}/status/{ids['after-broken']}") \
            .json()["status"]
        pmd.signal(signal.SIGTERM)
        pmd.wait(timeout=15)
    # worker's priority 1 would stop it last; its dependency on api stops it first
    stops = {n: float((base / f"{n}.stop").read_text()) for n in ("worker", "api", "db")}
    assert stops["worker"] <= stops["api"] <= stops["db"], stops


@both_inits
def test_log_line_readiness_releases_dependents_and_a_timeout_backs_off(
        tmp_path: Path, pid1: bool) -> None:
    base = tmp_path / "marks"
    base.mkdir()
    programs = [
        prog("db", f"sh -c 'sleep 0.8; date +%s.%N > {base}/db.ready; "
                   f"echo accepting connections >&2; exec sleep 60'",
             readiness={"log_line": "^accepting conn", "timeout_seconds": 10}),
        prog("api", stamp(base, "api"), depends_on=["db"]),
        prog("mute", "sleep 60", startretries=1,
             readiness={"log_line": "never", "timeout_seconds": 0.6}, stop_timeout=1),
    ]
    with Pmd(tmp_path / "pmd", programs, pid1=pid1) as pmd:
        http = pmd.http
        ids = {p["name"]: p["id"] for p in http.get(f"{API}/programs").json()["programs"]}
        pmd.wait_for(lambda: written(base / "api.start"), timeout=10)
        assert started(base, "api") >= float((base / "db.ready").read_text())
        db = http.get(f"{API}/status/{ids['db']}").json()["status"]
        assert db["ready"] is True and db["ready_at"]
        mute = pmd.wait_for(lambda: (s := http.get(f"{API}/status/{ids['mute']}")
                                     .json()["status"])["status"] == "FATAL" and s,
                            timeout=10)
        assert mute.get("ready") is None and mute["restarts"] == 0
        assert mute["backoff_reason"] == "ready_timeout"  # FATAL says why its starts failed
        # pmd's log lines go out at the end of the loop turn: the API may say FATAL first
        events = pmd.wait_for(lambda: "mute: BACKOFF -> FATAL" in (text := pmd.stderr_text())
                              and text, what="the FATAL line")
        assert "mute: not ready within 0.6s" in events
        # each timeout is a failed start: BACKOFF, a retry, and FATAL once none is left
        moves = [line.split("mute: ", 1)[1] for line in events.splitlines()
                 if "mute: " in line and " -> " in line]
        assert [" ".join(m.split()[:3]) for m in moves
                if m.split()[2] in ("BACKOFF", "FATAL")] == \
            ["EXITED -> BACKOFF", "EXITED -> BACKOFF", "BACKOFF -> FATAL"], moves
        assert moves[-2:] == ["EXITED -> BACKOFF exit 143 (ready_timeout)",
                              "BACKOFF -> FATAL exit 143 (ready_timeout)"], moves
        assert moves.count("EXITED -> BACKOFF exit 143 (ready_timeout)") == 2, moves
        assert events.count("mute: not ready within 0.6s") == 2


@both_inits
def test_a_reexec_in_a_waiting_boot_keeps_pids_and_finishes_in_order(
        tmp_path: Path, pid1: bool) -> None:
    base = tmp_path / "marks"
    base.mkdir()
    gate = base / "go"
    programs = [
        # ready at once: its readiness, and its pid, must survive the re-exec
        prog("cache", f"sh -c 'date +%s.%N > {base}/cache.ready; echo up; exec sleep 60'",
             readiness={"log_line": "^up$"}),
        prog("db", f"sh -c 'while [ ! -e {gate} ]; do sleep 0.05; done; "
                   f"date +%s.%N > {base}/db.ready; echo up; exec sleep 60'",
             readiness={"log_line": "^up$"}),
        prog("api", stamp(base, "api"), depends_on=["db", "cache"]),
        prog("worker", stamp(base, "worker"), depends_on={"api": "running"}),
    ]
    with Pmd(tmp_path / "pmd", programs, pid1=pid1) as pmd:
        http = pmd.http
        ids = {p["name"]: p["id"] for p in http.get(f"{API}/programs").json()["programs"]}

        def status(name: str) -> dict[str, Any]:
            return dict(http.get(f"{API}/status/{ids[name]}").json()["status"])

        cache = pmd.wait_for(lambda: (s := status("cache")).get("ready") and s)
        db = pmd.wait_for(lambda: (s := status("db"))["status"] == "RUNNING" and s)
        assert db["ready"] is False
        assert status("api")["waiting_for"] == ["db (ready)"]
        assert status("worker")["waiting_for"] == ["api (running)"]
        pmd_pid = pmd.pid
        (pmd.state_dir / "api.json").unlink()  # the new image binds a new port (port 0)
        assert http.post(f"{API}/reexec").json()["success"] is True
        pmd.wait_ready()
        http = pmd.http
        assert pmd.pid == pmd_pid  # the same process, a new image
        for name, before in (("cache", cache), ("db", db)):
            now = status(name)
            assert (now["status"], now["pid"]) == ("RUNNING", before["pid"]), (name, now)
        assert status("cache")["ready"] is True
        assert status("cache")["ready_at"] == cache["ready_at"]
        assert status("db")["ready"] is False
        assert status("api")["waiting_for"] == ["db (ready)"]
        assert status("worker")["waiting_for"] == ["api (running)"]
        gate.touch()
        pmd.wait_for(lambda: written(base / "worker.start"), timeout=10)
        assert started(base, "api") >= float((base / "db.ready").read_text())
        assert started(base, "worker") - started(base, "api") >= 0.5 - 0.3  # api's startsecs
        after = status("db")
        assert after["ready"] is True and after["pid"] == db["pid"]
        assert status("cache")["pid"] == cache["pid"]


def pmd_cli(pmd: Pmd, *args: str) -> str:
    """`pmd ARGS` against this pmd's Unix socket; its standard output."""
    env = {**os.environ, "PMD_SOCKET": str(pmd.socket), "PYTHONPATH": str(ROOT)}
    env.pop("PMD_URL", None)
    done = subprocess.run([sys.executable, "-m", "pmd_init.cli.pmd", *args], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(not can_unshare(), reason="needs unshare --pid (root)")
def test_waiting_and_blocked_show_in_every_view_and_on_the_stream(tmp_path: Path) -> None:
    """pmd as PID 1: a program that waits and one that is blocked say so in both API
    families, `pmd list`, /ws's snapshot and, as it changes, /ws's `waiting` messages."""
    base = tmp_path / "marks"
    base.mkdir()
    gate = base / "go"
    programs = [
        # exits 3 once the test opens the gate: from waiting to blocked, seen live
        prog("migrate", f"sh -c 'while [ ! -e {gate} ]; do sleep 0.05; done; exit 3'",
             oneshot=True),
        prog("app", stamp(base, "app"), depends_on={"migrate": "completed_successfully"}),
        prog("slow", "sleep 60", readiness={"log_line": "^never$"}),
        prog("api", stamp(base, "api"), depends_on={"slow": "ready"}),
    ]
    with Pmd(tmp_path / "pmd", programs, pid1=True) as pmd:
        http = pmd.http
        ids = {p["name"]: p["id"] for p in http.get(f"{API}/programs").json()["programs"]}
        pmd.wait_for(lambda: http.get(f"{API}/status/{ids['migrate']}")
                     .json()["status"]["status"] == "RUNNING")
        with connect(f"ws://127.0.0.1:{pmd.port}/ws?interval=300", open_timeout=5) as ws:
            snapshot = {p["name"]: p for p in json.loads(ws.recv(timeout=5))["processes"]}
            assert (snapshot["app"]["status"], snapshot["app"]["waiting_for"],
                    snapshot["app"]["blocked"]) == \
                ("launching", ["migrate (completed_successfully)"], None)
            assert snapshot["api"]["waiting_for"] == ["slow (ready)"]
            gate.touch()
            blocked = None
            while blocked is None:
                message = json.loads(ws.recv(timeout=10))
                if message["type"] == "waiting" and message["name"] == "app":
                    blocked = message
        assert blocked == {"type": "waiting", "id": ids["app"], "name": "app",
                           "waiting_for": ["migrate (completed_successfully)"],
                           "blocked": "migrate exited 3", "time": blocked["time"],
                           "timestamp": blocked["timestamp"]}
        # the PM2 family: the list and the detail
        pm2 = {p["name"]: p for p in http.get("/api/processes").json()}
        assert (pm2["app"]["status"], pm2["app"]["waiting_for"], pm2["app"]["blocked"]) == \
            ("launching", ["migrate (completed_successfully)"], "migrate exited 3")
        assert (pm2["api"]["status"], pm2["api"]["waiting_for"], pm2["api"]["blocked"]) == \
            ("launching", ["slow (ready)"], None)
        detail = http.get(f"/api/processes/{ids['api']}").json()
        assert detail["waiting_for"] == ["slow (ready)"], detail
        # the Daemon family
        api = http.get(f"{API}/status/{ids['api']}").json()["status"]
        assert (api["status"], api["waiting_for"], api["blocked"]) == \
            ("STOPPED", ["slow (ready)"], None)
        # pmd list, as a table and as JSON
        rows = {line.split()[1]: line for line in pmd_cli(pmd, "list").splitlines()[1:]}
        assert "launching (blocked: migrate exited 3)" in rows["app"], rows
        assert "launching (waiting for slow (ready))" in rows["api"], rows
        listed = {p["name"]: p for p in json.loads(pmd_cli(pmd, "list", "--json"))}
        assert listed["api"]["waiting_for"] == ["slow (ready)"]
        log = pmd.stderr_text()
    assert "app: waiting for migrate (completed_successfully) (blocked: migrate exited 3)" \
        in log
    assert not (base / "app.start").exists() and not (base / "api.start").exists()


@pytest.mark.skipif(not can_unshare(), reason="needs unshare --pid (root)")
def test_a_hup_reload_keeps_the_graph_consistent(tmp_path: Path) -> None:
    """pmd as PID 1: a programs.json with a cycle, or without a program others need, is
    refused on SIGHUP and changes nothing (pids, waits); one that adds a dependent is
    taken, and the new program waits and starts in order."""
    base = tmp_path / "marks"
    base.mkdir()
    gate = base / "go"
    db = prog("db", f"sh -c 'while [ ! -e {gate} ]; do sleep 0.05; done; "
                    f"date +%s.%N > {base}/db.ready; echo up; exec sleep 60'",
              readiness={"log_line": "^up$"})
    api = prog("api", stamp(base, "api"), depends_on=["db"])
    with Pmd(tmp_path / "pmd", [db, api], pid1=True) as pmd:
        http = pmd.http
        ids = {p["name"]: p["id"] for p in http.get(f"{API}/programs").json()["programs"]}

        def status(name: str) -> dict[str, Any]:
            return dict(http.get(f"{API}/status/{ids[name]}").json()["status"])

        before = pmd.wait_for(lambda: (s := status("db"))["status"] == "RUNNING" and s)
        assert status("api")["waiting_for"] == ["db (ready)"]
        listed = http.get(f"{API}/programs").json()
        refusals = [
            ([{**db, "depends_on": ["api"]}, api], "a dependency cycle: "),
            ([api], "'api' depends on 'db', which is not a program"),
        ]
        for n, (programs, words) in enumerate(refusals, 1):
            pmd.write_programs(programs)
            pmd.signal(signal.SIGHUP)
            pmd.wait_for(lambda n=n: pmd.stderr_text().count("programs.json not reloaded") == n)
            problem = http.get(f"{API}/health").json()["config_problem"]
            assert "reload refused" in problem and words in problem, problem
            assert http.get(f"{API}/programs").json() == listed
            assert (status("db")["pid"], status("api")["waiting_for"]) == \
                (before["pid"], ["db (ready)"])
        assert "a dependency cycle: api -> db -> api" in pmd.stderr_text()
        # dependents released together: priority orders them (late is listed, so asks,
        # first), then each waits its own delay_seconds
        pmd.write_programs([db, api,
                            prog("late", stamp(base, "late"), priority=900,
                                 depends_on={"api": "running"}),
                            prog("worker", stamp(base, "worker"), priority=500,
                                 delay_seconds=1, depends_on={"api": "running"}),
                            prog("early", stamp(base, "early"), priority=10,
                                 depends_on={"api": "running"})])
        pmd.signal(signal.SIGHUP)
        ids["worker"] = pmd.wait_for(lambda: {p["name"]: p["id"] for p in http.get(
            f"{API}/programs").json()["programs"]}.get("worker"))
        assert status("worker")["waiting_for"] == ["api (running)"]
        assert status("db")["pid"] == before["pid"]
        gate.touch()
        pmd.wait_for(lambda: written(base / "worker.start"), timeout=10)
        log = pmd.stderr_text()
    assert started(base, "api") >= float((base / "db.ready").read_text())
    # api's startsecs (0.5), then worker's own delay_seconds (1)
    assert started(base, "worker") - started(base, "api") >= 0.5 + 1 - 0.3
    assert started(base, "early") - started(base, "api") >= 0.5 - 0.3
    # released in the same turn: the lower priority number first (pmd's own event order)
    assert log.index("late: waiting for") < log.index("early: waiting for")
    assert log.index("early: STOPPED -> STARTING") < log.index("late: STOPPED -> STARTING")
