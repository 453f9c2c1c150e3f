"""What each part of pmd's imports costs: time and memory, in the order pmd loads them.

Each step runs in a fresh interpreter (with pmd_init byte-compiled first, as installed):
the steps before it, then the step's own imports; the figures are the step's own (its
import time as `-X importtime` gives it, the RSS it adds), the minimum over --runs.
The order is pmd's: what a start needs before its boot programs spawn (its entry; without
a boot plan pydantic, the models and the program store too), then asyncio, the
supervisor, then the HTTP stack (imported in a thread after the boot), then what only
some requests load (psutil for usage figures, prometheus_client for /metrics).
Sanic's optional companions are measured alone, each after sanic's own core.
With --stack-first, asyncio, pydantic and sanic come first (the memory of
bench/stackfloor.py's imports), and pmd's steps show only what its own modules add.

Usage: .venv/bin/python bench/imports.py [--runs 5] [--stack-first]
Output: a table on stdout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from inits import ROOT, pmd_python  # noqa: E402
from run import precompile  # noqa: E402

#: (label, imports) in the order a pmd start loads them; each after all the ones above
STEPS = (
    ("the interpreter", ""),
    ("pmd's start-up (entry, settings, the boot plan's spawn)",
     "import pmd_init.pid1.entry, pmd_init.settings\nfrom pmd_init.pid1 import noplugins\n"
     "noplugins.install('__all__')"),
    ("pydantic (BaseModel and its schema machinery)",
     "from pydantic import BaseModel, Field, TypeAdapter"),
    ("pmd's models and the program store (a first start's boot)",
     "import pmd_init.pid1.firstboot"),
    ("asyncio (and ssl, which it loads)", "import asyncio"),
    ("pid1's start, the supervisor and the service", "import pmd_init.pid1.main, "
     "pmd_init.supervisor.supervisor, pmd_init.store.identities, pmd_init.service"),
    ("sanic (without uvloop, as pmd imports it)",
     "from pmd_init.pid1.main import import_sanic\nimport_sanic()"),
    ("pmd's API (routes, views, OpenAPI)", "import pmd_init.api.server"),
    ("the API's handlers and their request models", "from pmd_init.api import daemon, "
     "execs, metrics, openapi, probes, process, signals, ui, ws"),
    ("psutil (usage figures)", "import psutil"),
    ("prometheus_client (/metrics)", "import prometheus_client"),
)
#: --stack-first: the libraries pmd is built on, before any of pmd's modules; pmd's steps
#: then count only what pmd adds to them (bench/stackfloor.py runs the same stack alone)
STACK = ("the stack: asyncio, pydantic, sanic (without uvloop)",
         "import asyncio\nfrom pydantic import BaseModel, Field, TypeAdapter\n"
         "sys.modules['uvloop'] = None\nimport sanic\ndel sys.modules['uvloop']")
STACK_STEPS = {STEPS[2][0], STEPS[4][0], STEPS[6][0]}
#: sanic's companions: what each weighs inside sanic's import (after everything else);
#: uvloop is not among them, pmd leaves it out (pid1.main.import_sanic)
EXTRAS = ("tracerite", "html5tagger", "aiofiles", "websockets", "httptools")

PROBE = """
import re, sys, time
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
{before}
r0, t0 = rss(), time.perf_counter()
{step}
t1, r1 = time.perf_counter(), rss()
print((t1 - t0) * 1000, (r1 - r0) / 1024, r1 / 1024)
"""


def measure(before: str, step: str, runs: int) -> tuple[float, float, float]:
    """(ms, MiB added, MiB in all): the minimum of each over runs."""
    code = PROBE.format(before=before, step=step or "pass")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYDANTIC_DISABLE_PLUGINS": "__all__"}
    got = []
    for _ in range(runs):
        out = subprocess.run([pmd_python(), "-c", code], capture_output=True, text=True,
                             check=True, env=env, cwd=str(ROOT)).stdout.split()
        got.append(tuple(float(x) for x in out))
    return min(g[0] for g in got), min(g[1] for g in got), min(g[2] for g in got)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--stack-first", action="store_true",
                    help="asyncio, pydantic and sanic first, then what pmd's modules add")
    o = ap.parse_args()
    precompile()
    rows = []
    before = ""
    steps = STEPS
    if o.stack_first:
        steps = (STEPS[0], STACK, *(s for s in STEPS[1:] if s[0] not in STACK_STEPS))
    for label, step in steps:
        if not step:
            code = PROBE.format(before="", step="pass")
            out = subprocess.run([pmd_python(), "-c", code], capture_output=True, text=True,
                                 check=True).stdout.split()
            rows.append((label, "-", "-", f"{float(out[2]):.1f}"))
            continue
        ms, added, total = measure(before, step, o.runs)
        rows.append((label, f"{ms:.0f}", f"{added:.1f}", f"{total:.1f}"))
        before += step + "\n"
    for name in () if o.stack_first else EXTRAS:
        # its share: the whole stack with it, less the whole stack without it (a module
        # set to None in sys.modules fails to import, and sanic goes on without it)
        block = f"import sys\nsys.modules[{name!r}] = None\n"
        try:
            without = measure(block, before, o.runs)
            with_it = measure("", before, o.runs)
        except subprocess.CalledProcessError:
            rows.append((f"  within sanic: {name}", "-", "required", "-"))
            continue
        rows.append((f"  within sanic: {name}", f"{with_it[0] - without[0]:.0f}",
                     f"{with_it[1] - without[1]:.1f}", "-"))
    head = ("import", "ms", "RSS added, MiB", "RSS in all, MiB")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                for i, (c, w) in enumerate(zip(r, widths, strict=True))) + " |")


if __name__ == "__main__":
    main()
