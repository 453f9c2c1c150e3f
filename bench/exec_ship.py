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


#: The capture rows, in the order of the first round (later rounds rotate it).
VARIANTS = {"none": "pmd, no target", "syslog": "pmd, syslog (UDP, rsyslog)",
            "otlp": "pmd, otlp (loopback sink)", "loki": "pmd, loki (loopback sink)",
            "down": "pmd, loki down", "supervisord": "supervisord"}


def bench_capture(opts: argparse.Namespace, work: Path) -> dict[str, list[dict[str, Any]]]:
    """Every variant once a round, the order rotating each round, so that a machine whose
    load drifts weighs on each alike; pmd's target counters read once the log is complete
    (one health request in every pmd run, targets or not, and none while it is timed)."""
    chosen = [v for v in opts.capture_variants.split(",") if v]
    unknown = set(chosen) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--capture-variants: unknown {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(VARIANTS)})")
    sink = Sink()
    rsyslog = None
    if "syslog" in chosen:
        if shutil.which("rsyslogd") or os.path.exists("/usr/sbin/rsyslogd"):
            rsyslog_dir = work / "rsyslog"
            rsyslog_dir.mkdir()
            rsyslog = Rsyslog(rsyslog_dir)
        else:
            log("rsyslogd is not installed: no syslog row")
            chosen.remove("syslog")
    down = free_port()
    targets: dict[str, dict[str, Any] | None] = {"none": None, "supervisord": None}
    if rsyslog is not None:
        targets["syslog"] = {"s": {"type": "syslog",
                                   "address": f"udp://127.0.0.1:{rsyslog.port}"}}
    targets["otlp"] = {"o": {"type": "otlp", "url": f"http://127.0.0.1:{sink.port}/v1/logs"}}
    targets["loki"] = {"l": {"type": "loki",
                             "url": f"http://127.0.0.1:{sink.port}/loki/api/v1/push"}}
    targets["down"] = {"d": {"type": "loki",
                             "url": f"http://127.0.0.1:{down}/loki/api/v1/push"}}
    raw: dict[str, list[dict[str, Any]]] = {}
    try:
        for rep in range(opts.reps):
            turn = rep % len(chosen)
            for key in chosen[turn:] + chosen[:turn]:
                name = VARIANTS[key]
                base = work / f"{rep}-{key}"
                base.mkdir()
                kind = "supervisord" if key == "supervisord" else "pmd"
                if targets[key]:
                    (base / "config").mkdir(parents=True, exist_ok=True)
                    (base / "config" / "log_targets.json").write_text(
                        json.dumps({"log_targets": targets[key]}))
                counters = (lambda b=base: {"targets": read_targets(b)}) \
                    if kind == "pmd" else None
                result = bench_run.run_capture(kind, base, opts, on_complete=counters)
                raw.setdefault(name, []).append(result)
                log(f"  {name:<30} {result['mib_per_s']:7.0f} MiB/s "
                    f"{result['init_cpu_s']:.2f} cpu-s {result.get('targets') or ''}")
                shutil.rmtree(base, ignore_errors=True)
    finally:
        sink.close()
        if rsyslog is not None:
            rsyslog.close()
    return raw


def read_targets(base: Path) -> dict[str, Any]:
    """pmd's counters per target, from its health over its Unix socket."""
    import httpx

    with httpx.Client(transport=httpx.HTTPTransport(uds=str(base / "pmd.sock")),
                      base_url="http://pmd", timeout=10) as http:
        view = http.get("/api/v1/daemon/health").json()["log_targets"]["targets"]
    return {name: {k: v[k] for k in ("sent", "dropped", "queued")}
            for name, v in view.items()}


# ---- main ----------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="exec,capture")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--exec-runs", type=int, default=30)
    ap.add_argument("--docker-container")
    ap.add_argument("--capture-mib", type=int, default=256)
    ap.add_argument("--capture-variants", default=",".join(VARIANTS),
                    help=f"capture rows, of {','.join(VARIANTS)}")
    opts = ap.parse_args()
    opts.capture_bytes = opts.capture_mib * MiB
    opts.settle = 0.5
    only = set(opts.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="pmd-exec-ship-",
                                 dir=bench_run.default_capture_dir()))
    raw: dict[str, Any] = {"load_average": {"start": os.getloadavg()}}
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
    raw["load_average"]["end"] = os.getloadavg()
    raw["capture_lines"] = opts.capture_bytes // 100
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
        print_capture(raw["capture"], raw["capture_lines"])
    load = raw["load_average"]
    print("\nload average (1, 5, 15 min): at the start "
          f"{' '.join(f'{x:.2f}' for x in load['start'])}, at the end "
          f"{' '.join(f'{x:.2f}' for x in load['end'])}")


def print_capture(capture: dict[str, list[dict[str, Any]]], lines: int) -> None:
    """The table, then target down against no target (the medians' ratios), and whether
    each run's counters account for every line written: sent + dropped + queued is the
    number of whole lines (one more once the last, unfinished, line went at EOF)."""
    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in capture[name])

    anchor = "supervisord" if "supervisord" in capture else None
    print(f"\n| capture {capture_mib(lines)} MiB, 100-byte lines | MiB/s | init cpu-s | "
          "/ supervisord MiB/s | lines sent / dropped / queued (last run) | every line "
          "counted |")
    print("|---|---|---|---|---|---|")
    for name, runs in capture.items():
        rate = median(name, "mib_per_s")
        ratio = f"{rate / median(anchor, 'mib_per_s'):.2f}" if anchor else ""
        last = runs[-1].get("targets") or {}
        shipped = "; ".join(f"{v['sent']} / {v['dropped']} / {v['queued']}"
                            for v in last.values())
        counted = ""
        if last:
            counted = "yes" if all(
                sum(v.values()) - lines in (0, 1)
                for run in runs for v in run["targets"].values()) else "NO"
        print(f"| {name} | {rate:.0f} | {median(name, 'init_cpu_s'):.2f} | {ratio} | "
              f"{shipped} | {counted} |")
    none, down = VARIANTS["none"], VARIANTS["down"]
    if none in capture and down in capture:
        rate = median(down, "mib_per_s") / median(none, "mib_per_s")
        cpu = median(down, "init_cpu_s") / median(none, "init_cpu_s")
        print(f"\ntarget down / no target, medians of {len(capture[down])} and "
              f"{len(capture[none])}: throughput {rate:.2f}, pmd's cpu-s {cpu:.2f}")


def capture_mib(lines: int) -> int:
    return round(lines * 100 / MiB)

if __name__ == "__main__":
    main()
