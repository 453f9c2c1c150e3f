"""Zero-downtime reload of a 3-port program, with an HTTP client hitting the ports the
whole time; and a replacement that cannot start, which must leave the old one serving."""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path

from tests.api.helpers import wait_until
from tests.api.process_helpers import (
    ENV,
    PYTHON,
    REUSEPORT_SERVER,
    create,
    free_ports,
    pm2_error,
    process,
)
from tests.harness import Pmd


class Hammer:
    """Sequential GETs over fresh connections, round robin over the ports, in a thread."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.ok = 0
        self.failures: list[str] = []
        self.pids: dict[int, set[str]] = {p: set() for p in ports}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            port = self.ports[i % len(self.ports)]
            i += 1
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/", headers={"Connection": "close"})
                response = conn.getresponse()
                body = response.read().decode()
                if response.status != 200:
                    self.failures.append(f"{port}: HTTP {response.status}")
                else:
                    self.ok += 1
                    self.pids[port].add(body)
            except OSError as exc:
                self.failures.append(f"{port}: {exc!r}")
            finally:
                conn.close()

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_reload_of_three_ports_drops_no_request(tmp_path):
    base = free_ports(3)
    ports = [base, base + 1, base + 2]
    with Pmd(tmp_path, [], env=ENV) as pmd:
        http_api = pmd.http
        create(http_api, name="web3", script=PYTHON, args=[REUSEPORT_SERVER],
               port=f"{base}-{base + 2}", min_uptime=0.3, kill_timeout=5, health_check={
                   "type": "http", "url": "http://127.0.0.1:{port}/health",
                   "interval": 0.2, "timeout": 1, "retries": 5})
        before = wait_until(lambda: (p := process(http_api, "web3"))["health_status"]
                            == "healthy" and p, 15, "three healthy instances")
        old = {i["port"]: i["pid"] for i in before["instances"]}
        with Hammer(ports) as hammer:
            wait_until(lambda: hammer.ok >= 30, 10, "traffic before the reload")
            response = http_api.post("/api/processes/web3/reload")
            assert response.status_code == 200, response.text
            served_during = hammer.ok
            time.sleep(0.5)
        body = response.json()
        assert body["success"] is True and body["message"] == "Process reloaded successfully"
        assert body["mode"] == "zero-downtime" and body["replaced"] == ports
        assert hammer.failures == [], hammer.failures[:5]
        assert hammer.ok > served_during > 30
        after = process(http_api, "web3")
        new = {i["port"]: i["pid"] for i in after["instances"]}
        for port in ports:
            assert new[port] != old[port]
            assert not alive(old[port])
            assert {str(old[port]), str(new[port])} <= hammer.pids[port]
        assert [i["restarts"] for i in after["instances"]] == [1, 1, 1]
        assert after["status"] == "online" and after["restarts"] == 3
        logs = http_api.get("/api/processes/web3/logs", params={"lines": 100}).json()["logs"]
        assert sum(line["message"].startswith("listening on") for line in logs) == 6


def test_a_failed_replacement_leaves_the_old_instance_serving(tmp_path):
    base = free_ports(2)
    ports = [base, base + 1]
    with Pmd(tmp_path, [], env=ENV) as pmd:
        http_api = pmd.http
        # binds without SO_REUSEPORT: a replacement cannot share the port
        create(http_api, name="stubborn", script=PYTHON, args=[REUSEPORT_SERVER],
               port=f"{base}-{base + 1}", env={"BIND_FAIL": "1"}, min_uptime=0.5,
               kill_timeout=5)
        before = wait_until(lambda: (p := process(http_api, "stubborn"))["status"]
                            == "online" and all(i["status"] == "online"
                                                for i in p["instances"]) and p,
                            15, "online")
        old = {i["port"]: i["pid"] for i in before["instances"]}
        with Hammer(ports) as hammer:
            wait_until(lambda: hammer.ok >= 10, 10, "traffic before the reload")
            error = pm2_error(http_api.post("/api/processes/stubborn/reload"), 500,
                              "OPERATION_FAILED")
            time.sleep(0.3)
        assert hammer.failures == [], hammer.failures[:5]
        assert error["details"]["failed_port"] == base and error["details"]["replaced"] == []
        assert "old instance keeps serving" in error["message"]
        after = process(http_api, "stubborn")
        assert {i["port"]: i["pid"] for i in after["instances"]} == old
        assert after["status"] == "online" and all(alive(pid) for pid in old.values())
        conn = http.client.HTTPConnection("127.0.0.1", base, timeout=5)
        conn.request("GET", "/")
        assert conn.getresponse().read().decode() == str(old[base])
        conn.close()


def children_of(pid: int) -> set[int]:
    kids: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids |= {int(k) for k in (task / "children").read_text().split()}
        except OSError:
            continue
    return kids


def test_shutdown_during_a_reload_stops_the_replacement_too(tmp_path):
    base = free_ports(2)
    pmd = Pmd(tmp_path, [], env=ENV).start()
    try:
        http_api = pmd.http
        # a replacement needs 3 s to count as started: pmd is stopped before that
        create(http_api, name="slow", script=PYTHON, args=[REUSEPORT_SERVER],
               port=f"{base}-{base + 1}", min_uptime=3, kill_timeout=2)
        wait_until(lambda: process(http_api, "slow")["status"] == "online", 15, "online")
        before = children_of(pmd.pid)
        outcome: list[object] = []

        def reload() -> None:
            try:
                outcome.append(pmd.http.post("/api/processes/slow/reload").status_code)
            except Exception as exc:  # noqa: BLE001 - pmd may close the connection first
                outcome.append(exc)

        reloading = threading.Thread(target=reload, daemon=True)
        reloading.start()
        wait_until(lambda: len(children_of(pmd.pid) - before) == 1, 10, "a replacement")
        everyone = children_of(pmd.pid)
        assert pmd.stop() == 0
        reloading.join(10)
    finally:
        pmd.kill_all()
    assert outcome and outcome[0] != 200  # the reload did not pretend to succeed
    assert len(everyone) == 3
    assert [pid for pid in everyone if alive(pid)] == []


def test_a_program_deleted_during_its_reload_keeps_no_replacement(tmp_path):
    base = free_ports(2)
    with Pmd(tmp_path, [], env=ENV) as pmd:
        http_api = pmd.http
        create(http_api, name="going", script=PYTHON, args=[REUSEPORT_SERVER],
               port=f"{base}-{base + 1}", min_uptime=1, kill_timeout=2)
        wait_until(lambda: process(http_api, "going")["status"] == "online", 15, "online")
        before = children_of(pmd.pid)
        outcome: list[object] = []
        reloading = threading.Thread(target=lambda: outcome.append(
            pmd.http.post("/api/processes/going/reload")), daemon=True)
        reloading.start()
        wait_until(lambda: len(children_of(pmd.pid) - before) == 1, 10, "a replacement")
        assert http_api.delete("/api/processes/going").status_code == 200
        reloading.join(15)
        error = pm2_error(outcome[0], 500, "OPERATION_FAILED")
        assert "removed during the reload" in error["message"]
        wait_until(lambda: children_of(pmd.pid) == set(), 10, "no process left")


def test_a_reload_waits_for_the_replacements_readiness(tmp_path):
    """A program that declares readiness is replaced only once the new instance says it is
    ready: each old instance is stopped after its replacement's own "ready" stamp."""
    marks = tmp_path / "marks"
    marks.mkdir()
    first = free_ports(2)
    second = first + 1
    script = (f"trap \"date +%s.%N > {marks}/stop.$PORT.$$$$; exit 0\" TERM; "
              f"n=$(ls {marks} | grep -c \"^gen.$PORT.\"); touch {marks}/gen.$PORT.$$$$; "
              # the replacement takes a second to get ready
              f"if [ \"$n\" -gt 0 ]; then sleep 1; fi; "
              f"date +%s.%N > {marks}/ready.$PORT.$$$$; echo ready; "
              f"while :; do sleep 0.1; done")
    program = {"name": "ready-web", "user": "root", "boot": True, "startsecs": 0,
               "command": f"sh -c '{script}'", "stop_timeout": 5,
               "port_range": {"start": first, "end": second},
               "readiness": {"log_line": "^ready$", "timeout_seconds": 20}}
    with Pmd(tmp_path, [program], env=ENV) as pmd:
        wait_until(lambda: len(list(marks.glob("ready.*"))) == 2, 15, "first generation ready")
        response = pmd.http.post("/api/processes/ready-web/reload", timeout=60)
        assert response.status_code == 200, response.text
        assert sorted(response.json()["replaced"]) == [first, second]

    def stamp(kind: str, port: int) -> dict[int, float]:
        return {int(p.name.split(".")[2]): float(p.read_text())
                for p in marks.glob(f"{kind}.{port}.*")}

    for port in (first, second):
        ready, stopped = stamp("ready", port), stamp("stop", port)
        old = min(ready, key=ready.get)  # the first generation's pid on this port
        new = max(ready, key=ready.get)
        assert old != new and old in stopped
        assert stopped[old] >= ready[new], (port, ready, stopped)
