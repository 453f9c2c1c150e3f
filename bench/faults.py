"""The fault scenarios of `make chaos` (bench/chaos.py drives them), pmd beside supervisord
where supervisord has the same fault. Each init runs as PID 1 of its own PID namespace;
each scenario records the init's open files before and after the fault.

  crashloop  100 programs exiting at once (bench/crasher.c), for --seconds: the storm of
             chaos.py with 100 programs (pmd with its start-rate limit, pmd-nolimit,
             supervisord): the init's CPU share and the status p99 while they churn
  fleet      1000 `sleep` programs: exec to every process spawned (from /proc), exec to
             every program RUNNING (the init's own state timestamps, whole seconds),
             list with status p50/p99 (200 requests, one connection each), RSS, SIGTERM
             to exit
  flood      one program writing lines as fast as it can (`yes`, logs rotated at 8 MB),
             for --seconds: status p50/p99 and the init's CPU share while it writes
  stalled    200 half-sent requests on the init's socket, held; pmd also 5 WebSocket and
             5 SSE readers that never read, while a program restarts every 0.1 s and one
             floods its log: RSS and open files all along, other clients' status p99;
             4 rounds of holding and closing in one init, RSS after each round
  qstorm     pmd only: 20 quick-starts of the crash program (startsecs 0, autorestart true,
             no start-rate limit), for --qstorm-seconds: /health p50/p99, open files
             and RSS before, most seen and after, starts per launch
  kill9      pmd only: SIGKILL at a random moment (0.06-1.9 s) during a stream of API
             add/edit/remove, --rounds times (50): corrupt files, unclean boots, temp
             files left, acknowledged writes lost (each must be 0)
  fulldisk   pmd only: the state dir on a 64 KiB tmpfs, quick-starts until it is full:
             the first 507's message, ephemeral.json valid after every answer, answered
             launches missing from it, temp files left (needs root for the mount)

Figures in bench/results/chaos-<time>.json and the table; assertions belong to the quick
forms in make test (integration/test_faults.py), never timings.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import procfs
from clients import (
    pmd_status_raw,
    pmd_statuses,
    request,
    supervisord_status_raw,
    supervisord_statuses,
)
from inits import (
    Launch,
    Prog,
    pmd_api_ready,
    pmd_launch,
    pmd_socket,
    supervisord_launch,
    supervisord_socket,
    wait_until,
)
from table import percentile

API = "/api/v1/daemon"
Ask = Callable[..., tuple[int, bytes]]


#: pmd's variants: settings over its defaults.
PMD_ENV = {"pmd-noforward": {"PMD_LOG_FORWARD": "0"}}


def launch(kind: str, base: Path, progs: list[Prog]) -> tuple[Launch, Path, Ask, Callable]:
    if kind.startswith("pmd"):
        return (pmd_launch(base, progs, env=PMD_ENV.get(kind)).start(), pmd_socket(base),
                pmd_status_raw, pmd_statuses)
    return (supervisord_launch(base, progs, rpc=True).start(), supervisord_socket(base),
            supervisord_status_raw, supervisord_statuses)


def wait_answering(run: Launch, sock: Path, ask: Ask, parse: Callable, n: int,
                   timeout: float = 120) -> float:
    """Seconds from exec to the first status answer that lists all n programs."""
    def answered() -> bool:
        try:
            status, raw = ask(sock, timeout=10)
        except OSError:
            return False
        return status == 200 and len(parse(raw)) == n

    if not wait_until(answered, timeout, 0.01):
        raise RuntimeError(f"{run.kind}: no status answer in {timeout} s\n{run.stderr_tail()}")
    return time.monotonic() - run.t_exec


def measure_status(pid: int, sock: Path, ask: Ask, seconds: float, rate: float
                   ) -> dict[str, Any]:
    """Status requests at `rate` a second for `seconds`; round trips, failures, the init's
    CPU over the window and its open files and RSS, sampled before each request."""
    latencies: list[float] = []
    fds: list[int] = []
    rss: list[int] = []
    failed = 0
    cpu0 = procfs.cpu_seconds(pid) or 0.0
    t_begin = time.monotonic()
    next_at, end_at = t_begin, t_begin + seconds
    while (now := time.monotonic()) < end_at:
        if next_at > now:
            time.sleep(next_at - now)
        fds.append(procfs.fd_count(pid) or 0)
        rss.append(procfs.rss_kib(pid) or 0)
        t0 = time.perf_counter()
        try:
            status, _ = ask(sock, timeout=10)
        except OSError:
            status = 0
        if status == 200:
            latencies.append((time.perf_counter() - t0) * 1e3)
        else:
            failed += 1
        next_at = max(next_at + 1.0 / rate, time.monotonic())
    window = time.monotonic() - t_begin
    cpu = (procfs.cpu_seconds(pid) or cpu0) - cpu0
    return {"window_s": window, "latencies_ms": latencies, "requests": len(latencies),
            "failed": failed, "p50_ms": statistics.median(latencies) if latencies else None,
            "p99_ms": percentile(latencies, 99), "max_ms": max(latencies, default=None),
            "cpu_s": cpu, "cpu_share": cpu / window if window else None,
            "fds_max": max(fds, default=None), "rss_max_kib": max(rss, default=None)}


# ---- crashloop: chaos.run_storm with 100 programs ----------------------------------------

# (bench/chaos.py calls its run_storm with --crashloop-programs)


# ---- fleet ---------------------------------------------------------------------------

def running_by_own_clock(kind: str, statuses: list[dict[str, Any]]) -> float | None:
    """The latest time (Unix, whole seconds) any program entered RUNNING, from the init's
    own state: pmd's `since`; supervisord's `start` + startsecs (1)."""
    times = []
    for s in statuses:
        if kind.startswith("pmd"):
            state = s["status"]
            if state.get("status") != "RUNNING" or not state.get("since"):
                return None
            times.append(time.mktime(time.strptime(state["since"], "%Y-%m-%dT%H:%M:%SZ"))
                         - time.timezone)
        else:
            if s.get("statename") != "RUNNING":
                return None
            times.append(float(s["start"]) + 1)
    return max(times, default=None)


def run_fleet(kind: str, base: Path, n: int = 1000, lists: int = 200,
              list_seconds: float | None = None) -> dict[str, Any]:
    """list_seconds: stop asking after this long even if fewer than `lists` answers came
    (supervisord takes seconds per listing of 1000 programs)."""
    progs = [Prog(f"p{i:04d}", ["sleep", "100000"]) for i in range(n)]
    wall_exec = time.time()
    run, sock, ask, parse = launch(kind, base, progs)
    assert run.pid is not None
    pid = run.pid
    result: dict[str, Any] = {"programs": n}
    try:
        if not wait_until(lambda: sum(procfs.comm(c) == "sleep"
                                      for c in procfs.children(pid)) >= n, 180, 0.02):
            raise RuntimeError(f"{kind}: not all {n} programs spawned\n{run.stderr_tail()}")
        result["spawned_s"] = time.monotonic() - run.t_exec
        result["api_up_s"] = wait_answering(run, sock, ask, parse, n)
        result["fds_before"] = procfs.fd_count(pid)
        last: list[float | None] = [None]

        def all_running() -> bool:
            status, raw = ask(sock, timeout=30)
            last[0] = running_by_own_clock(kind, parse(raw)) if status == 200 else None
            return last[0] is not None

        if not wait_until(all_running, 120, 0.2):
            raise RuntimeError(f"{kind}: not all RUNNING\n{run.stderr_tail()}")
        assert last[0] is not None
        result["running_own_s"] = last[0] - wall_exec
        latencies = []
        give_up = time.monotonic() + list_seconds if list_seconds else None
        for _ in range(lists):
            if give_up is not None and latencies and time.monotonic() > give_up:
                break
            t0 = time.perf_counter()
            status, raw = ask(sock, timeout=30)
            latencies.append((time.perf_counter() - t0) * 1e3)
            if status != 200:
                raise RuntimeError(f"{kind}: status {status}")
        result.update(latencies_ms=latencies, p50_ms=statistics.median(latencies),
                      p99_ms=percentile(latencies, 99), rss_kib=procfs.rss_kib(pid),
                      anon_kib=procfs.anon_kib(pid),
                      fds_after=procfs.fd_count(pid))
        result["stop_s"] = run.terminate(60)
        return result
    finally:
        run.kill()


# ---- flood ---------------------------------------------------------------------------

FLOOD_LINE = "x" * 99


def flood_prog() -> Prog:
    return Prog("flood", ["yes", FLOOD_LINE], log_max_bytes=8 << 20)


def run_flood(kind: str, base: Path, seconds: float, rate: float) -> dict[str, Any]:
    run, sock, ask, parse = launch(kind, base, [flood_prog(), Prog("idle", ["sleep", "1e6"])])
    assert run.pid is not None
    try:
        result: dict[str, Any] = {"api_up_s": wait_answering(run, sock, ask, parse, 2)}
        time.sleep(0.5)
        result["fds_before"] = procfs.fd_count(run.pid)
        result["rss_before_kib"] = procfs.rss_kib(run.pid)
        flood = next((c for c in procfs.descendants(run.pid) if procfs.comm(c) == "yes"), None)
        wrote0 = procfs.written_bytes(flood) if flood else None
        result.update(measure_status(run.pid, sock, ask, seconds, rate))
        wrote1 = procfs.written_bytes(flood) if flood else None
        if wrote0 is not None and wrote1 is not None:
            # what the init had to read in the window: a faster reader lets `yes` write
            # more, so CPU per MiB read is the like-for-like figure
            result["flood_mib"] = (wrote1 - wrote0) / 2**20
            result["cpu_ms_per_mib"] = 1e3 * result["cpu_s"] / max(result["flood_mib"], 1e-9)
        result["fds_after"] = procfs.fd_count(run.pid)
        result["rss_after_kib"] = procfs.rss_kib(run.pid)
        logs = base / "log"
        result["log_bytes"] = sum(p.stat().st_size for p in logs.rglob("*") if p.is_file())
        result["stop_s"] = run.terminate(30)
        return result
    finally:
        run.kill()


# ---- stalled clients -----------------------------------------------------------------

def half_sent(sock_path: Path, n: int) -> list[socket.socket]:
    """n connections that each sent part of a request and then nothing."""
    held = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        try:
            s.connect(str(sock_path))
            s.sendall(b"GET /api/v1/daemon/status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        except OSError:
            s.close()
            continue
        held.append(s)
    return held


def never_reading(sock_path: Path, target: str, n: int, websocket: bool) -> list[socket.socket]:
    """n clients that asked for a stream (a WebSocket or SSE) and then never read, with
    the smallest receive buffer, so that pmd's sends back up at once."""
    held = []
    extra = ("Upgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
             if websocket else "Accept: text/event-stream\r\n")
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(5)
        try:
            s.connect(str(sock_path))
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        except OSError:
            s.close()
            continue
        held.append(s)
    return held


