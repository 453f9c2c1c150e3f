"""Sockets pmd binds and holds for programs, with real programs and real clients: the
protocol a program sees (fds from 3, LISTEN_FDS, LISTEN_PID its own pid, LISTEN_FDNAMES,
PMD_SOCKET_<NAME>), and no connection lost while the program restarts 20 times, while pmd
re-executes and while a HUP reload restarts it. Each runs with pmd as a subreaper and as
PID 1 of a PID namespace."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.api.helpers import API, assert_error, program, wait_until
from tests.harness import Pmd, both_inits

#: A server on the socket pmd passes: answers each connection with its pid. On TERM it
#: finishes the connection it is serving and exits; what waits in the backlog is left for
#: the next run (a well-behaved server: nothing accepted is dropped).
SERVER = """
import os, select, signal, socket, sys
r, w = os.pipe()
os.set_blocking(w, False)
signal.set_wakeup_fd(w)
signal.signal(signal.SIGTERM, lambda *_: None)
listener = socket.socket(fileno=int(os.environ["PMD_SOCKET_WEB"]))
answer = str(os.getpid()).encode() + b"\\n"
while True:
    ready, _, _ = select.select([listener, r], [], [])
    if listener in ready:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(answer)
        continue
    break
"""


def free_address() -> tuple[str, int]:
    """A loopback address of its own (127.0.0.0/8 is all loopback) and a free port."""
    host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    with socket.socket() as sock:
        sock.bind((host, 0))
        return host, int(sock.getsockname()[1])


def ask(host: str, port: int) -> int:
    """One connection: the pid of the run that answered it."""
    with socket.create_connection((host, port), timeout=30) as conn:
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(64)
            assert chunk, f"connection closed unanswered after {data!r}"
            data += chunk
    return int(data)


def server(tmp_path: Path, host: str, port: int, **fields: object) -> dict[str, object]:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    return {"name": "web", "command": f"{sys.executable} {script}", "boot": True,
            "startsecs": 0, "stop_timeout": 5,
            "sockets": [{"name": "web", "host": host, "port": port}], **fields}


@both_inits
def test_a_program_gets_its_sockets_with_systemds_protocol(tmp_path: Path, pid1: bool) -> None:
    host, port = free_address()
    unix = tmp_path / "run" / "admin.sock"
    out = tmp_path / "env.txt"
    # `$$$$`: pmd reads `$$` as one `$` (model/expand.py), the shell gets `$$`, its own pid
    command = (f"sh -c 'echo \"$LISTEN_PID $$$$ $LISTEN_FDS $LISTEN_FDNAMES $PMD_SOCKET_WEB "
               f"$PMD_SOCKET_ADMIN\" > {out}.tmp; mv {out}.tmp {out}; exec sleep 60'")
    programs = [{"name": "env", "command": command, "boot": True, "startsecs": 0,
                 "sockets": [{"name": "web", "host": host, "port": port},
                             {"name": "admin", "path": str(unix), "mode": 0o660}]}]
    with Pmd(tmp_path / "pmd", programs, pid1=pid1) as pmd:
        wait_until(out.exists, timeout=10, what="the program's environment")
        listen_pid, own_pid, count, names, web_fd, admin_fd = out.read_text().split()
        status = pmd.http.get(f"{API}/status/1").json()["status"]
        # LISTEN_PID is the program's own pid (set between fork and exec), as pmd sees it
        assert listen_pid == own_pid == str(status["pid"])
        assert (count, names, web_fd, admin_fd) == ("2", "web:admin", "3", "4")
        # `pmd show` (the process API's detail) lists them with the fd each run gets
        config = pmd.http.get("/api/processes/1").json()["config"]
        assert [(x["name"], x["fd"]) for x in config["sockets"]] == [("web", 3), ("admin", 4)]
        # fds 3 and 4 are the listening sockets, in the listed order
        pid = int(own_pid) if not pid1 else _outer_pid(pmd, int(own_pid))
        fd3, fd4 = (os.readlink(f"/proc/{pid}/fd/{n}") for n in (3, 4))
        assert fd3.startswith("socket:") and fd4.startswith("socket:")
        assert oct(unix.stat().st_mode & 0o777) == "0o660"
        # the sockets accept (into the backlog) while the program never does
        socket.create_connection((host, port), timeout=5).close()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(unix))
    assert not unix.exists()  # closed and removed when pmd stops


def _outer_pid(pmd: Pmd, inner: int) -> int:
    """A pid inside pmd's PID namespace as seen from here (NSpid's first entry)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("NSpid:"):
                    pids = line.split()[1:]
                    if len(pids) == 2 and int(pids[1]) == inner and \
                            _ancestor(int(entry.name), pmd.pid):
                        return int(entry.name)
        except OSError:
            continue
    raise AssertionError(f"no process with pid {inner} in pmd's namespace")


