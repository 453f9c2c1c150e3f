"""pmd against tini and supervisord, side by side on this machine.

Every init runs as PID 1 of a fresh PID namespace (`unshare --pid --fork --mount-proc`)
with the same programs. Runs are interleaved (the order of the inits rotates every round)
and repeated; the table shows medians and the ratio pmd / anchor (below 1 is better for pmd
on times, memory, CPU and wake-ups; above 1 is better on throughput).

Scenarios:
  reap      3000 double-forked orphans made by the main command (a program under
            supervisord): time, tail after the last fork, peak zombies
  gap       crash to restart: a C program appends a CLOCK_MONOTONIC stamp and exits 1;
            autorestart true, startsecs 0; tini runs a bash `while true` loop (the floor).
            pmd keeps its default start-rate limit (5 starts in 10 s, then BACKOFF): its
            figure pools the gaps within rounds of 5 starts, each round started through
            the API while the program waits; the waits are excluded and counted
  fleet     100 `sleep` programs: exec to 100 running, RSS, idle context switches and CPU,
            then SIGTERM to exit; and the same with 1 program for the per-program RSS;
            then pmd's boot again with a boot plan in its config dir (`pmd_init
            --write-boot-plan` first, as an image's build runs it): a first start, and
            the note says how many programs each start's plan started; and, in pmd's
            rounds, the stack's floor (bench/stackfloor.py: sanic and pydantic serving one
            route in pmd's interpreter, no pmd), whose RSS the notes set beside pmd's,
            and the start's floor (bench/startfloor.py: pydantic validating the same
            programs.json with pmd's model, then each program spawned; none of pmd's
            start-up), timed as pmd's first start is, the notes setting the two side by side
  capture   a program writes 256 MiB of 100-byte lines to stdout (`yes | head -c N`);
            time and init CPU seconds, every init in its default configuration (pmd copies
            each line to its own stdout as `[name] line`; supervisord does not), plus pmd
            with PMD_LOG_FORWARD=0 in the same rounds (in the notes). Logs go to /dev/shm
            when it is a tmpfs (--capture-dir to change), so that the figure is the init's
            and not the disk's write-back; pmd's own stdout is a file beside them; tini's
            column is the program writing straight to a file (no capture at all: the
            floor). Then the same with the init's stdout a pipe that a thread of the bench
            drains, as a container runtime drains a container's stdout for `docker logs`
            (pmd and supervisord). Both, in pmd's rounds, also with GNU tee as PID 1
            copying the program's pipe to the log file and to its stdout (the capture's
            floor with forwarding: in C, no prefix), which the notes print
  list      100 `sleep` programs; each init's listing with status over its Unix socket,
            keep-alive connections (1, then 16) asking as fast as answers come for
            --list-seconds: pmd (defaults) GET /api/v1/daemon/programs?include_status=true,
            /api/v1/daemon/status and /api/processes; supervisord XML-RPC
            getAllProcessInfo (what `supervisorctl status` asks); req/s and p99
  reexec    pmd only: 5 `pmd reexec` while a client connects to the TCP port every 2 ms
            and asks for /api/v1/daemon/health; refused connections and the longest wait
  storm     20 programs exiting at once (the gap's C program, startsecs 0, autorestart
            true): status p50/p99 over the init's Unix socket while they churn, pmd
            (defaults) against supervisord (XML-RPC getAllProcessInfo); bench/chaos.py
            (`make chaos`) has the whole picture
  scale     the issue's scale rows: 1000 `sleep` programs (bench/faults.py's fleet: exec
            to all spawned, list with status p99, RSS, SIGTERM to exit), and 100 programs
            crash-looping for the window (chaos.run_storm: the init's CPU share, status
            p99); --quick: 250 programs and 30 crash-looping, for pmd and supervisord alike
            (--only scale,crashloop)

pmd_init is byte-compiled first, as an installed pmd is (PYTHONDONTWRITEBYTECODE would
otherwise make every start compile it from source).

Times are from the bench's own exec of `unshare` (a few ms, the same for every init).
The full run takes about 10 minutes, --quick about 3.

Usage: .venv/bin/python bench/run.py [--quick] [--reps N]
                                     [--only reap,gap,fleet,capture,list,storm,reexec,scale,
                                             crashloop]
                                     [--inits pmd,tini,supervisord] [--keep]
Needs: unshare (util-linux) and root or user namespaces; tini and supervisord for the
anchors (Debian: apt-get install tini supervisor); cc for the crash program.
Output: the table on stdout, every raw figure in bench/results/bench-<time>.json.
"""

from __future__ import annotations

import argparse
import bisect
import errno
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faults  # noqa: E402
import load  # noqa: E402
import procfs  # noqa: E402
from chaos import run_storm, storm_rows  # noqa: E402
from clients import ALL_INFO, PMD_STATUS, pmd_get, pmd_post  # noqa: E402
from clients import request as unix_request  # noqa: E402
from inits import (  # noqa: E402
    ROOT,
    Launch,
    Prog,
    build_crasher,
    kill_all_live,
    pmd_api_ready,
    pmd_launch,
    pmd_log_path,
    pmd_python,
    pmd_socket,
    read_stamps,
    startfloor_launch,
    supervisord_launch,
    supervisord_log_path,
    supervisord_socket,
    teefloor_launch,
    tini_launch,
    tini_log_path,
    wait_until,
)
from table import med, percentile, pooled, render  # noqa: E402

BENCH = Path(__file__).resolve().parent
INITS = ("pmd", "tini", "supervisord")
SCENARIOS = ("reap", "gap", "fleet", "capture", "list", "storm", "reexec", "scale",
             "crashloop")
#: pmd's listings with status, as the list row asks for them
LIST_TARGETS = {"programs": "/api/v1/daemon/programs?include_status=true",
                "status": PMD_STATUS, "processes": "/api/processes"}
LIST_CONNECTIONS = (1, 16)
MiB = 1 << 20


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- prerequisites -----------------------------------------------------------------