def run_stalled(kind: str, base: Path, seconds: float, rate: float, half: int = 200,
                streams: int = 5, rounds: int = 4) -> dict[str, Any]:
    """`rounds` times in one init: hold the clients for `seconds`, then close them. RSS
    after each round tells a leak (it grows round after round) from a high-water mark
    (it stays at the first round's level)."""
    progs = [flood_prog(),
             Prog("blink", ["sh", "-c", "sleep 0.1; exit 1"], startsecs=0, autorestart=True,
                  startretries=1000, pmd={"start_limit_burst": 0})]
    run, sock, ask, parse = launch(kind, base, progs)
    assert run.pid is not None
    pid = run.pid
    held: list[socket.socket] = []
    try:
        result: dict[str, Any] = {"api_up_s": wait_answering(run, sock, ask, parse, 2)}
        time.sleep(0.5)
        result["fds_before"] = procfs.fd_count(pid)
        result["rss_before_kib"] = procfs.rss_kib(pid)
        per_round: list[dict[str, Any]] = []
        for _ in range(rounds):
            held += half_sent(sock, half)
            if kind.startswith("pmd"):
                held += never_reading(sock, "/ws?interval=0.2", streams, websocket=True)
                held += never_reading(sock, f"{API}/programs/1/logs/stream", streams,
                                      websocket=False)
            one: dict[str, Any] = {"held": len(held)}
            one.update(measure_status(pid, sock, ask, seconds, rate))
            one["fds_held"] = procfs.fd_count(pid)
            one["rss_held_kib"] = procfs.rss_kib(pid)
            for s in held:
                s.close()
            held = []
            time.sleep(1.0)
            one["fds_after"] = procfs.fd_count(pid)
            one["rss_after_kib"] = procfs.rss_kib(pid)
            per_round.append(one)
        first, last = per_round[0], per_round[-1]
        latencies = [v for one in per_round for v in one["latencies_ms"]]
        result.update(
            held=first["held"], rounds=per_round, latencies_ms=latencies,
            p50_ms=statistics.median(latencies) if latencies else None,
            p99_ms=percentile(latencies, 99), max_ms=max(latencies, default=None),
            failed=sum(one["failed"] for one in per_round),
            cpu_share=statistics.median(one["cpu_share"] for one in per_round),
            fds_max=max(one["fds_max"] or 0 for one in per_round),
            rss_max_kib=max(one["rss_max_kib"] or 0 for one in per_round),
            fds_held=first["fds_held"], rss_held_kib=first["rss_held_kib"],
            fds_after=last["fds_after"], rss_after_kib=last["rss_after_kib"],
            rss_after_first_kib=first["rss_after_kib"],
            rss_after_rounds_kib=[one["rss_after_kib"] for one in per_round])
        result["stop_s"] = run.terminate(30)
        return result
    finally:
        for s in held:
            s.close()
        run.kill()


