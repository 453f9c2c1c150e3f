"""Stopping and restarting as configured, with real programs and pmd's own event
timestamps (from /ws): a list of stop signals followed step by step, restart_delays
spacing restarts, max_age with jitter recycling replicas apart, rlimits in the child's
/proc/PID/limits."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from tests.api.helpers import API, assert_error, program, wait_until
from tests.api.process_helpers import ENV
from tests.harness import Pmd, both_inits


class Events:
    """Every message of pmd's /ws, read in a thread of its own while the test acts."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def of(self, name: str, kind: str = "state_change") -> list[dict[str, Any]]:
        with self.lock:
            return [m for m in self.messages if m.get("type") == kind and m.get("name") == name]

    def wait(self, predicate: Any, timeout: float = 15.0, what: str = "events") -> Any:
        return wait_until(predicate, timeout=timeout, what=what)


@contextmanager
def events(pmd: Pmd) -> Iterator[Events]:
    seen = Events()
    with connect(f"ws://127.0.0.1:{pmd.port}/ws?interval=300", open_timeout=5) as ws:
        ws.recv(timeout=5)  # the snapshot: what follows happens after this point

        def read() -> None:
            try:
                for raw in ws:
                    with seen.lock:
                        seen.messages.append(json.loads(raw))
            except Exception:  # noqa: BLE001 - closed at the end of the test
                return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            yield seen
        finally:
            ws.close()
            reader.join(5)


def add(pmd: Pmd, body: dict[str, object]) -> int:
    response = pmd.http.post(f"{API}/programs/add", json=body)
    assert response.status_code in (200, 201), response.text
    return int(response.json()["program"]["id"])


def trap_all(marks: Path, then: str = "") -> str:
    """A shell that writes the time each signal arrives to <marks>/<SIG>, and goes on."""
    traps = " ".join(f"trap \"date +%s.%N > {marks}/{sig}; {then}\" {sig};"
                     for sig in ("QUIT", "INT", "TERM", "HUP"))
    return f"sh -c '{traps} while :; do sleep 0.05; done'"


@both_inits
def test_the_stop_signal_list_is_followed_step_by_step(tmp_path: Path, pid1: bool) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    steps = [{"signal": "QUIT", "wait": 0.8}, {"signal": "INT", "wait": 0.8},
             {"signal": "SIGTERM", "wait": 0.8}]
    with Pmd(tmp_path / "pmd", [], pid1=pid1, env=ENV) as pmd, events(pmd) as seen:
        pid = add(pmd, program("stubborn", trap_all(marks), stop_signal=steps,
                               stop_timeout=60, startsecs=0, boot=True))
        seen.wait(lambda: any(m["to"] == "RUNNING" for m in seen.of("stubborn")))
        assert pmd.http.post(f"{API}/programs/{pid}/stop", json={}).status_code == 200
        stopped = seen.wait(lambda: [m for m in seen.of("stubborn") if m["to"] == "STOPPED"])
        sent = seen.of("stubborn", "signal")
        assert [(m["signal"], m["step"], m["steps"]) for m in sent] == [
            ("SIGQUIT", 1, 3), ("SIGINT", 2, 3), ("SIGTERM", 3, 3), ("SIGKILL", 4, 3)]
        times = [m["timestamp"] for m in sent]
        for earlier, later in zip(times, times[1:], strict=False):
            assert 0.8 <= later - earlier < 1.1, times  # each step waited its `wait`
        assert stopped[0]["exit_code"] == 137  # killed after the last step
        # the program received them in that order, each after the previous step's wait
        got = [float((marks / sig).read_text()) for sig in ("QUIT", "INT", "TERM")]
        assert got == sorted(got) and got[2] - got[0] >= 1.6 - 0.1, got

        # one that exits at the first step is sent nothing more
        quick = tmp_path / "quick"
        quick.mkdir()
        qid = add(pmd, program("quick", trap_all(quick, then="exit 0"), stop_signal=steps,
                               startsecs=0, boot=True))
        seen.wait(lambda: any(m["to"] == "RUNNING" for m in seen.of("quick")))
        pmd.http.post(f"{API}/programs/{qid}/stop", json={})
        done = seen.wait(lambda: [m for m in seen.of("quick") if m["to"] == "STOPPED"])
        assert done[0]["exit_code"] == 0
        assert [m["signal"] for m in seen.of("quick", "signal")] == ["SIGQUIT"]
        assert not (quick / "INT").exists()


