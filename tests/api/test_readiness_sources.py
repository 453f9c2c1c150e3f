"""Readiness sources with real programs, each releasing its dependents only once it said
so, observed from the programs' own marker files: a startup probe (http and script),
systemd's notify protocol (sent by hand and by `systemd-notify`, forgeries ignored), s6's
notification fd. Each test runs with pmd as a subreaper and as PID 1 of a PID namespace,
where the notify credentials pmd checks are the namespace's pids (a sender outside it,
such as this test, has none there: pid 0)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from tests.api.test_dependencies_boot import API, prog, stamp, started, written
from tests.harness import Pmd, both_inits


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def marked(base: Path, name: str) -> float:
    return float((base / name).read_text())


@both_inits
def test_a_startup_probe_makes_ready_at_its_first_success(tmp_path: Path, pid1: bool) -> None:
    base = tmp_path / "marks"
    base.mkdir()
    port = free_port()
    programs = [
        # serves only after 0.8 s: the first probes are refused
        prog("web", f"sh -c 'sleep 0.8; date +%s.%N > {base}/web.up; "
                    f"exec python3 -m http.server --bind 127.0.0.1 {port}'",
             readiness={"probe": {"type": "http", "url": f"http://127.0.0.1:{port}/"},
                        "timeout_seconds": 20}),
        prog("flag", f"sh -c 'sleep 0.5; date +%s.%N > {base}/flag.up; exec sleep 60'",
             readiness={"probe": {"type": "script", "command": f"test -e {base}/flag.up"}}),
        prog("api", stamp(base, "api"), depends_on={"web": "ready", "flag": "ready"}),
    ]
    with Pmd(tmp_path / "pmd", programs, pid1=pid1) as pmd:
        http = pmd.http
        ids = {p["name"]: p["id"] for p in http.get(f"{API}/programs").json()["programs"]}
        pmd.wait_for(lambda: written(base / "api.start"), timeout=15)
        assert started(base, "api") >= marked(base, "web.up")
        assert started(base, "api") >= marked(base, "flag.up")
        for name in ("web", "flag"):
            status = http.get(f"{API}/status/{ids[name]}").json()["status"]
            assert status["ready"] is True and status["ready_at"], status
            assert f"{name}: ready (probe)" in pmd.stderr_text()
        # a health check's 30 s default interval is not a startup probe's: the retry after
        # the refused first attempts came a second later, not 30 s
        assert started(base, "api") - marked(base, "web.up") < 10


SEND_BY_HAND = """
import os, signal, socket, sys, time
def send(text):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(text.encode(), os.environ["NOTIFY_SOCKET"])
def stopping(*_):
    send("STOPPING=1")
    sys.exit(0)
signal.signal(signal.SIGTERM, stopping)
send("STATUS=warming up")
time.sleep(0.5)
open(sys.argv[1], "w").write(repr(time.time()))
send("READY=1\\nSTATUS=serving")
while True:
    time.sleep(1)
"""

FORGE = """
import socket, sys, time
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
    s.sendto(b"READY=1\\nSTATUS=forged", sys.argv[1])
