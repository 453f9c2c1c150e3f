"""What an orchestrator sees of pmd as PID 1: the three probes (on the API and on the probe
port), the shutdown delay, the shutdown budget, and a probe port that cannot be had."""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from integration.helpers import children, status
from tests.api.process_helpers import free_ports
from tests.harness import Pmd, can_unshare

pytestmark = pytest.mark.skipif(not can_unshare(), reason="needs unshare --pid (root)")

#: A marker line a program writes on its stop signal: its own clock, not a poll's.
MARK_TERM = "trap 'date +%s.%N >> {name}.term' TERM; while :; do sleep 0.1; done"


def probe(port: int, path: str, timeout: float = 3.0) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=timeout)


def stubborn(base: Path, name: str, priority: int, **fields: Any) -> dict[str, Any]:
    """A program that notes each stop signal it gets (in its folder) and goes on running."""
    return {"name": name, "command": f"sh -c \"{MARK_TERM.format(name=name)}\"",
            "user": "root", "boot": True, "priority": priority, "stop_timeout": 10,
            "directory": str(base), **fields}


def marks(base: Path, name: str) -> list[float]:
    path = base / f"{name}.term"
    return [float(x) for x in path.read_text().split()] if path.exists() else []


def test_livez_stays_200_through_a_crash_loop_and_fails_when_the_loop_is_wedged(tmp_path):
    port = free_ports(1)
    programs = [
        {"name": "web", "command": "sleep 600", "user": "root", "boot": True},
        {"name": "crash", "command": "sh -c 'exit 1'", "user": "root", "boot": True,
         "startsecs": 0, "autorestart": "true", "startretries": -1,
         "start_limit_burst": 0},
    ]
    with Pmd(tmp_path, programs, pid1=True, env={"PMD_TEST_WEDGE": "3"},
             args=["--probe-port", f"127.0.0.1:{port}"]) as pmd:
        http = pmd.http
        pmd.wait_for(lambda: status(http, 2)["restarts"] >= 30, what="a crash loop")
        for _ in range(10):
            assert probe(port, "/livez").status_code == 200
            assert http.get("/livez").json() == {"live": True}
        assert status(http, 2)["restarts"] >= 30  # it kept looping meanwhile

        pmd.signal(signal.SIGUSR2)
        pmd.wait_for(lambda: "PMD_TEST_WEDGE: blocking" in pmd.stderr_text(),
                     what="the wedge")
        wedged = probe(port, "/livez")
        assert wedged.status_code == 503
        assert wedged.json()["live"] is False
        assert "did not answer" in wedged.json()["reason"]
        with pytest.raises(httpx.TimeoutException):
            http.get("/livez", timeout=1.0)  # the API port cannot answer at all
        pmd.wait_for(lambda: probe(port, "/livez").status_code == 200, what="live again")


def test_readyz_follows_readiness_both_ways_with_the_ready_verdict(tmp_path):
    port = free_ports(1)
    gate = {"name": "gate", "user": "root", "boot": True, "directory": str(tmp_path),
            "command": "sh -c 'while [ ! -e go ]; do sleep 0.05; done; echo listening; "
                       "exec sleep 600'",
            "readiness": {"log_line": "^listening"}}
    with Pmd(tmp_path, [gate], pid1=True, api_key="k3y",
             args=["--probe-port", f"127.0.0.1:{port}"]) as pmd:
        http = pmd.http  # with the key: names

        def verdicts() -> list[tuple[int, dict[str, Any]]]:
            answers = [http.get("/readyz"), probe(port, "/readyz"),
                       http.get("/api/v1/daemon/ready")]
            return [(r.status_code, {k: r.json()[k] for k in ("ready", "programs")})
                    for r in answers]

        pmd.wait_for(lambda: status(http, 1)["status"] == "RUNNING", what="gate running")
        not_ready = verdicts()
        assert {v[0] for v in not_ready} == {503}
        assert not_ready[0] == not_ready[1] == not_ready[2]
        verbose = http.get("/readyz?verbose").json()
        assert verbose["not_ready"][0]["name"] == "gate"
        assert verbose["not_ready"][0]["reason"] == "not ready yet (log_line)"
        assert "not_ready" not in probe(port, "/readyz?verbose").json()  # no key there
        assert "not_ready" not in httpx.get(f"{pmd.url}/readyz?verbose").json()

        (tmp_path / "go").touch()
        pmd.wait_for(lambda: {v[0] for v in verdicts()} == {200}, what="ready")
        assert verdicts()[0][1] == {"ready": True,
                                    "programs": {"total": 1, "ready": 1, "not_ready": 0}}

        assert http.post("/api/v1/daemon/programs/1/stop").status_code == 200
        pmd.wait_for(lambda: {v[0] for v in verdicts()} == {503}, what="not ready again")
        assert http.get("/readyz?verbose").json()["not_ready"][0]["reason"] == "stopped"