def test_a_single_stop_signal_keeps_its_meaning_and_bad_lists_are_400(tmp_path: Path) -> None:
    with Pmd(tmp_path / "pmd", [], env=ENV) as pmd:
        http = pmd.http
        url = f"{API}/programs/add"
        assert_error(http.post(url, json=program("a", stop_signal=[])), 400,
                     "VALIDATION_ERROR", "stop_signal")
        assert_error(http.post(url, json=program("b", stop_signal=[{"signal": "KILL"}])), 400,
                     "VALIDATION_ERROR", "stop_signal")
        assert_error(http.post(url, json=program("c", stop_signal=[
            {"signal": "TERM", "wait": -1}])), 400, "VALIDATION_ERROR", "stop_signal")
        assert_error(http.post(url, json=program("d", restart_delays=[1, -2])), 400,
                     "VALIDATION_ERROR", "restart_delays.1")
        assert_error(http.post(url, json=program("e", max_age_jitter=3)), 400,
                     "VALIDATION_ERROR")
        assert http.get(f"{API}/programs").json()["programs"] == []
        pid = add(pmd, program("f", stop_signal="sigint"))
        got = http.get(f"{API}/programs/{pid}").json()["program"]
        assert got["stop_signal"] == "INT"


@both_inits
def test_restart_delays_space_the_restarts_as_listed(tmp_path: Path, pid1: bool) -> None:
    marks = tmp_path / "starts"
    delays = [0.4, 1.0, 1.6]
    with Pmd(tmp_path / "pmd", [], pid1=pid1, env=ENV) as pmd, events(pmd) as seen:
        add(pmd, program("flaky", f"sh -c 'date +%s.%N >> {marks}; exit 3'", boot=True,
                         startsecs=0, autorestart=True, start_limit_burst=0,
                         restart_delays=delays))
        seen.wait(lambda: len([m for m in seen.of("flaky") if m["to"] == "STARTING"]) >= 5
                  and marks.exists() and len(marks.read_text().split()) >= 5)
        states = seen.of("flaky")
        exits = [m["timestamp"] for m in states if m["to"] == "EXITED"]
        starts = [m["timestamp"] for m in states if m["to"] == "STARTING"]
        waits = [m for m in states if m["to"] == "BACKOFF"]
        assert all(m["reason"] == "restart_delay" for m in waits), waits
        # after exit n, the start n+1 comes after restart_delays[n] (the last repeating)
        for n, expected in enumerate([*delays, delays[-1]]):
            gap = starts[n + 1] - exits[n]
            assert expected <= gap < expected + 0.3, (n, gap, expected)
        lines = [float(x) for x in marks.read_text().split()]
        for n, expected in enumerate([*delays, delays[-1]]):
            assert lines[n + 1] - lines[n] >= expected