def check_prerequisites(wanted: list[str]) -> tuple[list[str], list[str]]:
    """(inits that can run, problems to print). unshare and pmd are required."""
    problems: list[str] = []
    if shutil.which("unshare") is None:
        sys.exit("bench: `unshare` (util-linux) is missing; it is needed to run each init "
                 "as PID 1 of its own PID namespace")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        sys.exit("bench: cannot create a PID namespace (run as root, or enable user "
                 f"namespaces): {probe.stderr.strip()}")
    check = subprocess.run([pmd_python(), "-c", "import pmd_init.pid1.main, sanic"],
                           capture_output=True, text=True, cwd=str(ROOT),
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    if check.returncode != 0:
        sys.exit("bench: pmd_init cannot be imported with "
                 f"{pmd_python()} (run `make test` once to create .venv):\n{check.stderr}")
    usable = ["pmd"]
    for name, package in (("tini", "tini"), ("supervisord", "supervisor")):
        if name not in wanted:
            continue
        if shutil.which(name) is None:
            problems.append(f"{name} is not installed (Debian: apt-get install {package}); "
                            f"its column is left empty")
        else:
            usable.append(name)
    return [i for i in INITS if i in usable and i in wanted], problems


def tool_versions() -> dict[str, str]:
    versions = {}
    for name, argv in (("tini", ["tini", "--version"]),
                       ("supervisord", ["supervisord", "--version"]),
                       ("pmd", [pmd_python(), "-m", "pmd_init", "--version"])):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
            versions[name] = (out.stdout or out.stderr).strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return versions


# ---- helpers -----------------------------------------------------------------------

def launch(kind: str, base: Path, progs: list[Prog], main: list[str] | None = None,
           env: dict[str, str] | None = None) -> Launch:
    if kind == "pmd":
        return pmd_launch(base, progs, main, env)
    if kind == "tini":
        return tini_launch(base, progs, main)
    if kind == "startfloor":
        return startfloor_launch(base, progs)
    if kind == "teefloor":
        return teefloor_launch(base, progs)
    if main is not None:
        raise ValueError("supervisord has no main command")
    return supervisord_launch(base, progs)


def log_path(kind: str, base: Path, name: str) -> Path:
    return {"pmd": pmd_log_path, "tini": tini_log_path, "teefloor": tini_log_path,
            "supervisord": supervisord_log_path}[kind](base, name)






class SleepCounter:
    """How many descendants of the init have exec'd `sleep` (cached: a sleep stays one)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.known: set[int] = set()
        self.other: set[int] = set()

    def __call__(self) -> int:
        live = procfs.descendants(self.pid)
        for child in live:
            if child in self.known:
                continue
            if procfs.comm(child) == "sleep":
                self.known.add(child)
        self.known &= set(live)
        return len(self.known)


# ---- scenarios ---------------------------------------------------------------------

def run_reap(kind: str, base: Path, opts: argparse.Namespace) -> dict[str, Any]:
    out = base / "orphans.json"
    main = [pmd_python(), str(BENCH / "orphans.py"), "--count", str(opts.orphans),
            "--out", str(out), "--cap", str(opts.reap_cap)]
    if kind == "supervisord":
        run = launch(kind, base, [Prog("forker", main, startsecs=0)]).start()
    else:
        run = launch(kind, base, [], main=main).start()
    try:
        if not wait_until(out.exists, opts.reap_cap + 60, 0.05):
            raise RuntimeError(f"{kind}: no result from the orphan maker\n{run.stderr_tail()}")
        return json.loads(out.read_text())
    finally:
        run.terminate(10)


def run_gap(kind: str, base: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """Crash to restart. supervisord and tini: one crasher for the window, every gap counts.
    pmd in its default configuration lets a crash loop start 5 times in 10 s and then holds
    it in BACKOFF ("start_limit"): the window is made of rounds, each a start asked through
    the API (which clears the limit, as an operator's start does) followed by pmd's own
    restarts up to the limit. The gaps within a round are pmd's crash→restart path; the gap
    that spans a start the bench asked for is the deliberate start-limit wait, excluded
    and counted."""
    stamps = base / "stamps"
    crash = [*opts.crasher, str(stamps)]
    if kind == "tini":
        run = launch(kind, base, [], main=["bash", "-c",
                                           f"while true; do {' '.join(crash)}; done"]).start()
    else:
        run = launch(kind, base, [Prog("crash", crash, startsecs=0, autorestart=True)]).start()
    asked: list[int] = []  # monotonic ns of each start the bench asked pmd for
    rounds: dict[str, Any] = {}
    try:
        # steady state: after pmd's API is up (its import blocks the loop once), and after
        # the first restart for every init
        if kind == "pmd":
            wait_until(lambda: pmd_api_ready(base), 15, 0.01)
        wait_until(lambda: stamps.exists() and stamps.stat().st_size > 0, 15, 0.005)
        time.sleep(0.2)
        assert run.pid is not None
        fds0, rss0 = procfs.fd_count(run.pid), procfs.rss_kib(run.pid)
        begin = time.monotonic_ns()
        duration = opts.gap_seconds_slow if kind == "supervisord" else opts.gap_seconds
        if kind == "pmd":
            rounds = pmd_gap_rounds(base, stamps, duration, asked)
        else:
            time.sleep(duration)
        end = time.monotonic_ns()
        fds1, rss1 = procfs.fd_count(run.pid), procfs.rss_kib(run.pid)
    finally:
        run.terminate(15)
    values = read_stamps(stamps)
    pairs = list(zip(values, values[1:], strict=False))
    inside = [(a, b) for a, b in pairs if a >= begin and b <= end]

    def spans_a_request(a: int, b: int) -> bool:
        i = bisect.bisect_right(asked, a)
        return i < len(asked) and asked[i] < b

    gaps = [(b - a) / 1e6 for a, b in inside if not spans_a_request(a, b)]
    if asked:  # starts in each round: the limit's burst, if pmd kept to its rule
        per_round = [sum(1 for v in values if x < v < y) for x, y in zip(asked, asked[1:],
                                                                           strict=False)]
        rounds["starts_per_round"] = sorted(set(per_round))
    waits = [(b - a) / 1e6 for a, b in inside if spans_a_request(a, b)]
    early = [(b - a) / 1e6 for a, b in pairs if b < begin]
    return {
        "gaps_ms": gaps, "n": len(gaps), "p50_ms": percentile(gaps, 50),
        "p99_ms": percentile(gaps, 99), "max_ms": max(gaps) if gaps else None,
        "restarts_per_s": len(gaps) / (duration or 1),
        "waits_excluded": len(waits), "waits_ms": waits, **rounds,
        "warmup_max_ms": max(early) if early else None, "warmup_n": len(early),
        # leak watch: the init's open files and RSS before and after the measured restarts
        "fds_before": fds0, "fds_after": fds1, "rss_before_kib": rss0, "rss_after_kib": rss1,
    }


def pmd_gap_rounds(base: Path, stamps: Path, duration: float,
                   asked: list[int]) -> dict[str, Any]:
    """Rounds of pmd's own restarts up to its start-rate limit (see run_gap). The API is
    asked only while the program waits in BACKOFF, never during a round's restarts."""
    sock = pmd_socket(base)
    program_id = pmd_get(sock, PMD_STATUS)["statuses"][0]["id"]
    spec = pmd_get(sock, f"/api/v1/daemon/programs/{program_id}")["program"]
    burst = int(spec["start_limit_burst"])
    if burst <= 0:
        raise RuntimeError("pmd: the start-rate limit is off; the gap figure is for defaults")

    def limited() -> bool:
        status = pmd_get(sock, f"{PMD_STATUS}/{program_id}")["status"]
        return status["status"] == "BACKOFF" and status.get("backoff_reason") == "start_limit"

    def round_done(target: int) -> bool:
        return len(read_stamps(stamps)) >= target

    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not wait_until(limited, 15, 0.002):
            raise RuntimeError("pmd: the crash loop did not reach BACKOFF (start_limit)")
        target = len(read_stamps(stamps)) + burst
        asked.append(time.monotonic_ns())
        pmd_post(sock, f"/api/v1/daemon/programs/{program_id}/start")
        # the round's restarts: watch the stamps, not the API, so as not to slow pmd down
        if not wait_until(lambda t=target: round_done(t), 10, 0.001):
            raise RuntimeError(f"pmd: fewer than {burst} starts after a start request")
    if not wait_until(limited, 15, 0.002):  # the last round is over too
        raise RuntimeError("pmd: the crash loop did not reach BACKOFF (start_limit)")
    asked.append(time.monotonic_ns())
    return {"rounds": len(asked) - 1, "burst": burst}


def fleet_progs(n: int) -> list[Prog]:
    return [Prog(f"p{i:03d}", ["sleep", "100000"]) for i in range(n)]


def run_fleet(kind: str, base: Path, opts: argparse.Namespace, n: int,
              idle_window: float, plan: bool = False) -> dict[str, Any]:
    """plan (pmd): `pmd_init --write-boot-plan` first, as an image's build step would run
    it, so that the start finds a boot plan in its config dir (docs/performance.md)."""
    launcher = launch(kind, base, fleet_progs(n))
    if plan:
        assert kind == "pmd"
        command = launcher.argv[launcher.argv.index("--mount-proc") + 1:]
        subprocess.run([*command, "--write-boot-plan"], env=launcher.env, check=True,
                       capture_output=True, timeout=60)
    run = launcher.start()
    result: dict[str, Any] = {"programs": n}
    try:
        assert run.pid is not None
        counter = SleepCounter(run.pid)
        if wait_until(lambda: counter() >= 1, 30, 0.001):
            result["first_s"] = time.monotonic() - run.t_exec
        if wait_until(lambda: counter() >= n, 60, 0.002) is False:
            raise RuntimeError(f"{kind}: only {counter()} of {n} programs running\n"
                               f"{run.stderr_tail()}")
        t_all = time.monotonic()
        result["boot_s"] = t_all - run.t_exec
        if kind == "pmd":
            wait_until(lambda: pmd_api_ready(base), 15, 0.002)
            result["api_ready_s"] = time.monotonic() - run.t_exec
            result["plan_started"] = pmd_plan_started(base)
            result["validated_started"] = pmd_validated_started(base)
        # settle: past every startsecs (1 s), past pmd's API start-up
        time.sleep(max(0.0, t_all + opts.settle - time.monotonic()))
        result["rss_kib"] = procfs.rss_kib(run.pid)
        result["uss_kib"] = procfs.uss_kib(run.pid)
        result["anon_kib"] = procfs.anon_kib(run.pid)
        result["threads"] = len(procfs.tasks(run.pid))
        if idle_window > 0:
            c0, cpu0, t0 = procfs.ctx_switches(run.pid), procfs.cpu_seconds(run.pid), \
                time.monotonic()
            time.sleep(idle_window)
            c1, cpu1, t1 = procfs.ctx_switches(run.pid), procfs.cpu_seconds(run.pid), \
                time.monotonic()
            result["ctx_per_s"] = (c1 - c0) / (t1 - t0)
            result["idle_cpu_ms_per_s"] = ((cpu1 or 0) - (cpu0 or 0)) * 1000 / (t1 - t0)
            result["rss_after_idle_kib"] = procfs.rss_kib(run.pid)
            result["running_before_stop"] = counter()
        result["stop_s"] = run.terminate(20)
        return result
    finally:
        run.kill()


def pmd_plan_started(base: Path) -> int:
    """How many programs pmd's boot plan started before its imports (its log line)."""
    text = (base / "init.stderr").read_text(errors="replace")
    found = re.search(r"boot plan \S+: (\d+) of \d+ programs started", text)
    return int(found.group(1)) if found else 0


def pmd_validated_started(base: Path) -> int:
    """Without a plan: how many programs pmd started once its configuration validated,
    before its other imports (pid1/firstboot.py; its log line)."""
    text = (base / "init.stderr").read_text(errors="replace")
    found = re.search(r"(\d+) of \d+ programs started once the configuration validated", text)
    return int(found.group(1)) if found else 0


def run_floor(kind: str, base: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """The stack's floor (bench/stackfloor.py): sanic and pydantic in pmd's interpreter
    serving one route, no pmd; its memory once it has answered as many requests as the
    fleet's checks ask of pmd, read at the same settle."""
    sock = base / "floor.sock"
    err = open(base / "floor.stderr", "wb")
    proc = subprocess.Popen([pmd_python(), str(BENCH / "stackfloor.py"), str(sock)],
                            stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"stackfloor: {(base / 'floor.stderr').read_text()[-500:]}")
        for _ in range(5):
            status, _body = unix_request(sock, "GET", "/programs")
            if status != 200:
                raise RuntimeError(f"stackfloor answered {status}")
        time.sleep(opts.settle)
        return {"rss_kib": procfs.rss_kib(proc.pid), "uss_kib": procfs.uss_kib(proc.pid),
                "anon_kib": procfs.anon_kib(proc.pid)}
    finally:
        proc.terminate()
        proc.wait(10)
        err.close()


def run_capture(kind: str, base: Path, opts: argparse.Namespace, source: str = "lines",
                forward: bool = True, stdout_pipe: bool = False,
                on_complete: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """`on_complete`, once the log is complete and before the init is stopped: what it
    returns joins the result."""
    go, start = base / "go", base / "start"
    writer = [pmd_python(), str(BENCH / "writer.py"), "--go", str(go), "--start", str(start),
              "--bytes", str(opts.capture_bytes), "--source", source]
    prog = Prog("writer", writer, startsecs=0, autorestart=False, log_max_bytes=2 << 30)
    env = {"PMD_LOG_FORWARD": "1" if forward else "0"}
    run = launch(kind, base, [prog], env=env).start(stdout_pipe=stdout_pipe)
    target = log_path(kind, base, "writer")
    try:
        assert run.pid is not None
        if kind == "pmd":
            wait_until(lambda: pmd_api_ready(base), 15, 0.005)
        counter = procfs.descendants
        wait_until(lambda: len(counter(run.pid)) > 0, 15, 0.005)  # type: ignore[arg-type]
        time.sleep(opts.settle)
        cpu0 = procfs.cpu_seconds(run.pid) or 0.0
        faults0 = procfs.minor_faults(run.pid) or 0
        go.touch()
        size = 0

        def complete() -> bool:
            nonlocal size
            try:
                size = target.stat().st_size
            except OSError:
                return False
            return size >= opts.capture_bytes

        ok = wait_until(complete, 120, 0.002)
        t_done = time.time()
        cpu1 = procfs.cpu_seconds(run.pid) or 0.0
        faults = (procfs.minor_faults(run.pid) or 0) - faults0
        if not ok:
            raise RuntimeError(f"{kind}: log has {size} of {opts.capture_bytes} bytes")
        t_start = float(start.read_text())
        seconds = t_done - t_start
        stdout_bytes = run.stdout_bytes if stdout_pipe else \
            (base / "init.stdout").stat().st_size
        # each 100-byte line once more on pmd's stdout, after its `[writer] ` prefix
        expected = opts.capture_bytes // 100 * (100 + len(b"[writer] "))
        extra = on_complete() if on_complete is not None else {}
        return {"seconds": seconds, "mib_per_s": opts.capture_bytes / MiB / seconds,
                "forward_expected": expected, "init_cpu_s": cpu1 - cpu0,
                "init_minor_faults": faults, "log_bytes": size, "init_stdout_bytes": stdout_bytes,
                "source": source, "forward": forward, "stdout_pipe": stdout_pipe, **extra}
    finally:
        if kind == "teefloor":
            run.kill()  # tee has no SIGTERM handler, and as PID 1 it ignores the signal
        else:
            run.terminate(15)


def run_list(kind: str, base: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """Listing with status under load: every program running first, then each target at
    1 and 16 keep-alive connections over the init's Unix socket."""
    progs = fleet_progs(opts.programs)
    if kind == "supervisord":
        run = supervisord_launch(base, progs, rpc=True).start()
        sock = supervisord_socket(base)
        targets = {"rpc": load.http_post("/RPC2", ALL_INFO, "text/xml")}
    else:
        run = launch(kind, base, progs).start()
        sock = pmd_socket(base)
        targets = {name: load.http_get(path) for name, path in LIST_TARGETS.items()}
    try:
        assert run.pid is not None
        counter = SleepCounter(run.pid)
        if not wait_until(lambda: counter() >= opts.programs, 60, 0.05):
            raise RuntimeError(f"{kind}: {counter()} of {opts.programs} programs running")
        wait_until(sock.exists, 15, 0.01)
        time.sleep(opts.settle)
        result: dict[str, Any] = {}
        cpu0 = procfs.cpu_seconds(run.pid) or 0.0
        for name, request in targets.items():
            for conns in LIST_CONNECTIONS:
                r = load.run(sock, request, conns, opts.list_seconds)
                if r["errors"] or not r["requests"]:
                    raise RuntimeError(f"{kind}: {name} at {conns} connections: {r}")
                for key in ("req_per_s", "p50_ms", "p99_ms", "reconnects"):
                    result[f"{name}_c{conns}_{key}"] = r[key]
        result["init_cpu_s"] = (procfs.cpu_seconds(run.pid) or 0.0) - cpu0
        return result
    finally:
        run.terminate(15)


def http_get(address: tuple[str, int] | str, path: str, method: str = "GET",
             timeout: float = 30.0) -> bytes:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: pmd\r\nContent-Length: 0\r\n"
                     f"Connection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def run_reexec(kind: str, base: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """Re-execs under a client that never stops asking: the listening sockets go through
    the exec, so nothing should be refused; the wait is the new pmd's start-up."""
    run = launch(kind, base, [Prog("sleeper", ["sleep", "1000"])]).start()
    try:
        if not wait_until(lambda: pmd_api_ready(base), 15):
            raise RuntimeError(f"pmd API not ready\n{run.stderr_tail()}")
        port = json.loads((base / "state" / "api.json").read_text())["port"]
        halt = threading.Event()
        counts = {"refused": 0, "failed": 0, "answered": 0}
        waits: list[float] = []

        def client() -> None:
            while not halt.is_set():
                t0 = time.monotonic()
                try:
                    answer = http_get(("127.0.0.1", port), "/api/v1/daemon/health")
                except OSError as exc:
                    counts["refused" if exc.errno == errno.ECONNREFUSED else "failed"] += 1
                else:
                    counts["answered" if answer.startswith(b"HTTP/1.1 200") else "failed"] += 1
                    waits.append(time.monotonic() - t0)
                time.sleep(0.002)

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        ready = run.stderr_tail(1 << 20).count("API on")
        for _ in range(opts.reexecs):
            http_get(str(base / "pmd.sock"), "/api/v1/daemon/reexec", "POST")
            ready += 1
            if not wait_until(lambda n=ready: run.stderr_tail(1 << 20).count("API on") >= n,
                              30, 0.01):
                raise RuntimeError(f"pmd did not come back\n{run.stderr_tail()}")
            time.sleep(0.1)  # some ordinary traffic between re-execs
        halt.set()
        thread.join(30)
        return {"reexecs": opts.reexecs, **counts, "longest_wait_s": max(waits, default=None)}
    finally:
        run.terminate(10)


def run_scale(kind: str, base: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """The issue's scale rows: --scale-programs `sleep` programs (bench/faults.py's fleet):
    exec to all spawned, list with status p99 (sequential requests once all are RUNNING),
    RSS, SIGTERM to exit."""
    return faults.run_fleet(kind, base, opts.scale_programs, opts.scale_lists,
                            list_seconds=opts.scale_list_seconds)


def run_crashloop(kind: str, base: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """--crashloop-programs programs crash-looping for the whole window (chaos.run_storm:
    startretries 1000, pmd with its default start-rate limit), status asked 20 times a
    second: the init's CPU share and status p99."""
    loop = argparse.Namespace(**{**vars(opts), "storm_programs": opts.crashloop_programs,
                                 "storm_seconds": opts.crashloop_seconds,
                                 "storm_rate": 20.0})
    return run_storm(kind, base, loop)


def precompile() -> None:
    """Byte-compile pmd_init, as installing it does (pip writes the .pyc files): a run
    with PYTHONDONTWRITEBYTECODE set would otherwise compile every module from source at
    every start, which no installed pmd does."""
    subprocess.run([pmd_python(), "-m", "compileall", "-q", str(ROOT / "pmd_init")],
                   check=False, stdout=subprocess.DEVNULL)


# ---- orchestration -----------------------------------------------------------------

class Bench:
    def __init__(self, opts: argparse.Namespace, inits: list[str]) -> None:
        self.opts = opts
        self.inits = inits
        self.tmp = Path(tempfile.mkdtemp(prefix="pmd-bench-"))
        # capture runs write 256 MiB logs: on tmpfs by default, so that the figure is the
        # init's cost and not the disk's write-back (which varies run to run)
        self.capture_tmp = Path(tempfile.mkdtemp(prefix="pmd-bench-", dir=opts.capture_dir))
        self.raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.errors: list[str] = []
        self.counter = 0

    def once(self, scenario: str, kind: str, fn: Callable[..., dict[str, Any]],
             *args: Any, **kwargs: Any) -> None:
        self.counter += 1
        root = self.capture_tmp if scenario.startswith("capture") else self.tmp
        base = root / f"{self.counter:03d}-{scenario}-{kind}"
        base.mkdir()
        t0 = time.monotonic()
        try:
            result = fn(kind, base, self.opts, *args, **kwargs)
        except Exception as exc:  # one failed run must not lose the others
            self.errors.append(f"{scenario}/{kind}: {exc}")
            log(f"  {scenario:<14} {kind:<12} FAILED: {exc}")
            kill_all_live()
            return
        finally:
            if not self.opts.keep:
                shutil.rmtree(base, ignore_errors=True)
        self.raw.setdefault(scenario, {}).setdefault(kind, []).append(result)
        brief = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()
                 if not isinstance(v, list)}
        log(f"  {scenario:<14} {kind:<12} {time.monotonic() - t0:5.1f}s {brief}")

    def rounds(self, scenario: str, kinds: list[str], fn: Callable[..., dict[str, Any]],
               reps: int, *args: Any, **kwargs: Any) -> None:
        for rep in range(reps):
            order = kinds[rep % len(kinds):] + kinds[:rep % len(kinds)]
            for kind in order:
                self.once(scenario, kind, fn, *args, **kwargs)

    def run(self) -> None:
        o = self.opts
        only = set(o.only.split(",")) if o.only else set(SCENARIOS)
        inits = self.inits
        if "reap" in only:
            log(f"reap: {o.orphans} double-forked orphans")
            self.rounds("reap", inits, run_reap, o.reap_reps)
        if "gap" in only or "storm" in only:
            o.crasher = build_crasher(self.tmp)  # crashloop's too
        if "gap" in only:
            log("gap: crash to restart")
            self.rounds("gap", inits, run_gap, o.reps)
        if "storm" in only:
            log(f"storm: {o.storm_programs} programs exiting at once, status requests "
                f"for {o.storm_seconds:g} s")
            self.rounds("storm", [k for k in inits if k != "tini"], run_storm, o.reps)
        if "fleet" in only:
            log(f"fleet: {o.programs} programs (boot, RSS, idle, stop), then 1 program "
                "(RSS); pmd twice a round: a first start, and a start with a boot plan in "
                "its config dir (pmd_init --write-boot-plan, an image's build step)")
            # pmd's rounds also start the stack's floor (bench/stackfloor.py), for its RSS,
            # and the start's floor (bench/startfloor.py), for its times
            kinds = inits + (["pmd+plan", "floor", "startfloor"] if "pmd" in inits else [])
            for rep in range(o.reps):
                for kind in kinds[rep % len(kinds):] + kinds[:rep % len(kinds)]:
                    if kind == "pmd+plan":
                        self.once("fleet_plan", "pmd", run_fleet, o.programs, 0.0, plan=True)
                    elif kind == "floor":
                        self.once("floor", "stack", run_floor)
                    elif kind == "startfloor":
                        self.once("fleet", kind, run_fleet, o.programs, 0.0)
                    else:
                        self.once("fleet", kind, run_fleet, o.programs, o.idle_window)
            self.rounds("fleet1", [k for k in inits if k != "tini"], run_fleet, o.reps, 1, 0.0)
        if "capture" in only:
            log(f"capture: {o.capture_bytes // MiB} MiB to stdout (pmd also without "
                "forwarding, in the same rounds)")
            # pmd's rounds also run the capture's floor with forwarding: GNU tee as PID 1
            kinds = inits + (["pmd-quiet", "teefloor"] if "pmd" in inits else [])
            for rep in range(o.reps):
                for kind in kinds[rep % len(kinds):] + kinds[:rep % len(kinds)]:
                    if kind == "pmd-quiet":
                        self.once("capture_quiet", "pmd", run_capture, forward=False)
                    else:
                        self.once("capture", kind, run_capture)
            log("capture: the same, each init's stdout a pipe the bench reads (as under "
                "docker)")
            piped = [k for k in inits if k != "tini"] + (["teefloor"] if "pmd" in inits else [])
            self.rounds("capture_pipe", piped, run_capture, o.reps, stdout_pipe=True)
        if "list" in only:
            log(f"list: {o.programs} programs, listings with status at "
                f"{' and '.join(map(str, LIST_CONNECTIONS))} connections")
            self.rounds("list", [k for k in inits if k != "tini"], run_list, o.reps)
        if "scale" in only:
            log(f"scale: {o.scale_programs} programs (spawn, list p99, RSS, SIGTERM)")
            self.rounds("scale", [k for k in inits if k != "tini"], run_scale, o.scale_reps)
        if "crashloop" in only:
            if "gap" not in only and "storm" not in only:
                o.crasher = build_crasher(self.tmp)
            log(f"crashloop: {o.crashloop_programs} programs crash-looping for "
                f"{o.crashloop_seconds:g} s, status 20 times a second")
            self.rounds("crashloop", [k for k in inits if k != "tini"], run_crashloop,
                        o.scale_reps)
        if "reexec" in only and "pmd" in inits:
            log(f"reexec: {o.reexecs} re-execs of pmd under a client connecting every 2 ms")
            self.rounds("reexec", ["pmd"], run_reexec, 1)

    def cleanup(self) -> None:
        kill_all_live()
        if not self.opts.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
            shutil.rmtree(self.capture_tmp, ignore_errors=True)


# ---- the table ---------------------------------------------------------------------





def figures(raw: dict[str, Any], inits: list[str]) -> list[dict[str, Any]]:
    """Rows: (label, unit, {init: value}); medians over runs unless said otherwise."""
    rows: list[dict[str, Any]] = []

    def row(label: str, unit: str, get: Callable[[str], float | None], scale: float = 1.0,
            fmt: str = "{:.3g}", better: str = "lower") -> None:
        values = {}
        for kind in inits:
            v = get(kind)
            values[kind] = None if v is None else v * scale
        if all(v is None for v in values.values()):
            return
        rows.append({"figure": label, "unit": unit, "values": values, "fmt": fmt,
                     "better": better})

    def runs_of(scenario: str, kind: str) -> list[dict[str, Any]]:
        return raw.get(scenario, {}).get(kind, [])

    row("reap 3000 orphans: first fork to none left", "s",
        lambda k: med(raw, "reap", k, "total_s"))
    row("reap: tail after the last fork", "ms", lambda k: med(raw, "reap", k, "tail_s"), 1e3)
    row("reap: zombies 1 ms after the last fork", "",
        lambda k: med(raw, "reap", k, "zombies_1ms"), fmt="{:.0f}")
    row("reap: peak zombies", "", lambda k: med(raw, "reap", k, "peak_zombies"), fmt="{:.0f}")
    row("reap: orphans left at the cap", "", lambda k: med(raw, "reap", k, "left")
        if runs_of("reap", k) else None, fmt="{:.0f}")
    row("crash→restart gap p50 (pooled)", "ms", lambda k: pooled(raw, "gap", k, "gaps_ms", 50))
    row("crash→restart gap p99 (pooled)", "ms", lambda k: pooled(raw, "gap", k, "gaps_ms", 99))
    row("crash→restart: gaps measured", "", lambda k: sum(r["n"] for r in runs_of("gap", k))
        if runs_of("gap", k) else None, fmt="{:.0f}", better="higher")
    row("crash→restart: start-limit waits excluded", "",
        lambda k: sum(r["waits_excluded"] for r in runs_of("gap", k))
        if k == "pmd" and runs_of("gap", k) else None, fmt="{:.0f}")
    row("exec → 100 programs running", "s", lambda k: med(raw, "fleet", k, "boot_s"))
    row("exec → first program running", "s", lambda k: med(raw, "fleet", k, "first_s"))
    plan = "fleet_plan" if runs_of("fleet_plan", "pmd") else "fleet"
    row("exec → 100 running, pmd with a boot plan", "s",
        lambda k: med(raw, plan if k == "pmd" else "fleet", k, "boot_s"))
    row("exec → first running, pmd with a boot plan", "s",
        lambda k: med(raw, plan if k == "pmd" else "fleet", k, "first_s"))
    row("SIGTERM → exit, 100 programs", "s", lambda k: med(raw, "fleet", k, "stop_s"))
    row("init RSS, 100 programs", "MiB", lambda k: med(raw, "fleet", k, "rss_kib"), 1 / 1024)
    row("init USS, 100 programs", "MiB", lambda k: med(raw, "fleet", k, "uss_kib"), 1 / 1024)
    row("init anonymous memory, 100 programs", "MiB",
        lambda k: med(raw, "fleet", k, "anon_kib"), 1 / 1024)
    row("init RSS, 1 program", "MiB", lambda k: med(raw, "fleet1", k, "rss_kib"), 1 / 1024)

    def per_program(kind: str) -> float | None:
        a, b = med(raw, "fleet", kind, "rss_kib"), med(raw, "fleet1", kind, "rss_kib")
        return None if a is None or b is None else (a - b) / 99

    row("init RSS per program (1→100)", "KiB", per_program)
    row("idle context switches, 100 programs", "/s", lambda k: med(raw, "fleet", k, "ctx_per_s"))
    row("idle CPU, 100 programs", "ms/s", lambda k: med(raw, "fleet", k, "idle_cpu_ms_per_s"))
    row("capture 256 MiB of 100-byte lines", "MiB/s", lambda k: med(raw, "capture", k, "mib_per_s"),
        better="higher")
    row("capture: init CPU", "cpu-s", lambda k: med(raw, "capture", k, "init_cpu_s"))
    row("capture, the init's stdout a pipe (docker)", "MiB/s",
        lambda k: med(raw, "capture_pipe", k, "mib_per_s"), better="higher")
    row("capture, stdout a pipe: init CPU", "cpu-s",
        lambda k: med(raw, "capture_pipe", k, "init_cpu_s"))

    def forwarded(kind: str) -> float | None:  # pmd's `[name] line` copies that reached it
        runs = raw.get("capture_pipe", {}).get(kind, [])
        if kind != "pmd" or not runs:
            return None
        return statistics.median(100 * r["init_stdout_bytes"] / r["forward_expected"]
                                 for r in runs)

    row("capture, stdout a pipe: lines forwarded", "%", forwarded, better="higher")

    def listing(pmd_key: str, figure: str) -> Callable[[str], float | None]:
        def get(kind: str) -> float | None:
            key = pmd_key if kind == "pmd" else "rpc"
            return med(raw, "list", kind, f"{key}_{figure}")
        return get

    for name, label in (("programs", "list 100 programs with status"),
                        ("status", "daemon/status, 100 programs"),
                        ("processes", "/api/processes, 100 programs")):
        for conns in LIST_CONNECTIONS:
            row(f"{label}, {conns} conn.", "req/s", listing(name, f"c{conns}_req_per_s"),
                fmt="{:.0f}", better="higher")
        row(f"{label}, 16 conn. p99", "ms", listing(name, "c16_p99_ms"))
    rows += storm_rows(raw, inits, short=True)
    n = next((r["programs"] for runs in raw.get("scale", {}).values() for r in runs), 1000)
    row(f"scale: exec → {n} programs spawned", "s", lambda k: med(raw, "scale", k, "spawned_s"))
    row(f"scale: list {n} programs with status p99", "ms",
        lambda k: med(raw, "scale", k, "p99_ms"))
    row(f"scale: init RSS, {n} programs", "MiB", lambda k: med(raw, "scale", k, "rss_kib"),
        1 / 1024)
    row(f"scale: init anonymous memory, {n} programs", "MiB",
        lambda k: med(raw, "scale", k, "anon_kib"), 1 / 1024)

    def per_program_scale(kind: str) -> float | None:  # after the scale's listings
        a, b = med(raw, "scale", kind, "rss_kib"), med(raw, "fleet1", kind, "rss_kib")
        return None if a is None or b is None or n <= 1 else (a - b) / (n - 1)

    row(f"scale: init RSS per program (1→{n})", "KiB", per_program_scale)
    row(f"scale: SIGTERM → exit, {n} programs", "s", lambda k: med(raw, "scale", k, "stop_s"))
    n = next((r["programs"] for runs in raw.get("crashloop", {}).values() for r in runs), 100)
    row(f"scale: {n} programs crash-looping, init CPU share", "%",
        lambda k: med(raw, "crashloop", k, "cpu_share"), 100)
    row(f"scale: {n} programs crash-looping, status p99", "ms",
        lambda k: pooled(raw, "crashloop", k, "latencies_ms", 99))
    return rows








def extras(raw: dict[str, Any]) -> list[str]:
    notes = []
    api = med(raw, "fleet", "pmd", "api_ready_s")
    if api is not None:
        notes.append(f"pmd exec → API answering (100 programs): {api:.3f} s")
    warm = [r["warmup_max_ms"] for r in raw.get("gap", {}).get("pmd", [])
            if r.get("warmup_max_ms") is not None]
    if warm:
        notes.append(f"pmd worst crash→restart gap while its HTTP stack starts (excluded "
                     f"above): {statistics.median(warm):.1f} ms (median over runs)")
    for scenario, what in (("fleet", "first start (fresh config and state dirs)"),
                           ("fleet_plan", "start with a boot plan in the config dir")):
        runs = raw.get(scenario, {}).get("pmd", [])
        if runs:
            used = [r.get("plan_started", 0) for r in runs]
            validated = [r.get("validated_started", 0) for r in runs]
            api_s = statistics.median(r["api_ready_s"] for r in runs if "api_ready_s" in r)
            notes.append(f"pmd {what}: programs the boot plan started per run {used}, "
                         f"started once the configuration validated {validated}, "
                         f"API answering at {api_s:.3f} s")
    floor, pmd_rss = med(raw, "floor", "stack", "rss_kib"), med(raw, "fleet", "pmd", "rss_kib")
    if floor is not None and pmd_rss is not None:
        floor_anon = med(raw, "floor", "stack", "anon_kib") or 0
        pmd_anon = med(raw, "fleet", "pmd", "anon_kib") or 0
        notes.append(f"the stack's floor (sanic and pydantic in pmd's interpreter serving one "
                     f"route, no pmd: bench/stackfloor.py): RSS {floor / 1024:.1f} MiB, "
                     f"anonymous {floor_anon / 1024:.1f} MiB; pmd with 100 programs holds "
                     f"{(pmd_rss - floor) / 1024:.1f} MiB of RSS and "
                     f"{(pmd_anon - floor_anon) / 1024:.1f} MiB of anonymous memory above it")
    first, boot = med(raw, "fleet", "startfloor", "first_s"), \
        med(raw, "fleet", "startfloor", "boot_s")
    pmd_first, pmd_boot = med(raw, "fleet", "pmd", "first_s"), med(raw, "fleet", "pmd", "boot_s")
    if first is not None and boot is not None and pmd_first is not None \
            and pmd_boot is not None:
        n = raw["fleet"]["startfloor"][0]["programs"]
        notes.append(f"the start's floor (pydantic validating the same programs.json with "
                     f"pmd's model, then each program spawned; none of pmd's start-up: "
                     f"bench/startfloor.py): first program running {first:.3f} s, "
                     f"{n} running {boot:.3f} s; pmd's first start without a "
                     f"plan: {pmd_first:.3f} s ({(pmd_first - first) * 1000:+.0f} ms) and "
                     f"{pmd_boot:.3f} s ({(pmd_boot - boot) * 1000:+.0f} ms)")
    threads = med(raw, "fleet", "pmd", "threads")
    if threads is not None:
        notes.append(f"pmd threads with 100 programs: {threads:.0f}")
    quiet = raw.get("capture_quiet", {}).get("pmd", [])
    if quiet:
        speed = sorted(r["mib_per_s"] for r in quiet)
        cpu = sorted(r["init_cpu_s"] for r in quiet)
        note = ("pmd capture without forwarding (the same lines, PMD_LOG_FORWARD=0, in the "
                f"capture's rounds): {statistics.median(speed):.0f} MiB/s "
                f"[{speed[0]:.0f}-{speed[-1]:.0f}], {statistics.median(cpu):.2f} init cpu-s "
                f"[{cpu[0]:.2f}-{cpu[-1]:.2f}]")
        plain = raw.get("capture", {}).get("supervisord", [])
        plain_cpu = statistics.median(r["init_cpu_s"] for r in plain) if plain else 0.0
        if plain and plain_cpu > 0:
            plain_speed = statistics.median(r["mib_per_s"] for r in plain)
            note += (f", {statistics.median(speed) / plain_speed:.2f}x supervisord's MiB/s "
                     f"and {statistics.median(cpu) / plain_cpu:.2f}x its cpu-s")
        notes.append(note)
    tee = []
    for scenario, what in (("capture", "stdout a file"), ("capture_pipe", "stdout a pipe")):
        tee_speed, tee_cpu = med(raw, scenario, "teefloor", "mib_per_s"), \
            med(raw, scenario, "teefloor", "init_cpu_s")
        theirs = med(raw, scenario, "supervisord", "mib_per_s")
        if tee_speed is not None and tee_cpu is not None:
            versus = f", {tee_speed / theirs:.2f}x supervisord's" if theirs else ""
            tee.append(f"{what}: {tee_speed:.0f} MiB/s{versus}, {tee_cpu:.2f} cpu-s")
    if tee:
        notes.append("the capture's floor with forwarding (GNU tee as PID 1: the program's "
                     "pipe copied to the log file and to tee's stdout, in C, no prefix): "
                     + "; ".join(tee))
    for r in raw.get("reexec", {}).get("pmd", []):
        wait = r["longest_wait_s"]
        notes.append(f"pmd re-exec x{r['reexecs']} under a client connecting every 2 ms: "
                     f"{r['refused']} refused, {r['failed']} failed, {r['answered']} "
                     "answered, longest wait "
                     + (f"{wait:.2f} s" if wait is not None else "n/a"))
    gap_pmd = raw.get("gap", {}).get("pmd", [])
    if gap_pmd:
        per_round = sorted({n for r in gap_pmd for n in r.get("starts_per_round", [])})
        notes.append(
            "pmd crash→restart gaps are those within bursts of its default start-rate limit "
            f"({gap_pmd[0].get('burst')} starts in 10 s): "
            f"{sum(r['rounds'] for r in gap_pmd)} rounds, each a start asked through the "
            f"API while the program waited in BACKOFF start_limit; "
            f"{sum(r['n'] for r in gap_pmd)} gaps measured, "
            f"{sum(r['waits_excluded'] for r in gap_pmd)} start-limit waits excluded; "
            f"starts per round: {per_round}. supervisord and tini: every gap in the window")
    for kind, runs in raw.get("gap", {}).items():
        rates = [r["restarts_per_s"] for r in runs]
        what = "measured gaps per second" if kind == "pmd" else "restarts per second"
        notes.append(f"{kind} {what} in the gap test: {statistics.median(rates):.1f}")
    for kind, runs in raw.get("storm", {}).items():
        starts = statistics.median(r["starts_median"] for r in runs)
        notes.append(f"crash storm, {kind}: {starts:.0f} starts per program in "
                     f"{statistics.median(r['window_s'] for r in runs):.0f} s, status p99 "
                     f"{statistics.median(r['p99_ms'] for r in runs):.1f} ms (details: "
                     f"make chaos)")
    return notes


def default_capture_dir() -> str | None:
    """/dev/shm if it is a tmpfs with room for two 256 MiB logs; else the temp folder."""
    try:
        with open("/proc/mounts") as f:
            tmpfs = any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in f)
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return "/dev/shm" if tmpfs and st.f_bavail * st.f_frsize > 1 << 30 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="one round, shorter windows (under 2 minutes)")
    ap.add_argument("--reps", type=int, default=None, help="rounds per scenario (default 3)")
    ap.add_argument("--only", default="", help="comma list of " + ",".join(SCENARIOS))
    ap.add_argument("--inits", default=",".join(INITS), help="comma list of pmd,tini,supervisord")
    ap.add_argument("--capture-dir", default=default_capture_dir(),
                    help="where the capture logs go (default /dev/shm when it is a tmpfs)")
    ap.add_argument("--keep", action="store_true", help="keep the run folders (for debugging)")
    ap.add_argument("--out", default=None, help="JSON result path")
    o = ap.parse_args()
    quick = o.quick
    o.reps = o.reps or (1 if quick else 3)
    o.reap_reps = o.reps
    o.orphans = 3000
    o.reap_cap = 40.0 if quick else 60.0
    o.gap_seconds = 2.0 if quick else 3.0
    o.gap_seconds_slow = 8.0 if quick else 15.0  # supervisord restarts about once a second
    o.programs = 100
    o.idle_window = 5.0 if quick else 10.0
    o.settle = 1.5 if quick else 2.0
    o.capture_bytes = 256 * MiB
    o.reexecs = 5
    o.list_seconds = 2.0 if quick else 4.0
    # The scale is 1000 programs and 100 crash-looping; supervisord takes minutes
    # over those (30 s to spawn 1000, seconds a listing, 50 s before it answers while 100
    # crash-loop), so --quick measures a smaller scale, both inits alike.
    o.scale_programs = 250 if quick else 1000
    o.scale_lists, o.scale_list_seconds = (20, 10.0) if quick else (200, 30.0)
    o.scale_reps = 1 if quick else o.reps
    o.crashloop_programs, o.crashloop_seconds = (30, 5.0) if quick else (100, 20.0)
    # long enough to hold a burst of pmd's start limit after its first 10 s wait
    o.storm_programs, o.storm_seconds, o.storm_rate, o.storm_settle = \
        20, 10.0 if quick else 20.0, 50.0, 0.5

    wanted = [k for k in o.inits.split(",") if k]
    inits, problems = check_prerequisites(wanted)
    for p in problems:
        log(f"bench: {p}")
    precompile()
    started = time.time()
    bench = Bench(o, inits)
    try:
        bench.run()
    except KeyboardInterrupt:
        log("interrupted: stopping what was started")
    finally:
        bench.cleanup()
    rows = figures(bench.raw, inits)
    table = render(rows, inits)
    notes = extras(bench.raw)
    print()
    print(f"pmd vs anchors on {platform.node() or 'this machine'}: {os.cpu_count()} cpus, "
          f"Linux {platform.release()}, {'quick' if quick else 'full'} run, "
          f"{o.reps} round(s), {time.time() - started:.0f} s")
    print(table)
    for n in notes:
        print(f"- {n}")
    for e in bench.errors:
        print(f"! {e}")
    for p in problems:
        print(f"! {p}")
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    out = Path(o.out) if o.out else results / time.strftime("bench-%Y%m%d-%H%M%S.json")
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": quick, "reps": o.reps,
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version(), "loadavg": os.getloadavg()},
        "versions": tool_versions(), "inits": inits, "problems": problems,
        "errors": bench.errors, "duration_s": time.time() - started,
        "table": [{k: v for k, v in r.items() if k != "fmt"} for r in rows],
        "notes": notes, "raw": bench.raw,
    }
    out.write_text(json.dumps(doc, indent=1))
    print(f"raw figures: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    sys.exit(1 if bench.errors else 0)


if __name__ == "__main__":
    main()
