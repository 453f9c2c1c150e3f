"""Container mode of the integration suite: pmd as the PID 1 of a real container.
This module holds what its tests share: the docker client, one container of the image
under test, and polling.

Two sets of tests live here, each switched on by the environment that runs it:

- `test_pod.py` runs inside the `tester` service of compose.test.yml, which shares the
  network namespace of the `pmd` service: PMD_CONTAINER_URL, PMD_CONTAINER_API_KEY,
  PMD_CONTAINER_SOCKET, PMD_CONTAINER_LOG_DIR.
- `test_docker.py` runs on the Docker host and drives containers of PMD_IMAGE with the
  docker client (DOCKER, default `docker`): stop, kill, restart, exec, logs, exit codes.

Without those variables (a plain `make test` on a machine without Docker) both are skipped;
.ci/run sets them, so CI never skips them.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

DOCKER = os.environ.get("DOCKER", "docker")
IMAGE = os.environ.get("PMD_IMAGE", "")
LABEL = "pmd-ci-test=1"


class ContainerExited(AssertionError):
    """The container ended while a test waited for it: no use waiting on."""


def wait_for(probe: Callable[[], T | None], timeout: float = 15.0, what: str = "") -> T:
    """Poll `probe` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except ContainerExited:
            raise
        except Exception as exc:  # the probe may fail until the thing is up
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or probe}: {last!r}")
        time.sleep(0.1)


# ---- the docker client -------------------------------------------------------------------

def docker(*args: str, check: bool = True, timeout: float = 60.0,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout,
                          input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {shlex.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}{proc.stderr}")
    return proc


# Talks to pmd over its Unix socket (trusted, no API key), from inside the container,
# with nothing but the standard library of the image's Python.
_API_CLIENT = r"""
import http.client, json, os, socket, sys

class UnixConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(os.environ.get("PMD_SOCKET", "/run/pmd/pmd.sock"))

method, path, body = sys.argv[1], sys.argv[2], sys.argv[3]
conn = UnixConnection("localhost")
conn.request(method, path, body=body.encode() if body else None,
             headers={"Content-Type": "application/json"} if body else {})
resp = conn.getresponse()
data = resp.read()
try:
    payload = json.loads(data) if data else None
except ValueError:
    payload = data.decode(errors="replace")
print(json.dumps({"status": resp.status, "body": payload}))
"""

# Counts zombies in the container's PID namespace.
_ZOMBIES = r"""
import os
count = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        data = open(f"/proc/{pid}/stat", "rb").read()
    except OSError:
        continue
    if data[data.rfind(b")") + 2:].split()[0] == b"Z":
        count += 1
print(count)
"""


class Container:
    """One container of the image under test, removed at the end of the test."""

    def __init__(self, name: str) -> None:
        self.name = name

    def exec(self, *cmd: str, check: bool = True, timeout: float = 60.0,
             user: str | None = None) -> subprocess.CompletedProcess[str]:
        extra = ["--user", user] if user else []
        return docker("exec", *extra, self.name, *cmd, check=check, timeout=timeout)

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        raw = json.dumps(body) if body is not None else ""
        out = self.exec("python3", "-c", _API_CLIENT, method, path, raw).stdout
        result = json.loads(out)
        return result["status"], result["body"]

    def get(self, path: str) -> Any:
        status, body = self.api("GET", path)
        assert status == 200, (path, status, body)
        return body

    def inspect(self, template: str) -> str:
        return docker("inspect", "-f", template, self.name).stdout.strip()

    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    def exit_code(self) -> int:
        return int(self.inspect("{{.State.ExitCode}}"))

    def logs(self) -> str:
        proc = docker("logs", self.name)
        return proc.stdout + proc.stderr

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until pmd answers its health endpoint on the Unix socket."""
        def ready() -> bool:
            if not self.running():
                raise ContainerExited(f"container exited {self.exit_code()}:\n{self.logs()}")
            status, _ = self.api("GET", "/api/v1/daemon/health")
            return status == 200
        wait_for(ready, timeout, "pmd's health endpoint")

    def program_state(self, program_id: int) -> str | None:
        status, body = self.api("GET", f"/api/v1/daemon/status/{program_id}")
        if status != 200:
            return None
        return body["status"].get("status")

    def wait_state(self, program_id: int, state: str, timeout: float = 15.0) -> None:
        wait_for(lambda: self.program_state(program_id) == state, timeout,
                 f"program {program_id} {state}")

    def processes(self) -> list[str]:
        """Command lines of every process in the container."""
        script = ("import os\nfor p in filter(str.isdigit, os.listdir('/proc')):\n"
                  "    try: print(open(f'/proc/{p}/cmdline','rb').read()"
                  ".replace(b'\\0', b' ').decode().strip())\n    except OSError: pass\n")
        return self.exec("python3", "-c", script).stdout.splitlines()

    def zombies(self) -> int:
        return int(self.exec("python3", "-c", _ZOMBIES).stdout)
