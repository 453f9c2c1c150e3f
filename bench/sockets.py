"""What holding sockets costs an init: 100 programs with and without a listening TCP
socket each, pmd against supervisord (whose `[fcgi-program:x]` with `socket=tcp://...`
holds a socket per program, as pmd's `sockets` does). tini and most supervisors hold none.

Each init runs as PID 1 of a fresh PID namespace (bench/inits.py), 100 `sleep` programs;
after they all run and a settle time, the init's RSS and open descriptors are read from
/proc. Runs alternate between the inits and are repeated; the table shows medians, the
cost of the sockets (with minus without) per program, and pmd / supervisord.

Usage: .venv/bin/python bench/sockets.py [--reps N] [--programs N] [--settle S]
Output: the table on stdout, the raw figures in bench/results/sockets-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procfs  # noqa: E402
from inits import Prog, kill_all_live, pmd_launch, supervisord_launch, wait_until  # noqa: E402
from run import SleepCounter  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def programs(n: int, host: str | None, base_port: int) -> list[Prog]:
    progs = []
    for i in range(n):
        prog = Prog(f"p{i:03d}", ["sleep", "100000"])
        if host is not None:
            prog.pmd = {"sockets": [{"name": "web", "host": host, "port": base_port + i}]}
        progs.append(prog)
    return progs


def supervisord_with_sockets(base: Path, progs: list[Prog], host: str, base_port: int) -> Any:
    """supervisord.conf with each program as an fcgi-program holding its own socket."""
    launch = supervisord_launch(base, progs)
    conf = base / "supervisord.conf"
    text = conf.read_text()
    for i, prog in enumerate(progs):
        text = text.replace(f"[program:{prog.name}]\n",
                            f"[fcgi-program:{prog.name}]\n"
                            f"socket=tcp://{host}:{base_port + i}\n")
    conf.write_text(text)
    return launch


def pmd_sockets(base: Path, progs: list[Prog]) -> Any:
    # each program names its socket "web": one name, one address, so name them apart
    for i, prog in enumerate(progs):
        if prog.pmd:
            sock = dict(prog.pmd["sockets"][0])  # type: ignore[index]
            sock["name"] = f"web{i}"
            prog.pmd = {"sockets": [sock]}
    return pmd_launch(base, progs)


def measure(kind: str, sockets: bool, n: int, settle: float, workdir: Path) -> dict[str, Any]:
    host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    base_port = random.randint(20000, 50000)
    progs = programs(n, host if sockets else None, base_port)
    base = Path(tempfile.mkdtemp(dir=workdir))
    if kind == "pmd":
        launch = pmd_sockets(base, progs) if sockets else pmd_launch(base, progs)
    elif sockets:
        launch = supervisord_with_sockets(base, progs, host, base_port)
    else:
        launch = supervisord_launch(base, progs)
    run = launch.start()
    try:
        assert run.pid is not None
        counter = SleepCounter(run.pid)
        if wait_until(lambda: counter() >= n, 60, 0.005) is False:
            raise RuntimeError(f"{kind}: only {counter()} of {n} running\n{run.stderr_tail()}")
        time.sleep(settle)
        listening = sum(1 for line in open("/proc/net/tcp").read().splitlines()[1:]
                        if line.split()[3] == "0A" and
                        base_port <= int(line.split()[1].rsplit(":", 1)[1], 16) < base_port + n)
        return {"rss_kib": procfs.rss_kib(run.pid), "fds": procfs.fd_count(run.pid),
                "listening": listening}
    finally:
        run.terminate(20)
        run.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--programs", type=int, default=100)
    parser.add_argument("--settle", type=float, default=3.0)
    opts = parser.parse_args()
    raw: dict[str, list[dict[str, Any]]] = {}
    cases = [(k, s) for k in ("pmd", "supervisord") for s in (False, True)]
    with tempfile.TemporaryDirectory(prefix="pmd-bench-sockets-") as work:
        try:
            for rep in range(opts.reps):
                for kind, sockets in cases[rep % len(cases):] + cases[:rep % len(cases)]:
                    key = f"{kind}{'+sockets' if sockets else ''}"
                    figure = measure(kind, sockets, opts.programs, opts.settle, Path(work))
                    raw.setdefault(key, []).append(figure)
                    print(f"  {key}: {figure}", file=sys.stderr, flush=True)
        finally:
            kill_all_live()

    def med(key: str, what: str) -> float:
        return statistics.median(r[what] for r in raw[key])

    n = opts.programs
    rows = []
    for what, unit, scale in (("rss_kib", "MiB", 1 / 1024), ("fds", "fds", 1.0)):
        pmd0, pmd1 = med("pmd", what), med("pmd+sockets", what)
        sup0, sup1 = med("supervisord", what), med("supervisord+sockets", what)
        rows.append((f"init {what.split('_')[0]}, {n} programs", unit, pmd0 * scale,
                     sup0 * scale))
        rows.append(("... each with a socket", unit, pmd1 * scale, sup1 * scale))
        per = "KiB" if what == "rss_kib" else "fds"
        rows.append(("cost per socket", per, (pmd1 - pmd0) / n, (sup1 - sup0) / n))
    print(f"| {n} programs, median of {opts.reps} | unit | pmd | supervisord | pmd / sup |")
    print("|---|---|---|---|---|")
    for label, unit, pmd, sup in rows:
        ratio = f"{pmd / sup:.2f}" if sup else "-"
        print(f"| {label} | {unit} | {pmd:.2f} | {sup:.2f} | {ratio} |")
    listening = {k: med(k, "listening") for k in raw}
    print(f"\nlistening sockets seen in /proc/net/tcp: {listening}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"sockets-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"programs": n, "reps": opts.reps, "raw": raw}, indent=1))
    print(f"raw figures: {out}")


if __name__ == "__main__":
    main()