@both_inits
def test_max_age_with_jitter_recycles_replicas_apart(tmp_path: Path, pid1: bool) -> None:
    names = [f"replica{n}" for n in range(5)]
    with Pmd(tmp_path / "pmd", [], pid1=pid1, env=ENV) as pmd, events(pmd) as seen:
        ids = [add(pmd, program(name, "sleep 60", startsecs=0, max_age=1, max_age_jitter=3))
               for name in names]
        add(pmd, program("steady", "sleep 60", startsecs=0, max_age=1))
        for pid in [*ids, ids[-1] + 1]:
            assert pmd.http.post(f"{API}/programs/{pid}/start", json={}).status_code == 200

        def recycled(name: str) -> list[dict[str, Any]]:
            return [m for m in seen.of(name) if m["to"] == "STOPPING"]

        seen.wait(lambda: all(recycled(n) for n in [*names, "steady"]), timeout=20)
        ages = []
        for name in [*names, "steady"]:
            running = next(m for m in seen.of(name) if m["to"] == "RUNNING")
            stop = recycled(name)[0]
            assert stop["reason"] == "max_age"
            ages.append(stop["timestamp"] - running["timestamp"])
            # and it came back: a recycle is a restart
            seen.wait(lambda name=name: len([m for m in seen.of(name)
                                             if m["to"] == "RUNNING"]) >= 2)
        *jittered, steady = ages
        assert all(1.0 <= age < 4.3 for age in jittered), jittered
        assert 1.0 <= steady < 1.3, steady
        # drawn apart: five replicas started together are not recycled together
        assert max(jittered) - min(jittered) >= 0.3, jittered


@both_inits
def test_rlimits_are_set_in_the_child(tmp_path: Path, pid1: bool) -> None:
    out = tmp_path / "limits.txt"
    command = f"sh -c 'cat /proc/$$$$/limits > {out}.tmp; mv {out}.tmp {out}; exec sleep 60'"
    with Pmd(tmp_path / "pmd", [], pid1=pid1, env=ENV) as pmd:
        add(pmd, program("limited", command, boot=True, startsecs=0,
                         rlimits={"nofile": {"soft": 256, "hard": 512}, "core": 0,
                                  "nproc": 1000, "as": "unlimited", "cpu": 3600}))
        wait_until(out.exists, timeout=10, what="the child's limits")
        limits = {line[:26].strip(): line[26:].split()[:2]
                  for line in out.read_text().splitlines()[1:]}
        assert limits["Max open files"] == ["256", "512"]
        assert limits["Max core file size"] == ["0", "0"]
        assert limits["Max processes"] == ["1000", "1000"]
        assert limits["Max address space"] == ["unlimited", "unlimited"]
        assert limits["Max cpu time"] == ["3600", "3600"]
        error = assert_error(pmd.http.post(f"{API}/programs/add", json=program(
            "greedy", rlimits={"nofile": 2**40})), 400, "VALIDATION_ERROR", "rlimits")
        assert "hard limit" in error["message"]


@both_inits
def test_on_fatal_restart_later_retries_after_its_wait(tmp_path: Path, pid1: bool) -> None:
    with Pmd(tmp_path / "pmd", [], pid1=pid1, env=ENV) as pmd, events(pmd) as seen:
        add(pmd, program("flaky", "sh -c 'exit 4'", boot=True, startsecs=1, startretries=0,
                         on_fatal="restart_later", fatal_retry_after=1))
        seen.wait(lambda: len([m for m in seen.of("flaky") if m["to"] == "FATAL"]) >= 3)
        states = seen.of("flaky")
        fatal = [m["timestamp"] for m in states if m["to"] == "FATAL"]
        starts = [m["timestamp"] for m in states if m["to"] == "STARTING"]
        for n in range(2):  # each FATAL is followed by a start fatal_retry_after later
            gap = starts[n + 1] - fatal[n]
            assert 1.0 <= gap < 1.3, (n, gap)


@both_inits
def test_on_fatal_stop_container_exits_with_the_programs_code(tmp_path: Path,
                                                               pid1: bool) -> None:
    programs = [
        {"name": "vital", "command": "sh -c 'exit 7'", "boot": True, "startsecs": 1,
         "startretries": 1, "on_fatal": "stop_container"},
        {"name": "other", "command": "sleep 60", "boot": True, "startsecs": 0},
    ]
    pmd = Pmd(tmp_path / "pmd", programs, pid1=pid1)
    try:
        pmd.start(wait=False)  # it may be gone before its API is up on a loaded machine
        assert pmd.wait(timeout=30) == 7
    finally:
        pmd.stop()
        pmd.kill_all()
    assert "vital is gone for good" in pmd.stderr_text()