def _ancestor(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def _connect_through(pmd: Pmd, host: str, port: int, disturb: object, every: int,
                     total: int = 1000) -> list[int]:
    """`total` connections one after another; `disturb(n)` after each `every`th."""
    answers = []
    for n in range(total):
        answers.append(ask(host, port))
        if (n + 1) % every == 0 and n + 1 < total:
            disturb(n // every)  # type: ignore[operator]
    return answers


@both_inits
def test_twenty_restarts_lose_none_of_a_thousand_connections(tmp_path: Path, pid1: bool) -> None:
    host, port = free_address()
    with Pmd(tmp_path / "pmd", [server(tmp_path, host, port)], pid1=pid1) as pmd, \
            ThreadPoolExecutor(1) as pool:
        http = pmd.http
        wait_until(lambda: http.get(f"{API}/status/1").json()["status"]["status"] == "RUNNING",
                   timeout=10)
        restarter = pmd.http
        answers: list[int] = []
        for _ in range(20):
            # one whole restart (stop, start, running) while 50 connections are made
            restart = pool.submit(restarter.post, f"{API}/programs/1/restart",
                                  json={"wait": True, "timeout": 30})
            answers += [ask(host, port) for _ in range(50)]
            assert restart.result().status_code == 200
        status = http.get(f"{API}/status/1").json()["status"]
    assert len(answers) == 1000  # every connection answered (ask() asserts each one)
    assert status["restarts"] == 20 and status["status"] == "RUNNING"
    # answered by the runs before, between and after the restarts
    assert len(set(answers)) >= 10, sorted(set(answers))


@both_inits
def test_connections_wait_through_reexec_and_hup_reload(tmp_path: Path, pid1: bool) -> None:
    host, port = free_address()
    spec = server(tmp_path, host, port)
    with Pmd(tmp_path / "pmd", [spec], pid1=pid1) as pmd:
        http = pmd.http
        wait_until(lambda: http.get(f"{API}/status/1").json()["status"]["status"] == "RUNNING",
                   timeout=10)
        pmd_pid = pmd.pid

        def disturb(n: int) -> None:
            if n % 2 == 0:
                assert http.post(f"{API}/reexec").status_code == 200
            else:  # a changed environment: the reload restarts the program
                pmd.write_programs([{**spec, "environment": {"ROUND": str(n)}}])
                pmd.signal(signal.SIGHUP)

        answers = _connect_through(pmd, host, port, disturb, every=100)
        assert pmd.pid == pmd_pid  # re-executed in place, not restarted
        pmd.wait_for(lambda: pmd.stderr_text().count("re-executed: 1 programs adopted") == 5,
                     what="five re-execs")
        assert pmd.stderr_text().count("SIGHUP: reloaded programs.json") == 4
    assert len(answers) == 1000
    assert len(set(answers)) >= 4  # the reloads' restarts answered too


def test_sockets_are_validated_and_a_taken_port_is_a_400(tmp_path: Path) -> None:
    host, port = free_address()
    taken = socket.socket()
    taken.bind((host, port))
    taken.listen()
    with taken, Pmd(tmp_path / "pmd", []) as pmd:
        http = pmd.http
        add = f"{API}/programs/add"
        body = program("a", sockets=[{"name": "web", "host": host, "port": port}])
        error = assert_error(http.post(add, json=body), 400, "SOCKET_UNAVAILABLE", "sockets")
        assert "'web'" in error["message"] and str(port) in error["message"]
        assert_error(http.post(add, json=program("b", sockets=[{"name": "nope"}])),
                     400, "VALIDATION_ERROR", "sockets.0")
        assert_error(http.post(add, json=program("c", sockets=[
            {"name": "x", "port": 80, "path": "/run/x.sock"}])), 400, "VALIDATION_ERROR",
            "sockets.0")
        assert_error(http.post(add, json=program("d", sockets=[
            {"name": "bad-name", "port": 8080}])), 400, "VALIDATION_ERROR", "sockets.0.name")
        assert http.get(f"{API}/programs").json()["programs"] == []
        # a free port is bound at add and shared by name with a second program
        host2, port2 = free_address()
        assert http.post(add, json=program("e", sockets=[
            {"name": "api", "host": host2, "port": port2}])).status_code in (200, 201)
        assert http.post(add, json=program("f", sockets=[{"name": "api"}])).status_code \
            in (200, 201)
        socket.create_connection((host2, port2), timeout=5).close()
        assert_error(http.post(add, json=program("g", sockets=[
            {"name": "api", "host": host2, "port": port2 + 1}])), 400, "VALIDATION_ERROR",
            "sockets.0")


@both_inits
def test_a_socket_that_cannot_be_bound_stops_only_its_programs(tmp_path: Path,
                                                              pid1: bool) -> None:
    host, port = free_address()
    taken = socket.socket()
    taken.bind((host, port))
    taken.listen()
    marks = tmp_path / "marks"
    marks.mkdir()
    programs = [
        {"name": "needs", "command": "sleep 60", "boot": True, "startsecs": 0,
         "startretries": 0, "sockets": [{"name": "web", "host": host, "port": port}]},
        {"name": "other", "command": f"sh -c 'touch {marks}/other; exec sleep 60'",
         "boot": True, "startsecs": 0},
    ]
    with taken, Pmd(tmp_path / "pmd", programs, pid1=pid1) as pmd:
        http = pmd.http
        wait_until((marks / "other").exists, timeout=10, what="the other program")
        status = wait_until(lambda: (s := http.get(f"{API}/status/1").json()["status"])
                            ["status"] == "FATAL" and s, timeout=10)
        health = http.get(f"{API}/health").json()
        assert any("'web'" in p and str(port) in p for p in health["socket_problems"]), health
        assert http.get(f"{API}/status/2").json()["status"]["status"] == "RUNNING"
        assert "socket 'web'" in json.dumps(status) or "socket 'web'" in pmd.stderr_text()


@both_inits
def test_start_on_connection_starts_with_the_first_connection_and_stops_when_idle(
        tmp_path: Path, pid1: bool) -> None:
    host, port = free_address()
    spec = server(tmp_path, host, port, start_on="connection", idle_stop_after=1.0)
    with Pmd(tmp_path / "pmd", [spec], pid1=pid1) as pmd:
        http = pmd.http

        def status() -> dict[str, object]:
            return http.get(f"{API}/status/1").json()["status"]  # type: ignore[no-any-return]

        assert status()["status"] == "STOPPED" and not status().get("pid")
        # the first connection starts the program, and that program answers it
        first = ask(host, port)
        now = status()
        assert now["status"] == "RUNNING" and now["pid"] == first
        # the server closes each connection after its answer: idle from here
        wait_until(lambda: status()["status"] == "STOPPED", timeout=10, what="the idle stop")
        assert "no connection for 1 s: stopping it" in pmd.stderr_text()
        # and the next connection starts it again
        second = ask(host, port)
        assert second != first and status()["pid"] == second


@both_inits
def test_a_non_root_program_serves_port_80_through_a_socket_pmd_bound(
        tmp_path: Path, pid1: bool) -> None:
    host, _ = free_address()
    # the script where `nobody` may read it, run by the system's python3
    shared = Path(tempfile.mkdtemp(prefix="pmd-sock-"))
    shared.chmod(0o755)
    (shared / "server.py").write_text(SERVER)
    (shared / "server.py").chmod(0o644)
    spec = {**server(tmp_path, host, 80, user="nobody"),
            "command": f"/usr/bin/python3 {shared}/server.py"}
    with Pmd(tmp_path / "pmd", [spec], pid1=pid1) as pmd:
        answer = wait_until(lambda: _try_ask(host, 80), timeout=10, what="an answer on port 80")
        status = pmd.http.get(f"{API}/status/1").json()["status"]
        assert answer == status["pid"]
        pid = answer if not pid1 else _outer_pid(pmd, answer)
        uids = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:4]
        assert set(uids) == {str(pwd_uid("nobody"))}  # not root, not able to bind port 80
    shutil.rmtree(shared)


def _try_ask(host: str, port: int) -> int | None:
    try:
        return ask(host, port)
    except OSError:
        return None


def pwd_uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
