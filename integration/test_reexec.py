"""Re-exec keeps the API's listening sockets: clients wait in the backlog, never refused."""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from integration.helpers import state
from tests.harness import Pmd, can_unshare

pytestmark = pytest.mark.skipif(not can_unshare(), reason="needs unshare --pid (root)")

REEXECS = 5
REFUSED = (errno.ECONNREFUSED, errno.ENOENT)  # ENOENT: the Unix socket's path is gone
REQUEST = b"GET /api/v1/daemon/health HTTP/1.1\r\nHost: pmd\r\nConnection: close\r\n\r\n"


class Knocker(threading.Thread):
    """Connects every 2 ms until told to stop and counts what happened: `knock` only
    connects and closes, `ask` sends a request and reads the whole answer."""

    def __init__(self, address: tuple[str, int] | str, ask: bool) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.ask = ask
        self.counts: Counter[str] = Counter()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.counts[self.once()] += 1
            time.sleep(0.002)

    def once(self) -> str:
        family = socket.AF_UNIX if isinstance(self.address, str) else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                # Blocking: with a timeout Python connects non-blocking, and a Unix socket
                # whose backlog is full then fails with EAGAIN instead of waiting.
                sock.connect(self.address)
            except OSError as exc:
                return "refused" if exc.errno in REFUSED else f"connect {exc!r}"
            if not self.ask:
                return "connected"
            sock.settimeout(20)  # generous: the request waits while the new pmd starts
            try:
                sock.sendall(REQUEST)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            except OSError as exc:
                return f"unanswered {exc!r}"
            return "answered" if answer.startswith(b"HTTP/1.1 200") else "unanswered"


def listening_inode(pmd: Pmd, port: int) -> str:
    """The inode of the TCP socket listening on `port`, from /proc/net/tcp."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
            return fields[9]
    raise AssertionError(f"nothing listens on {port}")


def unix_inode(path: Path) -> str:
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == str(path) and fields[5] == "01":  # listening
            return fields[6]
    raise AssertionError(f"nothing listens on {path}")


def fds_on(pid: int, inode: str) -> int:
    """How many of pid's descriptors refer to the socket `inode`."""
    folder = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in folder.iterdir() if os.readlink(fd) == f"socket:[{inode}]")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_five_reexecs_refuse_no_connection_and_leak_no_socket(tmp_path):
    fds_file = tmp_path / "fds"
    programs = [{"name": "svc", "boot": True, "startsecs": 0, "command": "sleep 100"},
                {"name": "fds", "boot": False, "startsecs": 0, "autorestart": "false",
                 "command": f"sh -c 'for f in /proc/$$$$/fd/*; do readlink $f; done > {fds_file}'"}]
    # a fixed port: before the listening socket went along, port 0 meant a new port each time
    with Pmd(tmp_path, programs, pid1=True, args=["--port", str(free_port())]) as pmd:
        http, uds = pmd.http, pmd.uds
        pmd.wait_for(lambda: state(http, 1) == "RUNNING")
        pmd_pid = pmd.pid
        tcp_inode = listening_inode(pmd, pmd.port)
        sock_inode = unix_inode(pmd.socket)
        tcp_fds, sock_fds = fds_on(pmd_pid, tcp_inode), fds_on(pmd_pid, sock_inode)
        knockers = [Knocker(("127.0.0.1", pmd.port), ask=False),
                    Knocker(("127.0.0.1", pmd.port), ask=True),
                    Knocker(str(pmd.socket), ask=False),
                    Knocker(str(pmd.socket), ask=True)]
        for knocker in knockers:
            knocker.start()
        try:
            for done in range(1, REEXECS + 1):
                assert uds.post("/api/v1/daemon/reexec").json()["success"]
                # the new pmd says so, then serves again (its "API on" line)
                pmd.wait_for(lambda n=done: pmd.stderr_text().count("re-executed") == n
                             and pmd.stderr_text().count("API on") == n + 1,
                             timeout=30, what=f"re-exec {done}")
                # and every client gets through to it before the next re-exec
                seen = [sum(k.counts.values()) for k in knockers]
                pmd.wait_for(lambda seen=seen: all(
                    sum(k.counts.values()) > n for k, n in zip(knockers, seen, strict=True)),
                    timeout=30, what="a connection to the new pmd")
        finally:
            for knocker in knockers:
                knocker.halt.set()
            for knocker in knockers:
                knocker.join(30)
        counts = [dict(k.counts) for k in knockers]
        print("\nconnection outcomes (tcp knock, tcp ask, unix knock, unix ask):", counts)
        for knocker in knockers:
            outcomes = set(knocker.counts)
            assert outcomes == ({"answered"} if knocker.ask else {"connected"}), counts
        # the same pmd, answering on both, on the very sockets it listened on at first
        assert pmd.pid == pmd_pid
        assert http.get("/api/status").json()["status"] == "ok"
        assert uds.get("/api/v1/daemon/health").json()["pid"] == 1
        assert listening_inode(pmd, pmd.port) == tcp_inode
        assert unix_inode(pmd.socket) == sock_inode
        # no copy of a listening socket piles up across re-execs...
        assert (fds_on(pmd_pid, tcp_inode), fds_on(pmd_pid, sock_inode)) == (tcp_fds, sock_fds)
        # ...and none reaches a program
        http.post("/api/v1/daemon/programs/2/start")
        pmd.wait_for(lambda: state(http, 2) == "EXITED", what="the fds program")
        links = fds_file.read_text().split()
        assert f"socket:[{tcp_inode}]" not in links
        assert f"socket:[{sock_inode}]" not in links
        assert not [link for link in links if link.startswith("socket:")], links


def test_programs_get_the_callers_environment_before_and_after_a_reexec(tmp_path):
    """pmd sets PYDANTIC_DISABLE_PLUGINS for itself and reads PMD_* settings: programs
    see neither, but a variable the caller set is theirs, the same after a re-exec
    (the environment is handed over in the re-exec state, not guessed again)."""
    out = tmp_path / "env"
    programs = [{"name": "env", "boot": True, "startsecs": 0, "autorestart": "false",
                 "command": f"sh -c 'env > {out}.tmp.$$$$ && mv {out}.tmp.$$$$ {out}.$$$$'"}]

    def seen() -> list[dict[str, str]]:
        runs = []
        for path in sorted(tmp_path.glob("env.[0-9]*")):  # whole files only: written, moved
            lines = path.read_text().splitlines()
            runs.append(dict(line.split("=", 1) for line in lines if "=" in line))
        return runs

    with Pmd(tmp_path, programs, pid1=True, env={"CALLER_VAR": "kept"}) as pmd:
        http, uds = pmd.http, pmd.uds
        pmd.wait_for(lambda: len(seen()) == 1 and state(http, 1) == "EXITED")
        assert uds.post("/api/v1/daemon/reexec").json()["success"]
        pmd.wait_for(lambda: pmd.stderr_text().count("re-executed") == 1, timeout=30)
        pmd.wait_for(lambda: http.post("/api/v1/daemon/programs/1/start").status_code == 200,
                     timeout=30)
        pmd.wait_for(lambda: len(seen()) == 2, what="the run after the re-exec")
    for env in seen():
        assert env["CALLER_VAR"] == "kept"
        assert "PYDANTIC_DISABLE_PLUGINS" not in env
        assert not [k for k in env if k.startswith("PMD_")]