@both_inits
def test_on_fatal_stop_dependents_stops_them_and_starts_them_on_recovery(
        tmp_path: Path, pid1: bool) -> None:
    ok = tmp_path / "db.ok"
    ok.touch()
    db = f"sh -c 'test -e {ok} || exit 1; exec sleep 60'"
    with Pmd(tmp_path / "pmd", [], pid1=pid1, env=ENV) as pmd, events(pmd) as seen:
        http = pmd.http
        dbid = add(pmd, program("db", db, boot=True, startsecs=0.5, startretries=0,
                                on_fatal="stop_dependents"))
        add(pmd, program("api", "sleep 60", boot=True, startsecs=0,
                         depends_on={"db": "running"}))
        add(pmd, program("worker", "sleep 60", boot=True, startsecs=0,
                         depends_on={"api": "running"}))
        add(pmd, program("bystander", "sleep 60", boot=True, startsecs=0))

        def entered(name: str, state: str) -> list[dict[str, Any]]:
            return [m for m in seen.of(name) if m["to"] == state]

        seen.wait(lambda: entered("worker", "RUNNING"))
        ok.unlink()
        assert http.post(f"{API}/programs/{dbid}/restart", json={}).status_code == 200
        seen.wait(lambda: entered("api", "STOPPED") and entered("worker", "STOPPED"))
        fatal_at = entered("db", "FATAL")[0]["timestamp"]
        assert entered("api", "STOPPING")[0]["timestamp"] >= fatal_at
        assert entered("worker", "STOPPING")[0]["timestamp"] >= fatal_at
        assert not entered("bystander", "STOPPING")
        # it recovers (started by hand): its dependents start again, in dependency order
        ok.touch()
        assert http.post(f"{API}/programs/{dbid}/start", json={}).status_code == 200
        seen.wait(lambda: len(entered("worker", "RUNNING")) == 2)
        back = entered("db", "RUNNING")[-1]["timestamp"]
        api_again = entered("api", "STARTING")[-1]["timestamp"]
        assert back <= api_again <= entered("worker", "STARTING")[-1]["timestamp"]


@both_inits
def test_a_watched_change_restarts_the_program_then_its_dependents_in_order(
        tmp_path: Path, pid1: bool) -> None:
    conf = tmp_path / "conf"
    (conf / "sub").mkdir(parents=True)
    with Pmd(tmp_path / "pmd", [], pid1=pid1, env=ENV) as pmd, events(pmd) as seen:
        add(pmd, program("cfg", "sleep 60", boot=True, startsecs=0.3,
                         watch={"paths": [str(conf)], "ignore": ["*.tmp"], "debounce": 0.3}))
        add(pmd, program("api", "sleep 60", boot=True, startsecs=0.3,
                         depends_on={"cfg": "ready"}))
        add(pmd, program("worker", "sleep 60", boot=True, startsecs=0.3,
                         depends_on=["api"]))
        add(pmd, program("bystander", "sleep 60", boot=True, startsecs=0))

        def entered(name: str, state: str) -> list[dict[str, Any]]:
            return [m for m in seen.of(name) if m["to"] == state]

        seen.wait(lambda: entered("worker", "RUNNING"))
        # an ignored name changes nothing (three times the debounce, and no restart)
        (conf / "sub" / "scratch.tmp").write_text("x")
        time.sleep(1.0)
        assert not entered("cfg", "STOPPING")
        # a real change, in a subdirectory, written in three bursts: one restart
        for n in range(3):
            (conf / "sub" / "app.ini").write_text(f"v{n}")
        seen.wait(lambda: len(entered("worker", "RUNNING")) == 2, timeout=20)
        for name in ("cfg", "api", "worker"):
            stops = entered(name, "STOPPING")
            assert [m["reason"] for m in stops] == ["watch"], (name, stops)
        assert not entered("bystander", "STOPPING")
        # in dependency order: each restarts once the one it depends on is ready again
        ready = {m["name"]: m["timestamp"] for m in seen.of("cfg", "ready")[1:]
                 + seen.of("api", "ready")[1:]}
        assert entered("api", "STOPPING")[0]["timestamp"] >= ready["cfg"]
        assert entered("worker", "STOPPING")[0]["timestamp"] >= ready["api"]


