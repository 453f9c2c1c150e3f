"""The cost of `GET /metrics` (`make bench-metrics`): a scrape of 100 programs, and
prometheus_client's import.

pmd runs as PID 1 of its own PID namespace with --programs (100) programs that sleep, all
RUNNING. A client scrapes over pmd's Unix socket, one connection a scrape as Prometheus
makes, --scrapes (200) times, in the text format and in OpenMetrics; `GET /api/status`
(a constant answer) is timed the same way, so what the HTTP round trip costs by itself
shows beside it. The first scrape, which imports prometheus_client and builds the
collector, is reported apart. The import itself is timed in a fresh interpreter with
`python -X importtime`, alone and after pmd's API modules (what it adds to a pmd).
The issue's target: a scrape of 100 programs in 20 ms or less.

Usage: .venv/bin/python bench/metrics.py [--programs 100] [--scrapes 200]
Needs: unshare (root).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clients import request
from inits import ROOT, Prog, kill_all_live, pmd_api_ready, pmd_launch, pmd_python, wait_until

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def import_ms(before: str) -> float:
    """Milliseconds `import prometheus_client` takes in a fresh interpreter after `before`."""
    code = f"{before}\nimport prometheus_client"
    out = subprocess.run([pmd_python(), "-X", "importtime", "-c", code], cwd=ROOT,
                         capture_output=True, text=True, check=True).stderr
    for line in out.splitlines():
        if line.rstrip().endswith("| prometheus_client"):
            return int(line.split("|")[1]) / 1000
    return 0.0


def timed(sock: Path, target: str, headers: dict[str, str] | None = None) -> tuple[float, int]:
    t0 = time.perf_counter()
    status, body = request(sock, "GET", target, headers=headers)
    elapsed = (time.perf_counter() - t0) * 1000
    if status != 200:
        raise RuntimeError(f"{target}: HTTP {status}: {body[:200]!r}")
    return elapsed, len(body)


def row(name: str, times: list[float], size: int) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return (f"{name:<24} {statistics.median(ordered):>8.2f} {p95:>8.2f} {ordered[-1]:>8.2f}"
            f" {size:>9}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", type=int, default=100)
    parser.add_argument("--scrapes", type=int, default=200)
    o = parser.parse_args()

    alone = min(import_ms("") for _ in range(3))
    after = min(import_ms("import pmd_init.pid1.main, pmd_init.api.server, "
                          "pmd_init.api.daemon, pmd_init.api.process") for _ in range(3))
    print(f"import prometheus_client: {alone:.1f} ms alone, {after:.1f} ms after pmd's API")

    with tempfile.TemporaryDirectory(prefix="pmd-metrics-") as tmp:
        base = Path(tmp)
        progs = [Prog(f"p{i:03d}", ["sleep", "600"], startsecs=0.1)
                 for i in range(o.programs)]
        launch = pmd_launch(base, progs).start()
        try:
            sock = base / "pmd.sock"
            if not wait_until(lambda: pmd_api_ready(base), 20):
                raise RuntimeError(f"pmd's API did not come up: {launch.stderr_tail()}")
            running = f"pmd_program_up{{program=\"p{o.programs - 1:03d}\",port=\"\"}} 1\n"

            def all_up() -> bool:
                status, body = request(sock, "GET", "/api/v1/daemon/status")
                return status == 200 and body.count(b'"RUNNING"') >= o.programs

            if not wait_until(all_up, 30, 0.05):
                raise RuntimeError("the programs did not all reach RUNNING")
            first, _ = timed(sock, "/metrics")
            status, body = request(sock, "GET", "/metrics")
            if running not in body.decode():
                raise RuntimeError(f"unexpected scrape: {body[:300]!r}")
            print(f"first scrape (imports prometheus_client, builds the collector): "
                  f"{first:.2f} ms")
            print(f"\n{o.programs} programs, {o.scrapes} requests each, over the Unix socket, "
                  f"one connection a request (ms)")
            print(f"{'request':<24} {'p50':>8} {'p95':>8} {'max':>8} {'bytes':>9}")
            for name, target, headers in (
                    ("/api/status", "/api/status", None),
                    ("/metrics (text)", "/metrics", None),
                    ("/metrics (openmetrics)", "/metrics", {"Accept": OPENMETRICS})):
                times, size = [], 0
                for _ in range(o.scrapes):
                    elapsed, size = timed(sock, target, headers)
                    times.append(elapsed)
                print(row(name, times, size))
        finally:
            launch.terminate()
            kill_all_live()
    return 0


if __name__ == "__main__":
    sys.exit(main())
