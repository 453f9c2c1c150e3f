"""Start a real pmd_init for a test: as a subreaper, or as PID 1 of a fresh PID namespace
(`unshare --pid --fork --mount-proc`), with temporary config, state and log folders.

Used by tests/ and integration/ alike. Every process it starts is recorded and stopped by
pid; nothing is killed by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True, timeout=10)
    return probe.returncode == 0


#: Run a test with pmd both ways: as a subreaper (`pid1=False`) and as PID 1 of a fresh
#: PID namespace (`pid1=True`, skipped where unshare is refused). The test takes a `pid1`
#: argument and passes it on to Pmd.
both_inits = pytest.mark.parametrize("pid1", [
    pytest.param(False, id="subreaper"),
    pytest.param(True, id="pid1", marks=pytest.mark.skipif(
        not can_unshare(), reason="needs unshare --pid (root)")),
])


class Pmd:
    """One pmd_init under test. `url` is its HTTP base; `http` an httpx client on TCP;
    `uds` an httpx client on the Unix socket."""

    def __init__(self, base: Path, programs: list[dict[str, Any]] | None = None, *,
                 pid1: bool = False, command: list[str] | None = None,
                 args: list[str] | None = None, env: dict[str, str] | None = None,
                 api_key: str | None = None, grace: float = 5.0,
                 default_programs: list[dict[str, Any]] | None = None) -> None:
        self.base = base
        self.config_dir = base / "config"
        self.state_dir = base / "state"
        self.log_dir = base / "log"
        self.socket = base / "pmd.sock"
        for d in (self.config_dir, self.state_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        if programs is not None:
            self.write_programs(programs)
        if default_programs is not None:
            (self.config_dir / "programs.default.json").write_text(
                json.dumps({"version": 1, "programs": default_programs}))
        self.pid1 = pid1
        self.command = command or []
        self.args = args or []
        self.env = env or {}
        self.api_key = api_key
        self.grace = grace
        self.proc: subprocess.Popen[bytes] | None = None
        self.stdout_path = base / "pmd.stdout"
        self.stderr_path = base / "pmd.stderr"
        self.port = 0
        self._clients: list[httpx.Client] = []

    # ---- files ---------------------------------------------------------------------

    def write_programs(self, programs: list[dict[str, Any]]) -> None:
        (self.config_dir / "programs.json").write_text(
            json.dumps({"version": 1, "programs": programs}))

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "pmd_init",
                "--config-dir", str(self.config_dir), "--state-dir", str(self.state_dir),
                "--log-dir", str(self.log_dir), "--socket", str(self.socket),
                "--host", "127.0.0.1", "--port", "0", "--grace", str(self.grace),
                "--log-roots", str(self.base), *self.args]
        if self.api_key:
            argv += ["--api-key", self.api_key]
        if self.command:
            argv += ["--", *self.command]
        if self.pid1:
            argv = ["unshare", "--pid", "--fork", "--mount-proc", *argv]
        return argv

    # ---- life cycle ----------------------------------------------------------------

    def start(self, wait: bool = True, timeout: float = 15.0) -> Pmd:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PMD_LOG_LEVEL": "INFO", **self.env}
        env.pop("PMD_API_KEY", None)
        (self.state_dir / "api.json").unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL,
            stdout=open(self.stdout_path, "ab"), stderr=open(self.stderr_path, "ab"),
            env=env, cwd=str(self.base), start_new_session=True)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        api = self.state_dir / "api.json"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"pmd exited early with {self.proc.returncode}:\n"
                                   f"{self.stderr_text()}")
            if api.exists():
                try:
                    info = json.loads(api.read_text())
                    self.port = int(info["port"])
                    return
                except (ValueError, KeyError):
                    pass
            time.sleep(0.02)
        raise TimeoutError(f"pmd did not become ready:\n{self.stderr_text()}")

    @property
    def pid(self) -> int:
        """pmd's pid as seen from here (the child of unshare when it runs as PID 1)."""
        assert self.proc is not None
        if not self.pid1:
            return self.proc.pid
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
                kids = children.read_text().split()
                if kids:
                    return int(kids[0])
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError("no pmd under unshare")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.signal(signal.SIGTERM)
            except (ProcessLookupError, RuntimeError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def kill_all(self) -> None:
        """Last resort for a test that failed midway: the whole session we started."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)

    # ---- clients -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key} if self.api_key else {}

    @property
    def http(self) -> httpx.Client:
        client = httpx.Client(base_url=self.url, timeout=30, headers=self._headers())
        self._clients.append(client)
        return client

    @property
    def uds(self) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=str(self.socket))
        client = httpx.Client(base_url="http://pmd", transport=transport, timeout=30)
        self._clients.append(client)
        return client

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stdout_text(self) -> str:
        try:
            return self.stdout_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, predicate: Any, timeout: float = 10.0, interval: float = 0.02,
                 what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n"
                             f"--- pmd stderr ---\n{self.stderr_text()[-4000:]}")

    def __enter__(self) -> Pmd:
        if self.proc is not None and self.proc.poll() is None:
            return self  # already started with start()
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.kill_all()