def test_startupz_turns_200_once_every_boot_program_started_or_settled(tmp_path):
    port = free_ports(1)
    programs = [
        {"name": "late", "command": "sleep 600", "user": "root", "boot": True,
         "delay_seconds": 2},
        {"name": "migrate", "command": "sh -c 'exit 3'", "user": "root", "boot": True,
         "oneshot": True},
        {"name": "app", "command": "sleep 600", "user": "root", "boot": True,
         "depends_on": {"migrate": "completed_successfully"}},
    ]
    with Pmd(tmp_path, programs, pid1=True,
             args=["--probe-port", f"127.0.0.1:{port}"]) as pmd:
        http = pmd.http
        early = http.get("/startupz?verbose")
        if early.status_code == 503:  # late is in its delay
            assert status(http, 1)["status"] == "STOPPED"
            assert [p["name"] for p in early.json()["not_started"]] == ["late"]
            assert early.json()["not_started"][0]["reason"] == "not started yet"
        done = pmd.wait_for(lambda: (r := probe(port, "/startupz")).status_code == 200 and r,
                            what="boot finished")
        assert done.json() == {"started": True,
                               "programs": {"total": 3, "started": 3, "not_started": 0}}
        assert status(http, 1)["status"] != "STOPPED"  # late has started
        assert "migrate exited 3" in (status(http, 3).get("blocked") or "")  # app settled
        assert http.get("/startupz").status_code == 200
        assert http.get("/readyz").status_code == 503  # started is not ready


def test_shutdown_delay_keeps_serving_while_readyz_says_503(tmp_path):
    port, web_port = free_ports(1), free_ports(1)
    server = ("import http.server, signal, sys, time\n"
              "def stop(*_):\n"
              "    open('web.term', 'w').write(repr(time.time())); sys.exit(0)\n"
              "signal.signal(signal.SIGTERM, stop)\n"
              f"http.server.HTTPServer(('127.0.0.1', {web_port}), "
              "http.server.SimpleHTTPRequestHandler).serve_forever()\n")
    (tmp_path / "server.py").write_text(server)
    web = {"name": "web", "command": "python3 server.py", "user": "root", "boot": True,
           "directory": str(tmp_path)}
    with Pmd(tmp_path, [web], pid1=True,
             args=["--probe-port", f"127.0.0.1:{port}", "--shutdown-delay", "2"]) as pmd:
        pmd.wait_for(lambda: probe(port, "/readyz").status_code == 200, what="ready")
        httpx.get(f"http://127.0.0.1:{web_port}/", timeout=3).raise_for_status()
        marker = tmp_path / "web.term"
        sent = time.time()
        pmd.signal(signal.SIGTERM)
        served = 0
        while not marker.exists():
            try:
                answer = httpx.get(f"http://127.0.0.1:{web_port}/", timeout=3)
                ready = probe(port, "/readyz")
            except httpx.TransportError:
                if marker.exists():
                    break  # web got its stop signal meanwhile
                raise
            if marker.exists():
                break  # the answers of this round may straddle the stop: not counted
            assert answer.status_code == 200
            assert ready.status_code == 503
            assert ready.json()["shutting_down"] is True
            served += 1
            time.sleep(0.05)
        assert served >= 5
        term_at = float(marker.read_text())
        assert 2.0 - 0.3 <= term_at - sent <= 2.0 + 1.0
        assert pmd.wait() == 0
    took = re.search(r"shutdown took ([\d.]+) s \(([\d.]+) s of delay", pmd.stderr_text())
    assert took is not None and float(took.group(2)) >= 2.0 - 0.3


def test_a_second_term_skips_the_shutdown_delay(tmp_path):
    with Pmd(tmp_path, [stubborn(tmp_path, "web", 100, stop_signal="TERM", stop_timeout=5)],
             pid1=True, args=["--shutdown-delay", "30"]) as pmd:
        # web is RUNNING (ready) 1 s after its spawn, which comes before the API: polled
        # every 0.1 s, /readyz stays under the API's burst limit (20 in 10 s) meanwhile
        pmd.wait_for(lambda: pmd.http.get("/readyz").status_code == 200, interval=0.1,
                     what="ready")
        pmd.signal(signal.SIGTERM)
        pmd.wait_for(lambda: "shutdown in 30 s" in pmd.stderr_text(), what="the delay")
        second = time.time()
        pmd.signal(signal.SIGTERM)
        pmd.wait_for(lambda: marks(tmp_path, "web"), what="web's stop signal")
        # skipped, not waited out: web's own mark, well inside the 30 s delay (a loaded
        # machine has held a signal's handling past 1 s)
        assert marks(tmp_path, "web")[0] - second < 5.0
        assert "the shutdown delay is skipped" in pmd.stderr_text()


