"""The container's readiness, with pmd as PID 1: a graph of five programs (a oneshot
migration, a db that says READY=1 on its notify socket a second after it is let go and is
then healthy, a cache with an fd notification, an api that needs db healthy and cache
ready, a worker that needs api started) boots in order, seen from the programs' own
marker files; GET /api/v1/daemon/ready is 503 until every one is ready and 200 from then
on, with names only for a caller with the key; `pmd ready` agrees by its exit code."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.test_dependencies_boot import prog, stamp, started, written
from tests.harness import ROOT, Pmd, can_unshare

pytestmark = pytest.mark.skipif(not can_unshare(), reason="needs unshare --pid (root)")

KEY = "ready-secret"
READY = "/api/v1/daemon/ready"
NOTIFY = """
import os, socket, sys, time
gate, mark = sys.argv[1], sys.argv[2]
while not os.path.exists(gate):
    time.sleep(0.05)
time.sleep(1)
open(mark, "w").write(repr(time.time()) + "\\n")
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
    s.sendto(b"READY=1\\nSTATUS=accepting connections", os.environ["NOTIFY_SOCKET"])
time.sleep(60)
"""


def marked(path: Path) -> float:
    return float(path.read_text())


def pmd_ready(pmd: Pmd, *args: str) -> subprocess.CompletedProcess[str]:
    binary = ROOT / ".venv" / "bin" / "pmd"
    argv = [str(binary)] if binary.exists() else [sys.executable, "-m", "pmd_init.cli.pmd"]
    env = {**os.environ, "PMD_SOCKET": str(pmd.socket), "PYTHONPATH": str(ROOT)}
    env.pop("PMD_URL", None)
    return subprocess.run([*argv, "ready", *args], capture_output=True, text=True, env=env,
                          timeout=30)


def test_a_graph_of_five_boots_in_order_and_ready_turns_200_when_all_are(
        tmp_path: Path) -> None:
    base = tmp_path / "marks"
    base.mkdir()
    gate = base / "go"
    (base / "notify.py").write_text(NOTIFY)
    programs = [
        prog("migrate", f"sh -c 'sleep 0.3; date +%s.%N > {base}/migrate.done'",
             oneshot=True),
        prog("db", f"sh -c 'date +%s.%N > {base}/db.start; "
                   f"exec python3 {base}/notify.py {gate} {base}/db.ready'",
             depends_on={"migrate": "completed_successfully"},
             readiness={"notify": True, "timeout_seconds": 60},
             health_check={"type": "script", "command": f"test -e {base}/db.ready",
                           "interval": 0.2}),
        prog("cache", f"sh -c 'sleep 0.5; date +%s.%N > {base}/cache.ready; echo >&3; "
                      "exec sleep 60 3>&-'", readiness={"fd": 3}),
        prog("api", stamp(base, "api"), depends_on={"db": "healthy", "cache": "ready"}),
        prog("worker", stamp(base, "worker"), depends_on={"api": "started"}),
    ]
    with Pmd(tmp_path / "pmd", programs, pid1=True, api_key=KEY) as pmd:
        keyed, anonymous, uds = pmd.http, pmd.http, pmd.uds
        anonymous.headers.pop("X-API-Key")
        # db waits for the gate: nothing can be ready before it is opened
        pmd.wait_for(lambda: written(base / "cache.ready") and written(base / "db.start"))
        answer = keyed.get(READY)
        assert answer.status_code == 503, answer.text
        body = answer.json()
        assert body["ready"] is False and body["programs"]["total"] == 5
        reasons = {r["name"]: r for r in body["not_ready"]}
        assert set(reasons) >= {"db", "api", "worker"} and "migrate" not in reasons
        assert reasons["db"]["reason"] == "not ready yet (notify)"
        assert reasons["api"]["state"] == "STOPPED"
        assert reasons["api"]["reason"].startswith("waiting for db (healthy)")
        # without the key: the verdict and the counts, no names
        blind = anonymous.get(READY)
        assert blind.status_code == 503
        assert set(blind.json()) == {"ready", "programs"} and blind.json()["ready"] is False
        assert "not_ready" in uds.get(READY).json()  # the socket is trusted
        result = pmd_ready(pmd)
        assert result.returncode == 1 and "not ready" in result.stdout
        lines = {line.split(" (")[0].strip(): line for line in result.stdout.splitlines()}
        assert lines["db"].endswith("): not ready yet (notify)"), result.stdout

        gate.write_text("go")
        first_ok = pmd.wait_for(lambda: (r := keyed.get(READY)).status_code == 200 and r,
                                timeout=20, what="/ready 200")
        # 200 only once all are: every program's own mark of it is written already
        for mark in ("migrate.done", "db.ready", "cache.ready", "api.start", "worker.start"):
            assert written(base / mark), mark
        assert first_ok.json() == {"ready": True, "programs": {
            "total": 5, "ready": 5, "not_ready": 0}, "not_ready": []}
        assert anonymous.get(READY).json() == {"ready": True, "programs": {
            "total": 5, "ready": 5, "not_ready": 0}}
        result = pmd_ready(pmd)
        assert result.returncode == 0 and "ready: 5 of 5" in result.stdout, result.stdout
        log = pmd.stderr_text()
    # the order, from the programs' own clocks
    assert started(base, "db") >= marked(base / "migrate.done")
    assert started(base, "api") >= max(marked(base / "db.ready"), marked(base / "cache.ready"))
    # "started" is a spawn: the two shells' clocks race, pmd's own events do not
    assert log.index("worker: STOPPED -> STARTING") > log.index("api: STOPPED -> STARTING")


def test_pmd_ready_waits_and_says_when_pmd_does_not_answer(tmp_path: Path) -> None:
    base = tmp_path / "marks"
    base.mkdir()
    programs = [prog("slow", f"sh -c 'sleep 1; date +%s.%N > {base}/slow.ready; "
                             "echo up; exec sleep 60'", readiness={"log_line": "^up$"})]
    with Pmd(tmp_path / "pmd", programs, pid1=True) as pmd:
        pmd.wait_for(lambda: pmd.socket.exists())
        result = pmd_ready(pmd, "--wait", "20")
        assert result.returncode == 0, result.stderr
        assert written(base / "slow.ready")  # it answered 0 only once slow was ready
        assert pmd_ready(pmd, "--json").returncode == 0
    gone = pmd_ready(pmd)
    assert gone.returncode == 1 and gone.stderr.startswith("pmd: cannot reach pmd")


def test_ready_counts_every_port_of_a_range_and_only_enabled_boot_programs(
        tmp_path: Path) -> None:
    """A port range is ready when every instance is (the one that is not is named); a
    oneshot that failed keeps the container unready; programs that are not enabled boot
    programs (disabled, not boot, lazy) are not counted."""
    base = tmp_path / "marks"
    base.mkdir()
    gate = base / "go"
    with socket.socket() as a, socket.socket() as b:  # two free ports side by side
        a.bind(("127.0.0.1", 0))
        first = a.getsockname()[1]
        try:
            b.bind(("127.0.0.1", first + 1))
        except OSError:
            pytest.skip("the port after a free one is taken")
    programs = [
        # the range's second port waits for the gate before it says it is up
        prog("web", f"sh -c 'if [ \"$PORT\" = {first + 1} ]; then while [ ! -e {gate} ]; "
                    "do sleep 0.05; done; fi; echo up; exec sleep 60'",
             port_range={"start": first, "end": first + 1},
             readiness={"log_line": "^up$"}),
        prog("task", f"sh -c 'while [ ! -e {gate} ]; do sleep 0.05; done; exit 3'",
             oneshot=True),
        prog("off", "sleep 60", enabled=False),
        prog("manual", "sleep 60", boot=False),
        prog("lazy", "sleep 60", boot=False, lazy_load=True),
    ]
    with Pmd(tmp_path / "pmd", programs, pid1=True) as pmd:
        http = pmd.http
        ids = {p["name"]: p["id"] for p in http.get("/api/v1/daemon/programs").json()
               ["programs"]}
        pmd.wait_for(lambda: (i := http.get(f"/api/v1/daemon/status/{ids['web']}").json()
                              ["status"]["instances"][0])["status"] == "RUNNING"
                     and i.get("ready"))
        body = http.get(READY).json()
        assert body["programs"] == {"total": 2, "ready": 0, "not_ready": 2}, body
        reasons = {r["name"]: r["reason"] for r in body["not_ready"]}
        assert reasons["web"] == f"web:{first + 1}: not ready yet (log_line)", reasons
        gate.touch()
        pmd.wait_for(lambda: all(i.get("ready") for i in http.get(
            f"/api/v1/daemon/status/{ids['web']}").json()["status"]["instances"]))
        task = pmd.wait_for(lambda: (s := http.get(f"/api/v1/daemon/status/{ids['task']}")
                                     .json()["status"])["status"] == "FATAL" and s)
        assert task["exit_code"] == 3
        answer = http.get(READY)
        assert answer.status_code == 503
        assert answer.json()["programs"] == {"total": 2, "ready": 1, "not_ready": 1}
        assert answer.json()["not_ready"] == [
            {"name": "task", "id": ids["task"], "state": "FATAL", "reason": "FATAL, exited 3"}]