def test_a_watched_folder_holding_pmds_own_logs_is_not_changed_by_them(tmp_path: Path) -> None:
    """pmd's log and state folders inside a watched folder (an app folder that holds
    everything, as `pmd import` of a PM2 `watch: true` gives): the program's own log lines
    are no change, or it would restart forever; a file of the app's still is."""
    marks = tmp_path / "lines"
    with Pmd(tmp_path / "pmd", [], env=ENV) as pmd, events(pmd) as seen:
        add(pmd, program("chatty", "sh -c 'while :; do echo line; date +%s.%N >> "
                         f"{marks}; sleep 0.05; done'", boot=True, startsecs=0.3,
                         # the marks, and the files the harness keeps pmd's own output in
                         watch={"paths": [str(tmp_path)], "debounce": 0.2,
                                "ignore": ["lines", "pmd.stdout", "pmd.stderr"]}))
        seen.wait(lambda: [m for m in seen.of("chatty") if m["to"] == "RUNNING"])
        # its lines land in pmd's log folder, inside the watched one, for over a second
        wait_until(lambda: marks.exists() and len(marks.read_text().split()) >= 30,
                   timeout=20)
        assert not [m for m in seen.of("chatty") if m["to"] == "STOPPING"]
        (tmp_path / "app.ini").write_text("v2")
        seen.wait(lambda: [m for m in seen.of("chatty") if m["to"] == "STOPPING"], timeout=20)
        assert [m["reason"] for m in seen.of("chatty") if m["to"] == "STOPPING"] == ["watch"]


def test_cron_and_watch_are_validated_with_the_field_named(tmp_path: Path) -> None:
    with Pmd(tmp_path / "pmd", [], env=ENV) as pmd:
        url = f"{API}/programs/add"
        for bad in ("* * *", "61 * * * *", "every minute"):
            assert_error(pmd.http.post(url, json=program("a", cron_restart=bad)), 400,
                         "VALIDATION_ERROR", "cron_restart")
        assert_error(pmd.http.post(url, json=program("b", watch={"paths": []})), 400,
                     "VALIDATION_ERROR", "watch.paths")
        assert_error(pmd.http.post(url, json=program("c", watch={"paths": ["rel"]})), 400,
                     "VALIDATION_ERROR")
        assert_error(pmd.http.post(url, json=program("d", watch={
            "paths": ["/tmp"], "debounce": -1})), 400, "VALIDATION_ERROR", "watch.debounce")
        assert pmd.http.get(f"{API}/programs").json()["programs"] == []


@both_inits
def test_cron_restart_restarts_on_its_schedule(tmp_path: Path, pid1: bool) -> None:
    with Pmd(tmp_path / "pmd", [], pid1=pid1, env=ENV) as pmd, events(pmd) as seen:
        # six fields: every 2 seconds (a test cannot wait for minutes)
        add(pmd, program("nightly", "sleep 60", boot=True, startsecs=0,
                         cron_restart="* * * * * */2"))
        add(pmd, program("idle", "sleep 60", startsecs=0, cron_restart="* * * * * */2"))
        seen.wait(lambda: len([m for m in seen.of("nightly") if m["to"] == "STOPPING"]) >= 3,
                  timeout=15)
        stops = [m for m in seen.of("nightly") if m["to"] == "STOPPING"][:3]
        assert all(m["reason"] == "cron" for m in stops)
        for stop in stops:  # on the schedule's moments: even seconds
            second = stop["timestamp"]
            assert int(second) % 2 == 0 and second - int(second) < 0.3, second
        # a program that is not running is not started by its schedule
        assert not seen.of("idle")