open(sys.argv[2], "w").write("sent")
time.sleep(60)
"""


@both_inits
def test_notify_ready_by_hand_status_stopping_and_forgeries_ignored(
        tmp_path: Path, pid1: bool) -> None:
    base = tmp_path / "marks"
    base.mkdir()
    (base / "send.py").write_text(SEND_BY_HAND)
    (base / "forge.py").write_text(FORGE)
    sock = tmp_path / "pmd" / "state" / "notify.sock"
    programs = [
        prog("byhand", f"python3 {base}/send.py {base}/byhand.ready",
             readiness={"notify": True}),
        prog("after", stamp(base, "after"), depends_on=["byhand"]),
        # never says READY=1 itself: only the forger's message could make it ready
        prog("victim", "sleep 60", readiness={"notify": True}),
        prog("forger", f"python3 {base}/forge.py {sock} {base}/forged"),
        prog("plain", f"sh -c 'echo \"${{NOTIFY_SOCKET:-none}}\" > {base}/plain.env; "
                      "exec sleep 60'"),
    ]
    with Pmd(tmp_path / "pmd", programs, pid1=pid1) as pmd:
        http = pmd.http
        ids = {p["name"]: p["id"] for p in http.get(f"{API}/programs").json()["programs"]}
        pmd.wait_for(lambda: written(base / "after.start"), timeout=15)
        assert started(base, "after") >= float((base / "byhand.ready").read_text())
        byhand = http.get(f"{API}/status/{ids['byhand']}").json()["status"]
        assert byhand["ready"] is True and byhand["notify_status"] == "serving"
        assert "byhand: ready (notify)" in pmd.stderr_text()
        # the forger's READY=1 (a program without notify, its own process group) and one
        # from a process outside every program are both ignored
        pmd.wait_for(lambda: (base / "forged").exists())
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stray:
            stray.sendto(b"READY=1", str(sock))
        pmd.wait_for(lambda: pmd.stderr_text().count("ignored: not in the process group") >= 2)
        if pid1:  # the kernel gives pmd no pid for a sender outside its namespace
            assert "notify message from pid 0 ignored" in pmd.stderr_text()
        victim = http.get(f"{API}/status/{ids['victim']}").json()["status"]
        assert victim["ready"] is False and "notify_status" not in victim
        assert (base / "plain.env").read_text().strip() == "none"  # only notify programs
        # STOPPING=1 is noted
        assert http.post(f"{API}/programs/{ids['byhand']}/stop", json={}).status_code == 200
        pmd.wait_for(lambda: "byhand: says it is stopping (STOPPING=1)" in pmd.stderr_text())
        stopped = http.get(f"{API}/status/{ids['byhand']}").json()["status"]
        assert stopped["status"] == "STOPPED" and stopped.get("ready") is None
    assert not sock.exists()  # removed at shutdown


@both_inits
@pytest.mark.skipif(shutil.which("systemd-notify") is None,
                    reason="systemd-notify not installed (Debian: apt-get install systemd)")
def test_systemd_notify_ready_releases_dependents(tmp_path: Path, pid1: bool) -> None:
    base = tmp_path / "marks"
    base.mkdir()
    programs = [
        prog("db", f"sh -c 'sleep 1; date +%s.%N > {base}/db.ready; "
                   "systemd-notify --ready --status=\"accepting connections\"; "
                   "exec sleep 60'",
             readiness={"notify": True, "timeout_seconds": 20}),
        prog("api", stamp(base, "api"), depends_on={"db": "ready"}),
    ]
    with Pmd(tmp_path / "pmd", programs, pid1=pid1) as pmd:
        http = pmd.http
        ids = {p["name"]: p["id"] for p in http.get(f"{API}/programs").json()["programs"]}
        pmd.wait_for(lambda: written(base / "api.start"), timeout=15)
        assert started(base, "api") >= float((base / "db.ready").read_text())
        db = http.get(f"{API}/status/{ids['db']}").json()["status"]
        assert db["ready"] is True
        assert db["notify_status"] == "accepting connections"


@both_inits
def test_notify_across_a_reexec_keeps_its_socket_and_readiness(tmp_path: Path, pid1: bool) -> None:
    base = tmp_path / "marks"
    base.mkdir()
    gate = base / "go"
    # waits for $GATE (by default the gate file; early's is the folder itself: no wait)
    (base / "send.py").write_text(
        "import os, socket, sys, time\n"
        f"gate = os.environ.get('GATE', {str(gate)!r})\n"
        "while not os.path.exists(gate): time.sleep(0.05)\n"
        "with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:\n"
        "    s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\n"
        "time.sleep(60)\n")
    programs = [
        prog("db", f"python3 {base}/send.py", readiness={"notify": True}),
        prog("early", f"python3 {base}/send.py", readiness={"notify": True},
             environment={"GATE": str(base)}),
        prog("api", stamp(base, "api"), depends_on=["db"]),
    ]
    with Pmd(tmp_path / "pmd", programs, pid1=pid1) as pmd:
        http = pmd.http
        ids = {p["name"]: p["id"] for p in http.get(f"{API}/programs").json()["programs"]}
        early = pmd.wait_for(lambda: (s := http.get(f"{API}/status/{ids['early']}")
                                      .json()["status"]).get("ready") and s)
        db = http.get(f"{API}/status/{ids['db']}").json()["status"]
        assert db["ready"] is False
        inode = (pmd.state_dir / "notify.sock").stat().st_ino
        (pmd.state_dir / "api.json").unlink()
        assert http.post(f"{API}/reexec").json()["success"] is True
        pmd.wait_ready()
        http = pmd.http
        assert (pmd.state_dir / "notify.sock").stat().st_ino == inode  # handed over
        again = http.get(f"{API}/status/{ids['early']}").json()["status"]
        assert again["ready"] is True and again["ready_at"] == early["ready_at"]
        gate.write_text("go")
        pmd.wait_for(lambda: written(base / "api.start"), timeout=10)
        after = http.get(f"{API}/status/{ids['db']}").json()["status"]
        assert after["ready"] is True and after["pid"] == db["pid"]


FD_READY = """
import os, sys, time
fd, gate, mark = int(sys.argv[1]), sys.argv[2], sys.argv[3]
# what the program was given: stdio and its notification fd, nothing of pmd's
fds = sorted(int(n) for n in os.listdir("/proc/self/fd"))
fds.remove(max(n for n in fds if n != fd))  # listdir's own
open(mark + ".fds", "w").write(" ".join(map(str, fds)))
while not os.path.exists(gate):
    time.sleep(0.05)
