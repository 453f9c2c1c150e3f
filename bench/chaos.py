"""A crash storm and the fault suite, pmd beside supervisord (`make chaos`).

storm: 20 programs that exit at once, with startsecs 0 and autorestart true: the crash
program of bench/crasher.c, which appends a CLOCK_MONOTONIC stamp to a file of its own and
exits 1. supervisord gets startretries=1000 (with startsecs 0 it never counts a failed
start anyway). Each init runs as PID 1 of its own PID namespace. pmd runs in its default
configuration (log forwarding on, the start-rate limit of 5 starts in 10 s); the column
"pmd-nolimit" is pmd with `start_limit_burst: 0`, where only its scheduling (restarts after
the reaper's pass) keeps it serving; "pmd-noforward" (the flood only) is pmd with
PMD_LOG_FORWARD=0, its programs' lines not copied to its stdout.

For --seconds (20) the storm goes on while a client asks for every program's status at a
steady rate (50 a second) over the init's Unix socket, one connection a request, as
`pmd list` and `supervisorctl status` do: pmd GET /api/v1/daemon/status, supervisord
XML-RPC supervisor.getAllProcessInfo. Only the round trip is timed. Figures:
  API up          exec to the first good status answer (the storm runs from boot)
  status p50/p99  round trips in the window (and the longest, and failed requests)
  init CPU        utime + stime of the init over the window, from /proc/<pid>/stat
  init fds        the most open files seen (sampled before each request)
  starts          starts per program within the window, from the stamps
  SIGTERM         to the init's exit, in the middle of the storm
The issue's target: pmd's status p99 under 20 ms.

The fault scenarios (bench/faults.py says what each measures): crashloop (the storm with
100 programs), fleet (1000 programs), flood (a log flood), stalled (stalled clients),
qstorm (quick-starts that exit at once, 2 minutes), kill9 (SIGKILL during API writes,
50 rounds), fulldisk (a full state tmpfs).

Usage: .venv/bin/python bench/chaos.py [--seconds 20] [--programs 20] [--rate 50]
                                       [--only storm,crashloop,fleet,flood,stalled,
                                               qstorm,kill9,fulldisk]
                                       [--rounds 50] [--fleet 1000]
                                       [--inits pmd,pmd-nolimit,pmd-noforward,supervisord] [--keep]
Needs: unshare, cc, and supervisord for its column (Debian: apt-get install supervisor);
root for fulldisk's tmpfs. The whole run takes about 10 minutes.
Output: the table on stdout, every raw figure in bench/results/chaos-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faults  # noqa: E402
import procfs  # noqa: E402
from clients import (  # noqa: E402
    pmd_status_raw,
    pmd_statuses,
    supervisord_status_raw,
    supervisord_statuses,
)
from inits import (  # noqa: E402
    ROOT,
    Launch,
    Prog,
    build_crasher,
    kill_all_live,
    pmd_launch,
    pmd_python,
    pmd_socket,
    read_stamps,
    supervisord_launch,
    supervisord_socket,
    wait_until,
)
from table import med, percentile, pooled, render  # noqa: E402

BENCH = Path(__file__).resolve().parent
KINDS = ("pmd", "pmd-nolimit", "pmd-noforward", "supervisord")
TARGET_P99_MS = 20.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def storm_progs(stamps: Path, crasher: list[str], n: int, limit: bool) -> list[Prog]:
    return [Prog(f"crash{i:02d}", [*crasher, str(stamps / f"crash{i:02d}")], startsecs=0,
                 autorestart=True, startretries=1000,
                 pmd={} if limit else {"start_limit_burst": 0})
            for i in range(n)]


def run_storm(kind: str, base: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """One init through one crash storm. kind: pmd, pmd-nolimit or supervisord.
    opts: crasher, storm_programs, storm_seconds, storm_rate, storm_settle."""
    n = opts.storm_programs
    stamps = base / "stamps"
    stamps.mkdir()
    progs = storm_progs(stamps, opts.crasher, n, limit=kind != "pmd-nolimit")
    ask: Callable[..., tuple[int, bytes]]
    parse: Callable[[bytes], list[dict[str, Any]]]
    run: Launch
    if kind.startswith("pmd"):
        run, sock = pmd_launch(base, progs).start(), pmd_socket(base)
        ask, parse = pmd_status_raw, pmd_statuses
    else:
        run, sock = supervisord_launch(base, progs, rpc=True).start(), supervisord_socket(base)
        ask, parse = supervisord_status_raw, supervisord_statuses
    assert run.pid is not None
    pid = run.pid
    result: dict[str, Any] = {"programs": n}

    def answered() -> bool:
        try:
            status, raw = ask(sock, timeout=5)
        except OSError:
            return False
        return status == 200 and len(parse(raw)) == n

    try:
        if not wait_until(answered, 60, 0.005):
            raise RuntimeError(f"{kind}: no status answer in 60 s\n{run.stderr_tail()}")
        result["api_up_s"] = time.monotonic() - run.t_exec
        time.sleep(opts.storm_settle)
        latencies: list[float] = []
        fds: list[int] = []
        failed = wrong = 0
        period = 1.0 / opts.storm_rate
        cpu0 = procfs.cpu_seconds(pid) or 0.0
        begin = time.monotonic_ns()
        t_begin = time.monotonic()
        next_at, end_at = t_begin, t_begin + opts.storm_seconds
        while (now := time.monotonic()) < end_at:
            if next_at > now:
                time.sleep(next_at - now)
            fds.append(procfs.fd_count(pid) or 0)
            t0 = time.perf_counter()
            try:
                status, raw = ask(sock, timeout=10)
            except OSError:
                status, raw = 0, b""
            t1 = time.perf_counter()
            if status != 200:
                failed += 1
            else:
                latencies.append((t1 - t0) * 1e3)
                if len(parse(raw)) != n:
                    wrong += 1
            next_at = max(next_at + period, time.monotonic())  # behind: never a burst
        end = time.monotonic_ns()
        cpu1 = procfs.cpu_seconds(pid) or cpu0
        window = (end - begin) / 1e9
        result.update(
            window_s=window, latencies_ms=latencies, requests=len(latencies),
            failed=failed, wrong_count=wrong,
            p50_ms=statistics.median(latencies) if latencies else None,
            p99_ms=percentile(latencies, 99), max_ms=max(latencies) if latencies else None,
            cpu_s=cpu1 - cpu0, cpu_share=(cpu1 - cpu0) / window if window else None,
            fds_max=max(fds) if fds else None,
            fds_median=statistics.median(fds) if fds else None,
            fds_before=fds[0] if fds else None, fds_after=procfs.fd_count(pid),
            rss_kib=procfs.rss_kib(pid),
        )
        result["stop_s"] = run.terminate(30)
    finally:
        run.kill()
    starts = [sum(1 for v in read_stamps(stamps / p.name) if begin <= v <= end) for p in progs]
    result.update(starts_per_program=starts, starts_median=statistics.median(starts),
                  starts_min=min(starts), starts_max=max(starts),
                  starts_per_s=sum(starts) / (window or 1))
    return result


def storm_rows(raw: dict[str, Any], kinds: list[str], scenario: str = "storm",
               short: bool = False, title: str = "crash storm") -> list[dict[str, Any]]:
    """Table rows for the storm (medians over runs, latency percentiles pooled).
    short: the two rows bench/run.py shows."""
    rows: list[dict[str, Any]] = []
    n = next((r["programs"] for runs in raw.get(scenario, {}).values() for r in runs), 20)

    def row(label: str, unit: str, get: Callable[[str], float | None], fmt: str = "{:.3g}",
            better: str = "lower") -> None:
        values = {k: get(k) for k in kinds}
        if any(v is not None for v in values.values()):
            rows.append({"figure": label, "unit": unit, "values": values, "fmt": fmt,
                         "better": better})

    def total(key: str) -> Callable[[str], float | None]:
        def get(kind: str) -> float | None:
            runs = raw.get(scenario, {}).get(kind, [])
            return sum(r[key] for r in runs) if runs else None
        return get

    row(f"{title} ({n} programs): status p50", "ms",
        lambda k: pooled(raw, scenario, k, "latencies_ms", 50))
    row(f"{title} ({n} programs): status p99", "ms",
        lambda k: pooled(raw, scenario, k, "latencies_ms", 99))
    if short:
        return rows
    row(f"{title}: status, longest", "ms",
        lambda k: pooled(raw, scenario, k, "latencies_ms", 100))
    row(f"{title}: status answers", "", total("requests"), fmt="{:.0f}", better="higher")
    row(f"{title}: failed status requests", "", total("failed"), fmt="{:.0f}")
    row(f"{title}: exec → API answering", "s", lambda k: med(raw, scenario, k, "api_up_s"))
    row(f"{title}: init CPU over the window", "cpu-s",
        lambda k: med(raw, scenario, k, "cpu_s"))
    row(f"{title}: init CPU share", "%",
        lambda k: None if (v := med(raw, scenario, k, "cpu_share")) is None else 100 * v)
    row(f"{title}: init open fds, before", "",
        lambda k: med(raw, scenario, k, "fds_before"), fmt="{:.0f}")
    row(f"{title}: init open fds, after", "",
        lambda k: med(raw, scenario, k, "fds_after"), fmt="{:.0f}")
    row(f"{title}: init open fds, most seen", "", lambda k: med(raw, scenario, k, "fds_max"),
        fmt="{:.0f}")
    row(f"{title}: init RSS at the end", "MiB",
        lambda k: None if (v := med(raw, scenario, k, "rss_kib")) is None else v / 1024)
    row(f"{title}: starts per program in the window", "",
        lambda k: med(raw, scenario, k, "starts_median"), fmt="{:.0f}", better="higher")
    row(f"{title}: SIGTERM → exit", "s", lambda k: med(raw, scenario, k, "stop_s"))
    return rows


SCENARIOS = ("storm", "crashloop", "fleet", "flood", "stalled", "qstorm", "kill9",
             "fulldisk")
#: Scenarios pmd alone has (supervisord has no quick-starts, no API writes to kill, no
#: state dir to fill).
PMD_ONLY = ("qstorm", "kill9", "fulldisk")


def fault_rows(raw: dict[str, Any], kinds: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(scenario: str, label: str, unit: str, key: str | Callable[[dict[str, Any]], Any],
            fmt: str = "{:.3g}", better: str = "lower", scale: float = 1.0) -> None:
        values: dict[str, float | None] = {}
        for kind in kinds:
            runs = raw.get(scenario, {}).get(kind, [])
            got = [key(r) if callable(key) else r.get(key) for r in runs]
            got = [g for g in got if g is not None]
            values[kind] = statistics.median(got) * scale if got else None
        if any(v is not None for v in values.values()):
            rows.append({"figure": f"{scenario}: {label}", "unit": unit, "values": values,
                         "fmt": fmt, "better": better})

    n = next((r["programs"] for runs in raw.get("fleet", {}).values() for r in runs), 1000)
    row("fleet", f"exec → {n} processes spawned", "s", "spawned_s")
    row("fleet", f"exec → {n} RUNNING (own timestamps, whole s)", "s", "running_own_s",
        fmt="{:.0f}")
    row("fleet", "list with status p50", "ms", "p50_ms")
    row("fleet", "list with status p99", "ms", "p99_ms")
    row("fleet", "init RSS", "MiB", "rss_kib", scale=1 / 1024)
    row("fleet", "init open fds, before", "", "fds_before", fmt="{:.0f}")
    row("fleet", "init open fds, after", "", "fds_after", fmt="{:.0f}")
    row("fleet", "SIGTERM → exit", "s", "stop_s")
    for scenario in ("flood", "stalled"):
        row(scenario, "status p50", "ms", "p50_ms")
        row(scenario, "status p99", "ms", "p99_ms")
        row(scenario, "status, longest", "ms", "max_ms")
        row(scenario, "failed status requests", "", "failed", fmt="{:.0f}")
        row(scenario, "init CPU share", "%", "cpu_share", scale=100)
        row(scenario, "init open fds, before", "", "fds_before", fmt="{:.0f}")
        row(scenario, "init open fds, most seen", "", "fds_max", fmt="{:.0f}")
        row(scenario, "init open fds, after", "", "fds_after", fmt="{:.0f}")
        row(scenario, "init RSS, before", "MiB", "rss_before_kib", scale=1 / 1024)
        row(scenario, "init RSS, most seen", "MiB", "rss_max_kib", scale=1 / 1024)
        row(scenario, "init RSS, after", "MiB", "rss_after_kib", scale=1 / 1024)
    row("flood", "log bytes on disk at the end", "MiB", "log_bytes", scale=1 / 2**20)
    row("flood", "read from the flood in the window", "MiB", "flood_mib", better="higher")
    row("flood", "init CPU per MiB read", "ms", "cpu_ms_per_mib")
    row("stalled", "clients held (half-sent + never reading)", "", "held", fmt="{:.0f}")
    row("stalled", "init RSS after the first round", "MiB", "rss_after_first_kib",
        scale=1 / 1024)
    row("stalled", "init RSS growth from the first round's end to the last", "MiB",
        lambda r: r["rss_after_kib"] - r["rss_after_first_kib"], fmt="{:+.1f}",
        scale=1 / 1024)
    row("qstorm", "health p50", "ms", "p50_ms")
    row("qstorm", "health p99", "ms", "p99_ms")
    row("qstorm", "health, longest", "ms", "max_ms")
    row("qstorm", "failed health requests", "", "failed", fmt="{:.0f}")
    row("qstorm", "init CPU share", "%", "cpu_share", scale=100)
    row("qstorm", "starts per launch in the window", "", "starts_median", fmt="{:.0f}",
        better="higher")
    row("qstorm", "init open fds, before", "", "fds_before", fmt="{:.0f}")
    row("qstorm", "init open fds, most seen", "", "fds_max", fmt="{:.0f}")
    row("qstorm", "init open fds, after the launches stop", "", "fds_after", fmt="{:.0f}")
    row("qstorm", "init RSS, before", "MiB", "rss_before_kib", scale=1 / 1024)
    row("qstorm", "init RSS, end of the window", "MiB", "rss_during_kib", scale=1 / 1024)
    row("qstorm", "init RSS, after", "MiB", "rss_after_kib", scale=1 / 1024)
    row("qstorm", "ephemeral.json at the end", "bytes", "ephemeral_bytes", fmt="{:.0f}")
    for key in ("corrupt_or_unclean", "temp_files", "lost", "resurrected"):
        row("kill9", key.replace("_", " "), "", key, fmt="{:.0f}")
    row("kill9", "answered writes", "", "writes", fmt="{:.0f}", better="higher")
    row("kill9", "pmd open fds at boot, first → last", "",
        lambda r: r["fds_after"] - r["fds_before"], fmt="{:+.0f}")
    row("fulldisk", "answered launches", "", "answered", fmt="{:.0f}", better="higher")
    row("fulldisk", "refused launches (507)", "", "refused", fmt="{:.0f}")
    row("fulldisk", "answered but missing from ephemeral.json", "", "answered_missing",
        fmt="{:.0f}")
    row("fulldisk", "ephemeral.json invalid after an answer", "", "ephemeral_invalid",
        fmt="{:.0f}")
    row("fulldisk", "temp files left", "", "temp_files", fmt="{:.0f}")
    row("fulldisk", "init open fds, before → after", "",
        lambda r: r["fds_after"] - r["fds_before"], fmt="{:+.0f}")
    return rows


def run_one(scenario: str, kind: str, base: Path, o: argparse.Namespace) -> dict[str, Any]:
    if scenario == "storm":
        return run_storm(kind, base, o)
    if scenario == "crashloop":
        crash = argparse.Namespace(**{**vars(o), "storm_programs": o.crashloop_programs,
                                      "storm_rate": min(o.rate, 20.0)})
        return run_storm(kind, base, crash)
    if scenario == "fleet":
        return faults.run_fleet(kind, base, o.fleet)
    if scenario == "flood":
        return faults.run_flood(kind, base, o.fault_seconds, 20.0)
    if scenario == "stalled":
        return faults.run_stalled(kind, base, o.fault_seconds, 20.0)
    if scenario == "qstorm":
        return faults.run_qstorm(base, o.crasher, o.qstorm_seconds, 20.0)
    if scenario == "kill9":
        return faults.run_kill9(base, o.rounds)
    if scenario == "fulldisk":
        return faults.run_fulldisk(base)
    raise ValueError(scenario)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="the storm's window")
    ap.add_argument("--programs", type=int, default=20)
    ap.add_argument("--rate", type=float, default=50.0, help="status requests a second")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--only", default=",".join(SCENARIOS),
                    help="comma list of " + ",".join(SCENARIOS))
    ap.add_argument("--rounds", type=int, default=50, help="kill9's rounds")
    ap.add_argument("--fleet", type=int, default=1000, help="fleet's programs")
    ap.add_argument("--crashloop-programs", type=int, default=100)
    ap.add_argument("--fault-seconds", type=float, default=10.0,
                    help="the window of flood and stalled")
    ap.add_argument("--qstorm-seconds", type=float, default=120.0,
                    help="the window of qstorm (quick-starts that exit at once)")
    ap.add_argument("--inits", default=",".join(KINDS),
                    help="comma list of pmd,pmd-nolimit,supervisord")
    ap.add_argument("--keep", action="store_true", help="keep the run folders")
    ap.add_argument("--out", default=None, help="JSON result path")
    o = ap.parse_args()
    o.storm_seconds, o.storm_programs, o.storm_rate = o.seconds, o.programs, o.rate
    o.storm_settle = 0.5

    if shutil.which("unshare") is None:
        sys.exit("chaos: `unshare` (util-linux) is missing")
    scenarios = [x for x in o.only.split(",") if x in SCENARIOS]
    kinds = [k for k in o.inits.split(",") if k in KINDS]
    problems = []
    if "supervisord" in kinds and shutil.which("supervisord") is None:
        problems.append("supervisord is not installed (Debian: apt-get install supervisor); "
                        "its column is left empty")
        kinds.remove("supervisord")
    tmp = Path(tempfile.mkdtemp(prefix="pmd-chaos-"))
    o.crasher = build_crasher(tmp)
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {s: {} for s in scenarios}
    errors: list[str] = []
    started = time.time()
    try:
        for scenario in scenarios:
            for rep in range(o.reps):
                order = kinds[rep % len(kinds):] + kinds[:rep % len(kinds)]
                if scenario in PMD_ONLY:
                    order = ["pmd"] if "pmd" in kinds else []
                elif scenario not in ("storm", "crashloop"):
                    order = [k for k in order if k != "pmd-nolimit"]
                if scenario != "flood":  # forwarding matters where logs flood only
                    order = [k for k in order if k != "pmd-noforward"]
                for kind in order:
                    base = tmp / f"{scenario}-{rep:02d}-{kind}"
                    base.mkdir()
                    t0 = time.monotonic()
                    try:
                        result = run_one(scenario, kind, base, o)
                    except Exception as exc:  # one failed run must not lose the others
                        errors.append(f"{scenario} {kind}: {exc}")
                        log(f"  {scenario} {kind:<12} FAILED: {exc}")
                        kill_all_live()
                        continue
                    finally:
                        if not o.keep:
                            shutil.rmtree(base, ignore_errors=True)
                    raw[scenario].setdefault(kind, []).append(result)
                    brief = {k: (round(v, 4) if isinstance(v, float) else v)
                             for k, v in result.items() if not isinstance(v, list)}
                    log(f"  {scenario} {kind:<12} {time.monotonic() - t0:5.1f}s {brief}")
    except KeyboardInterrupt:
        log("interrupted: stopping what was started")
    finally:
        kill_all_live()
        if not o.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    pairs = [(k, "supervisord") for k in kinds if k != "supervisord"] \
        if "supervisord" in kinds else []
    rows = storm_rows(raw, kinds) if "storm" in raw else []
    if "crashloop" in raw:
        rows += storm_rows(raw, kinds, "crashloop", title="crash loop")
    rows += fault_rows(raw, kinds)
    print()
    print(f"chaos on {platform.node() or 'this machine'}: {os.cpu_count()} cpus, "
          f"Linux {platform.release()}, scenarios {','.join(scenarios)}; storm: "
          f"{o.programs} programs, {o.seconds:g} s window, {o.rate:g} status requests/s; "
          f"{o.reps} round(s), {time.time() - started:.0f} s")
    print(render(rows, kinds, pairs))
    p99 = pooled(raw, "storm", "pmd", "latencies_ms", 99)
    if p99 is not None:
        print(f"- target: pmd status p99 under {TARGET_P99_MS:g} ms during the storm: "
              f"{p99:.2f} ms, {'met' if p99 < TARGET_P99_MS else 'NOT met'}")
    print("- pmd: its default start-rate limit (5 starts in 10 s, then BACKOFF); pmd-nolimit: "
          "start_limit_burst 0; supervisord: no such limit")
    for run in raw.get("kill9", {}).get("pmd", []):
        for line in run["problems"]:
            print(f"! kill9: {line}")
    for run in raw.get("fulldisk", {}).get("pmd", []):
        if run.get("first_refusal"):
            print(f"- fulldisk: the first refusal: {run['first_refusal']}")
    for e in errors:
        print(f"! {e}")
    for p in problems:
        print(f"! {p}")
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    out = Path(o.out) if o.out else results / time.strftime("chaos-%Y%m%d-%H%M%S.json")
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": o.seconds,
        "programs": o.programs, "rate": o.rate, "reps": o.reps, "scenarios": scenarios,
        "rounds": o.rounds, "fleet": o.fleet, "crashloop_programs": o.crashloop_programs,
        "fault_seconds": o.fault_seconds,
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version(), "loadavg": os.getloadavg()},
        "versions": versions(), "kinds": kinds, "problems": problems, "errors": errors,
        "table": [{k: v for k, v in r.items() if k != "fmt"} for r in rows], "raw": raw,
    }
    out.write_text(json.dumps(doc, indent=1))
    print(f"raw figures: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    sys.exit(1 if errors else 0)


def versions() -> dict[str, str]:
    found = {}
    for name, argv in (("supervisord", ["supervisord", "--version"]),
                       ("pmd", [pmd_python(), "-m", "pmd_init", "--version"])):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
            found[name] = (out.stdout or out.stderr).strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return found


if __name__ == "__main__":
    main()
