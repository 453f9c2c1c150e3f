"""Long operations finish when their client goes away.

Sanic cancels a request's task when the client disconnects; a reset or a reload that lived
in that task stopped half way (the defaults saved, nothing booted; a replacement left
running beside the instance it was to replace). Each test sends its request on a raw
socket and closes it at once, then looks at what pmd did: through the API, on disk, and
in /proc.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from tests.api.helpers import API, program, wait_until
from tests.api.process_helpers import (
    ENV,
    PYTHON,
    REUSEPORT_SERVER,
    create,
    free_ports,
    process,
)
from tests.harness import Pmd


def send_and_hang_up(port: int, method: str, path: str) -> None:
    """The whole request, then close: the answer is never read."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Content-Length: 0\r\n\r\n".encode())


def children_running(pmd_pid: int, marker: str) -> list[int]:
    """Children of pmd whose command line holds `marker` and that are not zombies."""
    found = []
    for task in Path(f"/proc/{pmd_pid}/task").iterdir():
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            try:
                cmdline = Path(f"/proc/{kid}/cmdline").read_bytes().replace(b"\0", b" ")
                state = Path(f"/proc/{kid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker.encode() in cmdline and state != "Z":
                found.append(kid)
    return sorted(found)


def test_a_reset_whose_client_hangs_up_still_boots_the_defaults(tmp_path):
    defaults = [program("default-a", "sleep 60", boot=True),
                program("default-b", "sleep 61", boot=True)]
    # ignores SIGTERM: the reset waits its stop timeout, long after the client has gone
    stubborn = program("stubborn", "sh -c 'trap \"\" TERM; exec sleep 62'", boot=True,
                       stop_timeout=1)
    with Pmd(tmp_path, [stubborn], default_programs=defaults) as pmd:
        http = pmd.http
        wait_until(lambda: http.get(f"{API}/status/1").json()["status"]["status"]
                   == "RUNNING", what="stubborn RUNNING")
        send_and_hang_up(pmd.port, "POST", f"{API}/programs/reset")

        def booted() -> bool:
            listed = http.get(f"{API}/programs", params={"include_status": "true"}).json()
            states = {p["name"]: p["status"]["status"] for p in listed["programs"]}
            return states == {"default-a": "RUNNING", "default-b": "RUNNING"}

        wait_until(booted, 10, "the default programs running")
        stored = json.loads((pmd.config_dir / "programs.json").read_text())["programs"]
        assert {s["name"] for s in stored} == {"default-a", "default-b"}
        assert children_running(pmd.pid, "sleep 62") == []


def test_a_reload_whose_client_hangs_up_leaves_no_instance_outside_a_slot(tmp_path):
    base = free_ports(2)
    with Pmd(tmp_path, [], env=ENV) as pmd:
        http = pmd.http
        # a replacement takes a second to count as started: the client is long gone
        create(http, name="handover", script=PYTHON, args=[REUSEPORT_SERVER],
               port=f"{base}-{base + 1}", min_uptime=1, kill_timeout=2)
        before = wait_until(lambda: (p := process(http, "handover"))["status"] == "online"
                            and all(i["status"] == "online" for i in p["instances"]) and p,
                            15, "online")
        old = {i["port"]: i["pid"] for i in before["instances"]}
        send_and_hang_up(pmd.port, "POST", "/api/processes/handover/reload")
        # the replacement is spawned, then the request's task is gone: the reload goes on
        wait_until(lambda: len(children_running(pmd.pid, REUSEPORT_SERVER)) == 3, 5,
                   "a replacement beside the two instances")

        def replaced() -> dict[int, int] | None:
            now = {i["port"]: i["pid"] for i in process(http, "handover")["instances"]}
            running = children_running(pmd.pid, REUSEPORT_SERVER)
            done = all(now[p] != old[p] for p in old) and running == sorted(now.values())
            return now if done else None

        new = wait_until(replaced, 15, "both ports replaced, nothing else running")
        time.sleep(0.5)  # nothing more starts later
        assert children_running(pmd.pid, REUSEPORT_SERVER) == sorted(new.values())
        assert process(http, "handover")["status"] == "online"