# ---- quick-starts that exit at once (pmd only) ------------------------------------------

def health_raw(sock: Path, timeout: float = 10.0) -> tuple[int, bytes]:
    return request(sock, "GET", f"{API}/health", timeout=timeout)


def read_stamps(path: Path) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except (OSError, ValueError):
        return []


def run_qstorm(base: Path, crasher: list[str], seconds: float, rate: float, n: int = 20,
               limit: bool = False) -> dict[str, Any]:
    """n quick-starts of the crash program (startsecs 0, autorestart true; without the
    start-rate limit unless `limit`), for `seconds`: /health p50/p99 at `rate`, pmd's
    open files and RSS before, most seen and after the launches are stopped, starts per
    launch (from the programs' own stamps), the size of ephemeral.json."""
    stamps = base / "stamps"
    stamps.mkdir(parents=True, exist_ok=True)
    run = pmd_launch(base, []).start()
    sock = pmd_socket(base)
    assert run.pid is not None
    pid = run.pid
    try:
        if not wait_until(lambda: pmd_api_ready(base) and sock.exists(), 30, 0.005):
            raise RuntimeError(f"pmd did not come up\n{run.stderr_tail()}")
        time.sleep(0.5)
        result: dict[str, Any] = {"programs": n, "fds_before": procfs.fd_count(pid),
                                  "rss_before_kib": procfs.rss_kib(pid)}
        ids = []
        for i in range(n):
            status, raw = request(sock, "POST", f"{API}/quick-start", json.dumps({
                "command": " ".join([*crasher, str(stamps / f"q{i:02d}")]), "user": "root",
                "startsecs": 0, "autorestart": "true", "startretries": 1000,
                **({} if limit else {"start_limit_burst": 0})}).encode(),
                {"Content-Type": "application/json"})
            if status != 200:
                raise RuntimeError(f"quick-start: {status} {raw[:300]!r}")
            ids.append(json.loads(raw)["temporary_id"])
        begin = time.monotonic_ns()
        result.update(measure_status(pid, sock, health_raw, seconds, rate))
        end = time.monotonic_ns()
        result["ephemeral_bytes"] = (base / "state" / "ephemeral.json").stat().st_size
        starts = [sum(1 for v in read_stamps(stamps / f"q{i:02d}") if begin <= v <= end)
                  for i in range(n)]
        result.update(starts_median=statistics.median(starts), starts_min=min(starts),
                      fds_during=procfs.fd_count(pid), rss_during_kib=procfs.rss_kib(pid))
        for temporary_id in ids:
            request(sock, "POST", f"{API}/quick-start/{temporary_id}/stop", timeout=30)
        time.sleep(1.0)
        result["fds_after"] = procfs.fd_count(pid)
        result["rss_after_kib"] = procfs.rss_kib(pid)
        result["stop_s"] = run.terminate(30)
        return result
    finally:
        run.kill()


