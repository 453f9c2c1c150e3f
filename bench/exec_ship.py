"""Exec round trips and capture with log targets, pmd in its default configuration.

  exec      `pmd exec -- true` end to end (the client's start, POST, WebSocket, spawn,
            reap, exit message), over the Unix socket, N times; beside it the same run
            through the API from a client already started (what a platform calling the API
            pays) and the floor: this process spawning `true` itself. When a Docker engine
            answers (`docker info`, DOCKER_HOST from the environment): `docker exec <c>
            true` and `docker exec <c> pmd exec -- true` in a container with pmd as its
            PID 1, --docker-container or one run from --docker-image (default $PMD_IMAGE,
            else pmd-init:ci; ci/build-image makes it), with the ratio to `pmd exec`;
            without an engine or an image, one line says so.
  capture   bench/run.py's capture scenario (256 MiB of 100-byte lines to stdout, the time
            from the writer's first byte to the last byte in the log file, pmd's CPU),
            pmd with no log target, with each target on (syslog over UDP to a real rsyslog
            this bench starts, OTLP/HTTP and Loki to a loopback HTTP sink that reads and
            discards), with a Loki target that is down (a closed port), and supervisord
            side by side (no shipping: its capture is the anchor). Every row once a round,
            the order rotating each round; medians of --reps rounds. For each pmd run the
            lines each target sent, dropped and queued, read from pmd's health once the
            log is complete (no request while timed), and whether they add up to every
            line written; then target down / no target, the ratio of the medians.

Usage: .venv/bin/python bench/exec_ship.py [--only exec,capture] [--reps N]
                                           [--exec-runs N] [--docker-container NAME]
                                           [--docker-image IMAGE]
                                           [--capture-variants none,syslog,otlp,loki,
                                                               down,supervisord]
Output: the table on stdout (with the load average at the start and the end), the raw
figures in bench/results/exec-ship-<time>.json.
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
    results.update(bench_docker(opts))
    return results


DOCKER_ROWS = ("docker exec <c> true", "docker exec <c> pmd exec -- true")


def bench_docker(opts: argparse.Namespace) -> dict[str, list[float]]:
    """`docker exec <c> true` and `docker exec <c> pmd exec -- true`, when a Docker engine
    answers (`docker info`, DOCKER_HOST from the environment) and there is a container:
    --docker-container, or one this bench runs from --docker-image (pmd as its PID 1, no
    network) and removes. Without either, one line says why and the rows are left out."""
    docker = shutil.which("docker")
    why = "no docker client" if docker is None else None
    if docker is not None:
        try:
            info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"],
                                  capture_output=True, text=True, timeout=20)
            if info.returncode != 0:
                why = "no Docker engine answers (docker info: " \
                    f"{(info.stderr.strip().splitlines() or ['?'])[-1][:120]})"
        except subprocess.TimeoutExpired:
            why = "no Docker engine answers (docker info timed out)"
    if docker is not None and why is None and not opts.docker_container and subprocess.run(
            [docker, "image", "inspect", opts.docker_image], capture_output=True).returncode:
        why = f"no image {opts.docker_image} (ci/build-image makes one; --docker-image)"
    if why is not None:
        log(f"docker exec: skipped: {why}")
        opts.docker_skipped = why
        return {}
    assert docker is not None
    container = opts.docker_container
    started = None
    try:
        if container is None:
            started = subprocess.run(
                [docker, "run", "-d", "--rm", "--network", "none",
                 "--name", f"pmd-exec-bench-{os.getpid()}", opts.docker_image],
                capture_output=True, text=True, check=True, timeout=60).stdout.strip()
            container = started
            deadline = time.monotonic() + 30
            while subprocess.run([docker, "exec", container, "pmd", "livez"],
                                 capture_output=True).returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pmd in {container[:12]} did not answer in 30 s")
                time.sleep(0.2)
        log(f"docker exec: {opts.exec_runs} round trips each, container {container[:12]}")
        results: dict[str, list[float]] = {}
        for name, command in zip(DOCKER_ROWS, (["true"], ["pmd", "exec", "--", "true"]),
                                 strict=True):
            times = []
            for _ in range(opts.exec_runs):
                t0 = time.perf_counter()
                done = subprocess.run([docker, "exec", container, *command],
                                      capture_output=True)
                times.append(time.perf_counter() - t0)
                if done.returncode != 0:
                    raise RuntimeError(f"{name}: exit {done.returncode}: "
                                       f"{done.stderr.decode()[:200]}")
            results[name] = times
        return results
    finally:
        if started is not None:
            subprocess.run([docker, "rm", "-f", started], capture_output=True, timeout=60)


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
                counters = (lambda b=base: {"targets": read_targets(b),
                                            "lines": written_lines(b)}) \
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


def written_lines(base: Path) -> tuple[int, int]:
    """The writer's lines in pmd's log files, stdout and stderr (a shell's complaint may be
    there): (whole lines, unfinished last lines). A target ships an unfinished last line
    once its pipe ends, which may be before or after the counters were read."""
    whole = unfinished = 0
    for path in (base / "log" / "writer").glob("*.log"):
        with open(path, "rb") as f:
            while block := f.read(MiB):
                whole += block.count(b"\n")
            if f.tell():
                f.seek(-1, os.SEEK_END)
                unfinished += f.read(1) != b"\n"
    return whole, unfinished


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
    ap.add_argument("--docker-container",
                    help="a running container with pmd (default: one run from --docker-image)")
    ap.add_argument("--docker-image", default=os.environ.get("PMD_IMAGE", "pmd-init:ci"),
                    help="the image with pmd the docker rows run (default $PMD_IMAGE, "
                         "else pmd-init:ci)")
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
            if getattr(opts, "docker_skipped", None):
                raw["docker_skipped"] = opts.docker_skipped
        if "capture" in only:
            log(f"capture: {opts.capture_mib} MiB of 100-byte lines, {opts.reps} rounds")
            raw["capture"] = bench_capture(opts, work)
    finally:
        bench_run.kill_all_live()
        shutil.rmtree(work, ignore_errors=True)
    raw["load_average"]["end"] = os.getloadavg()
    raw["capture_bytes"] = opts.capture_bytes
    print_table(raw)
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    path = out / f"exec-ship-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(raw, indent=1))
    log(f"raw figures: {path}")


def print_table(raw: dict[str, Any]) -> None:
    if "exec" in raw:
        floor = statistics.median(raw["exec"]["spawn true here (floor)"])
        cli = statistics.median(raw["exec"]["pmd exec -- true (CLI)"])
        print("\n| exec round trip | p50 ms | p90 ms | p50 / floor | p50 / pmd exec |")
        print("|---|---|---|---|---|")
        for name, times in raw["exec"].items():
            p50 = statistics.median(times)
            print(f"| {name} | {p50 * 1000:.1f} | {pct(times, 0.9) * 1000:.1f} | "
                  f"{p50 / floor:.0f}x | {p50 / cli:.2f} |")
        if DOCKER_ROWS[0] in raw["exec"]:
            docker = statistics.median(raw["exec"][DOCKER_ROWS[0]])
            print(f"\ndocker exec <c> true / pmd exec -- true (p50): {docker / cli:.2f}")
        else:
            print(f"\ndocker exec: skipped: {raw.get('docker_skipped', '?')}")
    if "capture" in raw:
        print_capture(raw["capture"], raw["capture_bytes"])
    load = raw["load_average"]
    print("\nload average (1, 5, 15 min): at the start "
          f"{' '.join(f'{x:.2f}' for x in load['start'])}, at the end "
          f"{' '.join(f'{x:.2f}' for x in load['end'])}")


def print_capture(capture: dict[str, list[dict[str, Any]]], size: int) -> None:
    """The table, then target down against no target (the medians' ratios), and whether
    each run's counters account for every line written: sent + dropped + queued is the
    number of whole lines in the log files (and the unfinished last ones, once their pipe
    ended)."""
    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in capture[name])

    anchor = "supervisord" if "supervisord" in capture else None
    print(f"\n| capture {size // MiB} MiB, 100-byte lines | MiB/s | init cpu-s | "
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
                0 <= sum(v.values()) - run["lines"][0] <= run["lines"][1]
                for run in runs for v in run["targets"].values()) else "NO"
        print(f"| {name} | {rate:.0f} | {median(name, 'init_cpu_s'):.2f} | {ratio} | "
              f"{shipped} | {counted} |")
    none, down = VARIANTS["none"], VARIANTS["down"]
    if none in capture and down in capture:
        rate = median(down, "mib_per_s") / median(none, "mib_per_s")
        cpu = median(down, "init_cpu_s") / median(none, "init_cpu_s")
        # each round's two runs are next to each other in time: their ratio leaves out
        # the load that drifts between rounds
        paired = statistics.median(d["mib_per_s"] / n["mib_per_s"]
                                   for d, n in zip(capture[down], capture[none], strict=True))
        spread = "; ".join(f"{name} {min(r['mib_per_s'] for r in capture[name]):.0f}-"
                           f"{max(r['mib_per_s'] for r in capture[name]):.0f} MiB/s"
                           for name in (none, down))
        print(f"\ntarget down / no target, medians of {len(capture[down])} and "
              f"{len(capture[none])}: throughput {rate:.2f}, pmd's cpu-s {cpu:.2f}; "
              f"the median of each round's ratio {paired:.2f} ({spread})")



if __name__ == "__main__":
    main()
