"""Exec round trips and capture with log targets, pmd in its default configuration.

  exec      `pmd exec -- true` end to end (the client's start, POST, WebSocket, spawn,
            reap, exit message), over the Unix socket, N times; beside it the same run
            through the API from a client already started (what a platform calling the API
            pays), `docker exec <container> true` when --docker-container names a running
            container, and the floor: this process spawning `true` itself.
  capture   bench/run.py's capture scenario (256 MiB of 100-byte lines to stdout, the time
            from the writer's first byte to the last byte in the log file, pmd's CPU),
            pmd with no log target, with each target on (syslog over UDP to a real rsyslog
            this bench starts, OTLP/HTTP and Loki to a loopback HTTP sink that reads and
            discards), with a Loki target that is down (a closed port), and supervisord
            side by side (no shipping: its capture is the anchor). For each pmd run the
            lines each target sent and dropped, from pmd's health.

Usage: .venv/bin/python bench/exec_ship.py [--only exec,capture] [--reps N]
                                           [--exec-runs N] [--docker-container NAME]
Output: the table on stdout, the raw figures in bench/results/exec-ship-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import run as bench_run  # noqa: E402
from inits import pmd_python  # noqa: E402

MiB = 1 << 20


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---- exec ----------------------------------------------------------------------------

def bench_exec(opts: argparse.Namespace, work: Path) -> dict[str, Any]:
    from tests.harness import Pmd

    results: dict[str, Any] = {}
    with Pmd(work / "pmd-exec", []) as pmd:
        env = {**os.environ, "PMD_SOCKET": str(pmd.socket), "PYTHONPATH": str(ROOT)}
        env.pop("PMD_URL", None)
        cli = [pmd_python(), "-m", "pmd_init.cli.pmd", "exec", "--", "true"]
        times = []
        for _ in range(opts.exec_runs):
            t0 = time.perf_counter()
            done = subprocess.run(cli, env=env, capture_output=True)
            times.append(time.perf_counter() - t0)
            assert done.returncode == 0, done.stderr
        results["pmd exec -- true (CLI)"] = times
        results["API: POST + WebSocket + exit"] = api_round_trips(pmd, opts.exec_runs)
    floor = []
    for _ in range(opts.exec_runs):
        t0 = time.perf_counter()
        subprocess.run(["true"])
        floor.append(time.perf_counter() - t0)
    results["spawn true here (floor)"] = floor
    python = []
    for _ in range(opts.exec_runs):
        t0 = time.perf_counter()
        subprocess.run([pmd_python(), "-c", "pass"])
        python.append(time.perf_counter() - t0)
    results["python -c pass (the CLI's interpreter start)"] = python
    if opts.docker_container:
        docker = []
        for _ in range(opts.exec_runs):
            t0 = time.perf_counter()
            done = subprocess.run(["docker", "exec", opts.docker_container, "true"],
                                  capture_output=True)
            docker.append(time.perf_counter() - t0)
            if done.returncode != 0:
                log(f"docker exec failed: {done.stderr.decode()[:200]}")
                docker = []
                break
        if docker:
            results["docker exec <c> true"] = docker
    return results


def api_round_trips(pmd: Any, runs: int) -> list[float]:
    """POST, then the WebSocket with pmd's own small client (pmd_init/cli/wsclient.py),
    until the exit message."""
    import select

    import httpx

    from pmd_init.cli.wsclient import TEXT, WebSocket, handshake

    transport = httpx.HTTPTransport(uds=str(pmd.socket))
    times = []
    with httpx.Client(base_url="http://pmd", transport=transport) as http:
        for _ in range(runs):
            t0 = time.perf_counter()
            created = http.post("/api/v1/daemon/exec", json={"command": ["true"]}).json()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(pmd.socket))
            ws = WebSocket(sock, handshake(sock, "pmd", created["websocket"], {}))
            messages = list(ws._frames())
            while not any(op == TEXT and json.loads(m)["type"] == "exit"
                          for op, m in messages):
                assert not ws.closed, "closed before the exit message"
                select.select([sock], [], [], 10)
                messages += ws.receive()
            times.append(time.perf_counter() - t0)
            ws.close()
    return times


# ---- capture with log targets ------------------------------------------------------

class Sink:
    """A loopback HTTP receiver that reads each body and answers 204."""

    def __init__(self) -> None:
        self.bodies = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.bodies += 1
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Rsyslog:
    def __init__(self, work: Path) -> None:
        binary = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
        self.port = free_port(socket.SOCK_DGRAM)
        conf = work / "rsyslog.conf"
        conf.write_text(f"""
