"""The fault suite's quick form: each fault of bench/faults.py (`make chaos` has the full
runs and the figures), bounded, with pmd's open files before and after. Only what cannot
flake on a busy machine is asserted: the issue's own bounds (every request answered within
1 s, SIGTERM within the grace), counts of files, and no growth without bound. The crash
loop of 100 programs is in test_crash_storm.py; kill -9 during writes and the full state
disk are in tests/test_faults_storage.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.harness import Pmd

API = "/api/v1/daemon"
GRACE = 8.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def timed_status(pmd: Pmd, client) -> float:  # noqa: ANN001 - an httpx client
    t0 = time.monotonic()
    answer = client.get(f"{API}/status")
    assert answer.status_code == 200, answer.text
    return time.monotonic() - t0


def stop_within_grace(pmd: Pmd) -> float:
    t0 = time.monotonic()
    pmd.signal(signal.SIGTERM)
    assert pmd.wait(GRACE + 10) == 0, pmd.stderr_text()[-3000:]
    return time.monotonic() - t0


def test_a_fleet_of_programs_boots_lists_and_stops(tmp_path):
    """300 programs (bench: 1000): all RUNNING, every list answered within 1 s, open
    files a few per program and unchanged after 20 lists, SIGTERM within the grace."""
    n = 300
    programs = [{"name": f"p{i:03d}", "command": "sleep 100000", "boot": True}
                for i in range(n)]
    pmd = Pmd(tmp_path, programs, grace=GRACE)
    with pmd:
        client = pmd.uds
        pmd.wait_for(lambda: all(s["status"]["status"] == "RUNNING" for s in
                                 client.get(f"{API}/status").json()["statuses"]),
                     timeout=60, interval=0.2, what=f"{n} programs RUNNING")
        before = fds(pmd.pid)
        assert before < 7 * n + 50  # pipes (both ends: pmd holds the write ends), logs
        slowest = max(timed_status(pmd, client) for _ in range(20))
        assert slowest < 1.0
        assert fds(pmd.pid) <= before + 2  # the request's own connection, at most
        assert stop_within_grace(pmd) < GRACE


def test_a_log_flood_leaves_the_api_answering(tmp_path):
    """A program writing lines as fast as it can for 3 s: every status answered within
    1 s, no open file gained, its logs rotated within their limit."""
    programs = [{"name": "flood", "command": "yes " + "x" * 99, "boot": True,
                 "log_max_bytes": 1 << 20, "log_backups": 1}]
    with Pmd(tmp_path, programs, grace=GRACE) as pmd:
        client = pmd.uds
        pmd.wait_for(lambda: (pmd.log_dir / "flood" / "stdout.log").exists(), what="logs")
        before = fds(pmd.pid)
        end = time.monotonic() + 3.0
        slowest = 0.0
        while time.monotonic() < end:
            slowest = max(slowest, timed_status(pmd, client))
            time.sleep(0.05)
        assert slowest < 1.0
        # the status connection at most; a rotation holds the new file a moment before
        # it closes the old one, so a look can land on one more: a leak never goes back
        pmd.wait_for(lambda: fds(pmd.pid) <= before + 1, timeout=5,
                     what=f"open files back to {before} + 1")
        on_disk = sum(p.stat().st_size for p in (pmd.log_dir / "flood").iterdir())
        assert on_disk <= 2 * (1 << 20) + (1 << 16), on_disk
        assert stop_within_grace(pmd) < GRACE


def _held(path: Path, head: bytes, n: int, small_buffer: bool = False) -> list[socket.socket]:
    held = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        if small_buffer:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(head)
        held.append(s)
    return held


def test_stalled_clients_grow_nothing_and_others_are_answered(tmp_path):
    """200 half-sent requests, 3 WebSocket and 3 SSE readers that never read, while one
    program restarts every 0.1 s (events) and one floods its log (stream data): other
    clients answered within 1 s, pmd's open files bounded by the clients it holds and
    back when they go, its memory grown by less than 64 MiB."""
    programs = [
        {"name": "flood", "command": "yes " + "x" * 99, "boot": True,
         "log_max_bytes": 1 << 20, "log_backups": 1},
        {"name": "blink", "command": "sh -c 'sleep 0.1; exit 1'", "boot": True,
         "startsecs": 0, "autorestart": "true", "start_limit_burst": 0},
    ]
    with Pmd(tmp_path, programs, grace=GRACE) as pmd:
        client = pmd.http
        pmd.wait_for(lambda: (pmd.log_dir / "flood" / "stdout.log").exists(), what="logs")
        time.sleep(0.3)
        fds_before, rss_before = fds(pmd.pid), rss_kib(pmd.pid)
        ws = (b"GET /ws?interval=0.2 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")
        sse = f"GET {API}/programs/1/logs/stream HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        held = _held(pmd.socket, b"GET /api/v1/daemon/status HTTP/1.1\r\nHost: x\r\nX-A: ",
                     200)
        try:
            held += _held(pmd.socket, ws, 3, small_buffer=True)
            held += _held(pmd.socket, sse, 3, small_buffer=True)
            end = time.monotonic() + 3.0
            slowest, most = 0.0, 0
            while time.monotonic() < end:
                slowest = max(slowest, timed_status(pmd, client))
                most = max(most, fds(pmd.pid))
                time.sleep(0.05)
            assert slowest < 1.0
            assert most <= fds_before + len(held) + 20, (fds_before, most)
            assert rss_kib(pmd.pid) - rss_before < 64 << 10
        finally:
            for s in held:
                s.close()
        pmd.wait_for(lambda: fds(pmd.pid) <= fds_before + 5, timeout=5,
                     what=f"open files back to {fds_before}")
        assert stop_within_grace(pmd) < GRACE


def test_quick_starts_that_exit_at_once_leave_the_api_answering(tmp_path):
    """10 quick-starts that exit at once and are restarted at once (startsecs 0,
    autorestart true, no start-rate limit) for 3 s: every /health within 1 s, open files
    bounded by the launches' pipes and back when they are stopped, ephemeral.json valid
    with every launch, and restarts that did happen."""
    n = 10
    with Pmd(tmp_path, [], grace=GRACE) as pmd:
        client = pmd.uds
        before = fds(pmd.pid)
        ids = []
        for i in range(n):
            answer = client.post(f"{API}/quick-start", json={
                "command": f"sh -c 'echo >> {tmp_path}/starts{i}'", "user": "root",
                "startsecs": 0, "autorestart": "true", "startretries": 1000,
                "start_limit_burst": 0})
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["temporary_id"])
        end = time.monotonic() + 3.0
        slowest, most = 0.0, 0
        while time.monotonic() < end:
            t0 = time.monotonic()
            assert client.get(f"{API}/health").status_code == 200
            slowest = max(slowest, time.monotonic() - t0)
            most = max(most, fds(pmd.pid))
            time.sleep(0.05)
        assert slowest < 1.0
        assert most <= before + 6 * n + 20, (before, most)
        stored = json.loads((pmd.state_dir / "ephemeral.json").read_text())
        assert {e["temporary_id"] for e in stored["programs"]} >= set(ids)
        for temporary_id in ids:
            assert client.post(f"{API}/quick-start/{temporary_id}/stop").status_code == 200
        pmd.wait_for(lambda: fds(pmd.pid) <= before + 1, timeout=5,
                     what=f"open files back to {before}")
        assert stop_within_grace(pmd) < GRACE
    starts = [len((tmp_path / f"starts{i}").read_text().splitlines()) for i in range(n)]
    assert min(starts) >= 2, starts


@pytest.mark.parametrize("how", ["stopped", "exited"])
def test_a_finished_quick_start_holds_no_open_file(tmp_path, how):
    """Found by the fault suite: a finished quick-start kept its two log files open for
    the whole grace period (10 minutes), two descriptors per launch."""
    with Pmd(tmp_path, [], env={"PMD_EPHEMERAL_GRACE": "600"}) as pmd:
        client = pmd.uds
        before = fds(pmd.pid)
        command = "sleep 60" if how == "stopped" else "true"
        ids = [client.post(f"{API}/quick-start", json={
            "command": command, "user": "root", "startsecs": 0, "stop_timeout": 2,
            "autorestart": "false"}).json()["temporary_id"] for _ in range(5)]
        if how == "stopped":
            for temporary_id in ids:
                assert client.post(f"{API}/quick-start/{temporary_id}/stop").status_code == 200
        pmd.wait_for(lambda: all(client.get(f"{API}/quick-start/{t}/status").json()["status"]
                                 in ("stopped", "exited") for t in ids),
                     what="every launch finished")
        pmd.wait_for(lambda: fds(pmd.pid) <= before + 1, timeout=5,
                     what=f"open files back to {before}")
        logs = client.get(f"{API}/quick-start/{ids[0]}/logs").json()
        assert logs["success"] is True  # still readable during the grace
