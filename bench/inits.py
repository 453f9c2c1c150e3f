"""Starting each init under test as PID 1 of a fresh PID namespace, with the same programs.

pmd gets a programs.json, supervisord a supervisord.conf, tini a shell that starts every
program in the background (tini supervises nothing; it is the floor). Each `Launch` records
the pids it started; stopping or killing one touches only those pids (SIGKILL to a
namespace's PID 1 takes everything inside the namespace with it).
"""

from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procfs import children

ROOT = Path(__file__).resolve().parent.parent
LIVE: list[Launch] = []


def pmd_python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


@dataclass
class Prog:
    name: str
    argv: list[str]
    startsecs: float = 1
    autorestart: bool = False
    log_max_bytes: int | None = None  # None: the init's default rotation size
    env: dict[str, str] = field(default_factory=dict)
    startretries: int | None = None  # None: the init's default
    pmd: dict[str, object] = field(default_factory=dict)  # pmd-only fields (start limit ...)


class Launch:
    """One init in one PID namespace. `pid` is the init's pid as seen from here."""

    def __init__(self, kind: str, base: Path, argv: list[str], env: dict[str, str]) -> None:
        self.kind = kind
        self.base = base
        self.argv = ["unshare", "--pid", "--fork", "--mount-proc", *argv]
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.t_exec = 0.0
        #: with stdout_pipe: the bytes read so far from the init's stdout
        self.stdout_bytes = 0
        self._drain: threading.Thread | None = None

    def start(self, stdout_pipe: bool = False) -> Launch:
        """stdout_pipe: the init's stdout is a pipe that a thread of the bench reads and
        counts, as a container runtime reads a container's (`docker logs`); otherwise
        it is the file init.stdout."""
        read_end = -1
        if stdout_pipe:
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            out = os.fdopen(write_end, "wb")
        else:
            out = open(self.base / "init.stdout", "wb")
        err = open(self.base / "init.stderr", "wb")
        self.t_exec = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=err, env=self.env, cwd=str(self.base),
                                     start_new_session=True)
        out.close()
        err.close()
        if read_end >= 0:
            self._drain = threading.Thread(target=self._read_stdout, args=(read_end,),
                                           daemon=True)
            self._drain.start()
        LIVE.append(self)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            kids = children(self.proc.pid)
            if kids:
                self.pid = kids[0]
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind}: unshare exited with {self.proc.returncode}: "
                                   f"{self.stderr_tail()}")
            time.sleep(0.0005)
        raise RuntimeError(f"{self.kind}: no init process under unshare")

    def _read_stdout(self, fd: int) -> None:
        buffer = bytearray(1 << 20)
        try:
            while n := os.readv(fd, (buffer,)):
                self.stdout_bytes += n
        finally:
            os.close(fd)

    def stderr_tail(self, n: int = 2000) -> str:
        try:
            return (self.base / "init.stderr").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def wait_exit(self, timeout: float) -> float | None:
        """Wait for the init to exit; its exit time (monotonic), or None on timeout."""
        assert self.pid is not None
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return time.monotonic()
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
            return time.monotonic() if ready else None
        finally:
            os.close(fd)

    def terminate(self, timeout: float = 15.0) -> float | None:
        """SIGTERM to the init; seconds until it exited, None if it had to be killed."""
        assert self.pid is not None
        t0 = time.monotonic()
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            self.reap()
            return 0.0
        t1 = self.wait_exit(timeout)
        self.kill()
        return None if t1 is None else t1 - t0

    def kill(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.reap()

    def reap(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        if self in LIVE:
            LIVE.remove(self)


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.002) -> Any:
    """Poll predicate until it is true or timeout passes; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def kill_all_live() -> None:
    for launch in list(LIVE):
        launch.kill()


# ---- pmd ---------------------------------------------------------------------------

def pmd_launch(base: Path, progs: list[Prog], main: list[str] | None = None,
               env: dict[str, str] | None = None, args: list[str] | None = None) -> Launch:
    config, state, logs = base / "config", base / "state", base / "log"
    for d in (config, state, logs):
        d.mkdir(parents=True, exist_ok=True)
    write_programs(config / "programs.json", progs)
    argv = [pmd_python(), "-m", "pmd_init", "--config-dir", str(config),
            "--state-dir", str(state), "--log-dir", str(logs),
            "--socket", str(base / "pmd.sock"), "--host", "127.0.0.1", "--port", "0",
            "--log-roots", str(base), *(args or [])]
    if main:
        argv += ["--", *main]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    for key in ("PMD_API_KEY", "PMD_API_KEY_FILE", "PMD_CONFIG_DIR", "PMD_STATE_DIR",
                "PMD_LOG_DIR", "PMD_SOCKET", "PMD_PORT", "PMD_HOST"):
        full_env.pop(key, None)
    return Launch("pmd", base, argv, full_env)


def write_programs(path: Path, progs: list[Prog]) -> None:
    """pmd's programs.json for `progs`."""
    programs = []
    for p in progs:
        spec: dict[str, object] = {
            "name": p.name, "command": shlex.join(p.argv), "boot": True,
            "startsecs": p.startsecs, "autorestart": "true" if p.autorestart else "false",
        }
        if p.log_max_bytes is not None:
            spec.update(log_max_bytes=p.log_max_bytes, log_backups=0)
        if p.env:
            spec["environment"] = p.env
        if p.startretries is not None:
            spec["startretries"] = p.startretries
        spec.update(p.pmd)
        programs.append(spec)
    path.write_text(json.dumps({"version": 1, "programs": programs}))


def startfloor_launch(base: Path, progs: list[Prog]) -> Launch:
    """bench/startfloor.py as PID 1, given the programs.json pmd would get."""
    base.mkdir(parents=True, exist_ok=True)
    write_programs(base / "programs.json", progs)
    return Launch("startfloor", base, [pmd_python(), str(ROOT / "bench" / "startfloor.py"),
                                       str(base / "programs.json")],
                  {**os.environ, "PYTHONPATH": str(ROOT)})


def teefloor_launch(base: Path, progs: list[Prog]) -> Launch:
    """GNU tee as PID 1, the one program's output on its stdin: each byte copied to the
    log file and to tee's own stdout, as a supervisor that forwards does, in C and without
    a prefix (the capture's floor with forwarding). The program's pipe stays open after it
    ends (a sleep holds it), so tee runs until it is killed, like an init."""
    if len(progs) != 1:
        raise ValueError("the tee floor runs one program")
    logs = base / "log"
    logs.mkdir(parents=True, exist_ok=True)
    script = 'exec tee -- "$0" < <("$@"; exec sleep 100000)'
    return Launch("teefloor", base, ["bash", "-c", script,
                                     str(tini_log_path(base, progs[0].name)),
                                     *progs[0].argv], dict(os.environ))


def pmd_log_path(base: Path, name: str) -> Path:
    return base / "log" / name / "stdout.log"


def pmd_api_ready(base: Path) -> bool:
    return (base / "state" / "api.json").exists()


def pmd_socket(base: Path) -> Path:
    return base / "pmd.sock"


# ---- supervisord -------------------------------------------------------------------

def supervisord_launch(base: Path, progs: list[Prog], rpc: bool = False,
                       inet: tuple[int, str | None, str | None] | None = None) -> Launch:
    """rpc: serve XML-RPC (what supervisorctl uses) on a Unix socket, supervisord_socket();
    inet (port, username, password): on 127.0.0.1 too, with basic auth when named."""
    logs = base / "log"
    logs.mkdir(parents=True, exist_ok=True)
    lines = [
        "[supervisord]", "nodaemon=true", f"logfile={base / 'supervisord.log'}",
        f"pidfile={base / 'supervisord.pid'}", f"childlogdir={logs}", "",
    ]
    if rpc:
        lines += [
            "[unix_http_server]", f"file={supervisord_socket(base)}", "chmod=0600", "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
        ]
    if inet is not None:
        port, username, password = inet
        lines += ["[inet_http_server]", f"port=127.0.0.1:{port}",
                  *([f"username={username}", f"password={password}"] if username else []), ""]
    for p in progs:
        command = shlex.join(p.argv).replace("%", "%%")
        maxbytes = p.log_max_bytes if p.log_max_bytes is not None else "50MB"
        lines += [
            f"[program:{p.name}]", f"command={command}", "autostart=true",
            f"autorestart={'true' if p.autorestart else 'false'}",
            f"startsecs={p.startsecs:g}",
            *([f"startretries={p.startretries}"] if p.startretries is not None else []),
            f"stdout_logfile={logs / (p.name + '.out')}",
            f"stdout_logfile_maxbytes={maxbytes}",
            f"stdout_logfile_backups={0 if p.log_max_bytes is not None else 10}",
            f"stderr_logfile={logs / (p.name + '.err')}",
        ]
        if p.env:
            pairs = ",".join(f'{k}="{v}"' for k, v in p.env.items())
            lines.append(f"environment={pairs}")
        lines.append("")
    conf = base / "supervisord.conf"
    conf.write_text("\n".join(lines))
    return Launch("supervisord", base, [shutil.which("supervisord") or "supervisord",
                                        "-n", "-c", str(conf)], dict(os.environ))


def supervisord_log_path(base: Path, name: str) -> Path:
    return base / "log" / f"{name}.out"


def supervisord_socket(base: Path) -> Path:
    return base / "supervisor.sock"


# ---- tini --------------------------------------------------------------------------

def tini_launch(base: Path, progs: list[Prog], main: list[str] | None = None) -> Launch:
    """tini -g runs `main`, or a shell that starts each program in the background (stdout
    to a file, as a supervisor would) and waits; TERM reaches the whole group."""
    logs = base / "log"
    logs.mkdir(parents=True, exist_ok=True)
    if main is None:
        parts = [f"{shlex.join(p.argv)} >{shlex.quote(str(logs / (p.name + '.out')))} 2>&1 &"
                 for p in progs]
        main = ["sh", "-c", " ".join(parts) + " wait"]
    return Launch("tini", base, [shutil.which("tini") or "tini", "-g", "--", *main],
                  dict(os.environ))


def tini_log_path(base: Path, name: str) -> Path:
    """The file a program's output goes to under tini, and under the tee floor."""
    return base / "log" / f"{name}.out"


# ---- the crash program -------------------------------------------------------------

def build_crasher(workdir: Path) -> list[str]:
    """bench/crasher.c built with the system's cc: argv of a program that appends a
    CLOCK_MONOTONIC stamp (ns) to the file named by its one argument and exits 1."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("bench: no C compiler (cc) to build bench/crasher.c; "
                 "Debian: apt-get install gcc")
    binary = workdir / "crasher"
    subprocess.run([cc, "-O2", "-o", str(binary), str(ROOT / "bench" / "crasher.c")],
                   check=True)
    return [str(binary)]


def read_stamps(path: Path) -> list[int]:
    """The crash program's start stamps (CLOCK_MONOTONIC ns, as time.monotonic_ns())."""
    try:
        return [int(x) for x in path.read_text().split()]
    except OSError:
        return []