global(workDirectory="{work}")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{self.port}")
action(type="omfile" file="{work / 'received.log'}")
""")
        self.proc = subprocess.Popen([binary, "-n", "-f", str(conf), "-i",
                                      str(work / "rsyslog.pid")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def capture_with(kind: str, base: Path, opts: argparse.Namespace,
                 targets: dict[str, Any] | None) -> dict[str, Any]:
    if targets:
        (base / "config").mkdir(parents=True, exist_ok=True)
        (base / "config" / "log_targets.json").write_text(json.dumps({"log_targets": targets}))
    return bench_run.run_capture(kind, base, opts)


def bench_capture(opts: argparse.Namespace, work: Path) -> dict[str, list[dict[str, Any]]]:
    sink = Sink()
    rsyslog_dir = work / "rsyslog"
    rsyslog_dir.mkdir()
    have_rsyslog = bool(shutil.which("rsyslogd") or os.path.exists("/usr/sbin/rsyslogd"))
    rsyslog = Rsyslog(rsyslog_dir) if have_rsyslog else None
    down = free_port()
    variants: dict[str, dict[str, Any] | None] = {"pmd, no target": None}
    if rsyslog is not None:
        variants["pmd, syslog (UDP, rsyslog)"] = {
            "s": {"type": "syslog", "address": f"udp://127.0.0.1:{rsyslog.port}"}}
    variants["pmd, otlp (loopback sink)"] = {
        "o": {"type": "otlp", "url": f"http://127.0.0.1:{sink.port}/v1/logs"}}
    variants["pmd, loki (loopback sink)"] = {
        "l": {"type": "loki", "url": f"http://127.0.0.1:{sink.port}/loki/api/v1/push"}}
    variants["pmd, loki down"] = {
        "d": {"type": "loki", "url": f"http://127.0.0.1:{down}/loki/api/v1/push"}}
    raw: dict[str, list[dict[str, Any]]] = {}
    try:
        for rep in range(opts.reps):
            for name, targets in [*variants.items(), ("supervisord", None)]:
                base = work / f"{rep}-{len(raw.get(name, []))}-{name.split(',')[0]}-" \
                    f"{abs(hash(name)) % 10000}"
                base.mkdir()
                kind = "supervisord" if name == "supervisord" else "pmd"
                watcher = HealthWatch(base) if targets else None
                try:
                    result = capture_with(kind, base, opts, targets)
                finally:
                    if watcher is not None:
                        watcher.stop()
                if watcher is not None:
                    result["targets"] = watcher.last
                raw.setdefault(name, []).append(result)
                log(f"  {name:<30} {result['mib_per_s']:7.0f} MiB/s "
                    f"{result['init_cpu_s']:.2f} cpu-s {result.get('targets') or ''}")
                shutil.rmtree(base, ignore_errors=True)
    finally:
        sink.close()
        if rsyslog is not None:
            rsyslog.close()
    return raw


class HealthWatch:
    """Reads pmd's health over its Unix socket every 0.2 s while a capture runs, for the
    targets' counters (the capture scenario stops pmd as soon as the log is complete)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.last: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import httpx

        while not self._stop.wait(0.2):
            sock = self.base / "pmd.sock"
            if not sock.exists():
                continue
            try:
                with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)),
                                  base_url="http://pmd", timeout=2) as http:
                    view = http.get("/api/v1/daemon/health").json()["log_targets"]["targets"]
                self.last = {name: {k: v[k] for k in ("sent", "dropped", "queued")}
                             for name, v in view.items()}
            except Exception:  # noqa: BLE001 - pmd starting or stopping
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# ---- main ----------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="exec,capture")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--exec-runs", type=int, default=30)
    ap.add_argument("--docker-container")
    ap.add_argument("--capture-mib", type=int, default=256)
    opts = ap.parse_args()
    opts.capture_bytes = opts.capture_mib * MiB
    opts.settle = 0.5
    only = set(opts.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="pmd-exec-ship-",
                                 dir=bench_run.default_capture_dir()))
    raw: dict[str, Any] = {}
    try:
        if "exec" in only:
            log(f"exec: {opts.exec_runs} round trips each")
            raw["exec"] = bench_exec(opts, work)
        if "capture" in only:
            log(f"capture: {opts.capture_mib} MiB of 100-byte lines, {opts.reps} rounds")
            raw["capture"] = bench_capture(opts, work)
    finally:
        bench_run.kill_all_live()
        shutil.rmtree(work, ignore_errors=True)
    print_table(raw)
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    path = out / f"exec-ship-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(raw, indent=1))
    log(f"raw figures: {path}")


def print_table(raw: dict[str, Any]) -> None:
    if "exec" in raw:
        floor = statistics.median(raw["exec"]["spawn true here (floor)"])
        print("\n| exec round trip | p50 ms | p90 ms | p50 / floor |")
        print("|---|---|---|---|")
        for name, times in raw["exec"].items():
            p50 = statistics.median(times)
            print(f"| {name} | {p50 * 1000:.1f} | {pct(times, 0.9) * 1000:.1f} | "
                  f"{p50 / floor:.0f}x |")
        if "docker exec <c> true" not in raw["exec"]:
            print("| docker exec <c> true | no Docker engine here | | |")
    if "capture" in raw:
        anchor = raw["capture"].get("supervisord")
        anchor_rate = statistics.median(r["mib_per_s"] for r in anchor) if anchor else None
        print("\n| capture 256 MiB, 100-byte lines | MiB/s | init cpu-s | "
              "/ supervisord MiB/s | lines sent / dropped (last run) |")
        print("|---|---|---|---|---|")
        for name, runs in raw["capture"].items():
            rate = statistics.median(r["mib_per_s"] for r in runs)
            cpu = statistics.median(r["init_cpu_s"] for r in runs)
            ratio = f"{rate / anchor_rate:.2f}" if anchor_rate else ""
            shipped = "; ".join(f"{v['sent']} / {v['dropped']}"
                                for v in (runs[-1].get("targets") or {}).values())
            print(f"| {name} | {rate:.0f} | {cpu:.2f} | {ratio} | {shipped} |")


if __name__ == "__main__":
    main()