def test_a_grace_too_small_is_reported_and_every_program_is_signalled_in_time(tmp_path):
    programs = [stubborn(tmp_path, "front", 200), stubborn(tmp_path, "back", 100)]
    with Pmd(tmp_path, programs, pid1=True, grace=8,
             env={"PMD_TERMINATION_GRACE": "4"}) as pmd:
        plan = pmd.http.get("/api/v1/daemon/health").json()["shutdown"]
        assert (plan["worst_case_seconds"], plan["budget_seconds"]) == (20.0, 3.0)
        assert [w["programs"] for w in plan["waves"]] == [["front"], ["back"]]
        assert "front 10 s + back 10 s" in plan["problem"]
        assert "shutdown budget: stopping every program may take 20 s" in pmd.stderr_text()
        pmd.wait_for(lambda: all(status(pmd.http, i)["status"] == "RUNNING" for i in (1, 2)),
                     what="both running")
        sent = time.time()
        pmd.signal(signal.SIGTERM)
        assert pmd.wait() == 0
    front, back = marks(tmp_path, "front"), marks(tmp_path, "back")
    assert front and back, "each program got its stop signal"
    assert front[0] < back[0]  # in order: dependents and higher priority first
    assert back[0] - sent < 4.0 - 0.3  # well before the orchestrator's SIGKILL
    took = re.search(r"shutdown took ([\d.]+) s .*; killed: (.*)", pmd.stderr_text())
    assert took is not None
    assert float(took.group(1)) < 4.0 - 0.3
    assert set(took.group(2).split(", ")) == {"front", "back"}


def test_a_probe_port_that_cannot_be_bound_fails_the_start(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        pmd = Pmd(tmp_path, [stubborn(tmp_path, "web", 100)], pid1=True,
                  args=["--probe-port", f"127.0.0.1:{port}"])
        pmd.start(wait=False)
        try:
            assert pmd.wait(15) == 1
        finally:
            pmd.kill_all()
    finally:
        taken.close()
    assert f"probe port 127.0.0.1:{port} cannot be bound: Address already in use" in \
        pmd.stderr_text()
    assert "web: STOPPED -> STARTING" not in pmd.stderr_text()  # nothing was started


def test_the_probe_port_is_kept_across_reexec(tmp_path):
    port = free_ports(1)
    with Pmd(tmp_path, [stubborn(tmp_path, "web", 100)], pid1=True,
             args=["--probe-port", f"127.0.0.1:{port}"]) as pmd:
        before = pmd.pid
        assert pmd.uds.post("/api/v1/daemon/reexec").status_code == 200
        pmd.wait_for(lambda: "re-executed" in pmd.stderr_text(), what="the re-exec")
        assert probe(port, "/livez").status_code == 200
        assert pmd.pid == before
        assert "handed-over probe listener" not in pmd.stderr_text()


class SharedNamespacePmd(Pmd):
    """pmd as in a pod with shareProcessNamespace: true: PID 2 of a PID namespace whose
    PID 1 is another process (a shell that only waits, as the pause container does)."""

    def argv(self) -> list[str]:
        self.pid1 = False
        inner = super().argv()
        self.pid1 = True
        return ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c",
                '"$@" & wait', "pause", *inner]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        pause = self.wait_for(lambda: children(self.proc.pid), what="the pause") \
            if self.proc else []
        return int(self.wait_for(lambda: children(pause[0]), what="pmd")[0])


def test_not_pid_1_in_a_shared_process_namespace_pmd_is_the_subreaper(tmp_path):
    # A program whose child is orphaned at once: it must come to pmd, not to PID 1.
    forker = {"name": "forker", "user": "root", "boot": True,
              "command": "sh -c '(sleep 300 &) ; exec sleep 600'"}
    with SharedNamespacePmd(tmp_path, [forker], pid1=True) as pmd:
        assert Path(f"/proc/{pmd.pid}/status").read_text().count("NSpid:") == 1
        nspid = next(line for line in Path(f"/proc/{pmd.pid}/status").read_text()
                     .splitlines() if line.startswith("NSpid:")).split()
        assert nspid[-1] == "2"  # pmd is not PID 1 of its namespace

        def orphans() -> list[int]:
            return [c for c in children(pmd.pid)
                    if Path(f"/proc/{c}/cmdline").read_bytes() == b"sleep\x00300\x00"]

        assert pmd.wait_for(orphans, what="the orphan adopted by pmd")
        assert "cannot become a child subreaper" not in pmd.stderr_text()
        assert pmd.http.get("/livez").status_code == 200