open(mark, "w").write(repr(time.time()))
os.write(fd, b"ready\\n")
os.close(fd)
time.sleep(60)
"""


@both_inits
def test_fd_notification_at_any_number_and_across_a_reexec(tmp_path: Path, pid1: bool) -> None:
    base = tmp_path / "marks"
    base.mkdir()
    (base / "fd.py").write_text(FD_READY)
    gate = base / "go"
    programs = [
        # fd 3 is always one of pmd's own (the child moves it there); 200 is free in pmd
        prog("low", f"sh -c 'sleep 0.5; date +%s.%N > {base}/low.ready; echo >&3; "
                    "exec sleep 60 3>&-'", readiness={"fd": 3, "timeout_seconds": 20}),
        prog("high", f"python3 {base}/fd.py 200 {base} {base}/high.ready",
             readiness={"fd": 200}),
        prog("late", f"python3 {base}/fd.py 9 {gate} {base}/late.ready",
             readiness={"fd": 9}),
        prog("api", stamp(base, "api"), depends_on=["low", "high"]),
        prog("worker", stamp(base, "worker"), depends_on=["late"]),
    ]
    with Pmd(tmp_path / "pmd", programs, pid1=pid1) as pmd:
        http = pmd.http
        ids = {p["name"]: p["id"] for p in http.get(f"{API}/programs").json()["programs"]}
        pmd.wait_for(lambda: written(base / "api.start"), timeout=15)
        assert started(base, "api") >= max(marked(base, "low.ready"),
                                           marked(base, "high.ready"))
        for name in ("low", "high"):
            assert http.get(f"{API}/status/{ids[name]}").json()["status"]["ready"] is True
            assert f"{name}: ready (fd)" in pmd.stderr_text()
        assert (base / "high.ready.fds").read_text().split() == ["0", "1", "2", "200"]
        pmd.wait_for(lambda: (base / "late.ready.fds").exists())
        assert (base / "late.ready.fds").read_text().split() == ["0", "1", "2", "9"]
        late = http.get(f"{API}/status/{ids['late']}").json()["status"]
        assert late["ready"] is False
        (pmd.state_dir / "api.json").unlink()
        assert http.post(f"{API}/reexec").json()["success"] is True
        pmd.wait_ready()
        http = pmd.http
        gate.write_text("go")
        pmd.wait_for(lambda: written(base / "worker.start"), timeout=10)
        assert started(base, "worker") >= marked(base, "late.ready")
        after = http.get(f"{API}/status/{ids['late']}").json()["status"]
        assert after["ready"] is True and after["pid"] == late["pid"]