# ---- kill -9 during API writes (pmd only) --------------------------------------------------

def temp_files(*folders: Path) -> list[str]:
    return sorted(str(p) for d in folders if d.exists() for p in d.iterdir()
                  if p.name.startswith(".") and p.name.endswith(".tmp"))


def boot_problems(base: Path, run: Launch) -> list[str]:
    """What a clean boot must not show: a corrupt or set-aside file, a config problem."""
    problems = []
    config, state = base / "config", base / "state"
    for path in (config / "programs.json", state / "ephemeral.json"):
        if path.exists():
            try:
                json.loads(path.read_text())
            except ValueError as exc:
                problems.append(f"{path.name} corrupt: {exc}")
    problems += [f"set aside: {p.name}" for p in config.glob("*.bad-*")]
    status, raw = request(pmd_socket(base), "GET", f"{API}/health")
    if status != 200:
        problems.append(f"health {status}")
    elif json.loads(raw).get("config_problem"):
        problems.append(f"config_problem: {json.loads(raw)['config_problem']}")
    return problems


def run_kill9(base: Path, rounds: int, seed: int = 20261209) -> dict[str, Any]:
    rng = random.Random(seed)
    sock = pmd_socket(base)
    acked: dict[str, int] = {}  # name -> id of every answered add not answered removed
    removed: set[str] = set()
    last_edit: dict[str, int] = {}
    counts = {"corrupt_or_unclean": 0, "temp_files": 0, "lost": 0, "resurrected": 0,
              "writes": 0}
    problems: list[str] = []
    fds: list[int] = []
    n = 0
    first = pmd_launch(base, [])  # writes the empty programs.json once
    argv, env = first.argv[4:], first.env  # without the `unshare ...` that Launch adds
    for round_no in range(rounds):
        (base / "state" / "api.json").unlink(missing_ok=True)  # a killed pmd leaves it
        run = (first if round_no == 0 else Launch("pmd", base, argv, env)).start()
        assert run.pid is not None
        try:
            if not wait_until(lambda: pmd_api_ready(base) and sock.exists(), 30, 0.005):
                raise RuntimeError(f"pmd did not come up\n{run.stderr_tail()}")
            fds.append(procfs.fd_count(run.pid) or 0)
            found = boot_problems(base, run)
            left = temp_files(base / "config", base / "state")
            stored = {p["name"]: p for p in json.loads(
                (base / "config" / "programs.json").read_text())["programs"]}
            lost = [name for name in acked if name not in stored]
            back = [name for name in removed if name in stored]
            stale = [name for name, value in last_edit.items() if name in stored
                     and int(stored[name].get("description") or 0) < value]
            counts["corrupt_or_unclean"] += bool(found)
            counts["temp_files"] += len(left)
            counts["lost"] += len(lost) + len(stale)
            counts["resurrected"] += len(back)
            problems += [f"round {round_no}: {p}" for p in
                         found + left + lost + [f"stale edit {s}" for s in stale] +
                         [f"removed came back: {b}" for b in back]]
            pid = run.pid
            killer = threading.Timer(rng.uniform(0.06, 1.9), os.kill, (pid, signal.SIGKILL))
            killer.start()
            try:
                while True:
                    n += 1
                    op = n % 3
                    name = ""
                    try:
                        if op == 1 or not acked:
                            name = f"k{n}"
                            status, raw = request(sock, "POST", f"{API}/programs/add", json.dumps(
                                {"name": name, "command": "sleep 60", "user": "root",
                                 "description": "0"}).encode(),
                                {"Content-Type": "application/json"}, timeout=5)
                            if status == 200:
                                acked[name] = json.loads(raw)["id"]
                        elif op == 2:
                            name = rng.choice(sorted(acked))
                            status, _ = request(sock, "POST", f"{API}/programs/edit/"
                                                f"{acked[name]}", json.dumps(
                                                    {"description": str(n)}).encode(),
                                                {"Content-Type": "application/json"},
                                                timeout=5)
                            if status == 200:
                                last_edit[name] = n
                        else:
                            name = rng.choice(sorted(acked))
                            status, _ = request(sock, "POST", f"{API}/programs/remove/"
                                                f"{acked[name]}", timeout=5)
                            if status == 200:
                                del acked[name]
                                last_edit.pop(name, None)
                                removed.add(name)
                    except OSError:  # killed mid-request: its outcome is unknown
                        if op == 0 and name in acked:
                            del acked[name]
                            last_edit.pop(name, None)
                        break
                    counts["writes"] += status == 200
            finally:
                killer.join()
            run.wait_exit(10)
        finally:
            run.kill()
    (base / "state" / "api.json").unlink(missing_ok=True)
    run = Launch("pmd", base, argv, env).start()
    try:
        wait_until(lambda: pmd_api_ready(base) and sock.exists(), 30, 0.005)
        assert run.pid is not None
        fds.append(procfs.fd_count(run.pid) or 0)
        found = boot_problems(base, run)
        counts["corrupt_or_unclean"] += bool(found)
        counts["temp_files"] += len(temp_files(base / "config", base / "state"))
        problems += found
    finally:
        run.terminate(15)
    return {"rounds": rounds, **counts, "problems": problems[:50],
            "fds_before": fds[0], "fds_after": fds[-1], "fds_max": max(fds)}


# ---- a full state disk (pmd only) -----------------------------------------------------------

def run_fulldisk(base: Path, launches: int = 60) -> dict[str, Any]:
    state = base / "state"
    state.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(state)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        raise RuntimeError(f"cannot mount a tmpfs: {mount.stderr.strip()}")
    run = None
    try:
        run = pmd_launch(base, [], env={"PMD_EPHEMERAL_GRACE": "600"}).start()
        sock = pmd_socket(base)
        assert run.pid is not None
        if not wait_until(lambda: pmd_api_ready(base) and sock.exists(), 30, 0.005):
            raise RuntimeError(f"pmd did not come up\n{run.stderr_tail()}")
        result: dict[str, Any] = {"fds_before": procfs.fd_count(run.pid)}
        acked: list[str] = []
        refused = invalid = 0
        first_507 = None
        for i in range(launches):
            status, raw = request(sock, "POST", f"{API}/quick-start", json.dumps({
                "command": "sleep 60", "user": "root", "stop_timeout": 2,
                "environment": {"FILL": "x" * 1500, "N": str(i)}}).encode(),
                {"Content-Type": "application/json"})
            if status == 200:
                acked.append(json.loads(raw)["temporary_id"])
            else:
                refused += 1
                if first_507 is None:
                    first_507 = {"status": status, **json.loads(raw)["error"]}
            try:
                json.loads((state / "ephemeral.json").read_text())
            except (OSError, ValueError):
                invalid += 1
        on_disk = {e["temporary_id"] for e in json.loads(
            (state / "ephemeral.json").read_text())["programs"]}
        result.update(launches=launches, answered=len(acked), refused=refused,
                      first_refusal=first_507, ephemeral_invalid=invalid,
                      answered_missing=len(set(acked) - on_disk),
                      temp_files=len(temp_files(state)), fds_full=procfs.fd_count(run.pid))
        for temporary_id in acked:  # like for like: the launches' own pipes closed
            request(sock, "POST", f"{API}/quick-start/{temporary_id}/stop")
        time.sleep(0.5)
        result["fds_after"] = procfs.fd_count(run.pid)
        result["stop_s"] = run.terminate(30)
        return result
    finally:
        if run is not None:
            run.kill()
        subprocess.run(["umount", "-l", str(state)], capture_output=True)
