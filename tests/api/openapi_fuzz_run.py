"""One schemathesis run against a real pmd, both inside the network namespace that
tests/api/test_openapi_fuzz.py creates (`unshare --net`: loopback only, so webhooks and
health checks the fuzzer invents reach nothing). Run as a script:

    python tests/api/openapi_fuzz_run.py BASE EXAMPLES SEED

pmd is a subreaper with temp dirs under BASE, on TCP with its rate limits off
(`--rate-limit 0 --rate-burst 0`; the fuzzer would otherwise get 429s over TCP), and an
empty PATH for its programs, so a generated command word finds nothing to run. The
schemathesis CLI runs every phase with every check, `EXAMPLES` cases per operation and
a fixed seed, and the hooks of openapi_fuzz_hooks.py; /ws (a switched protocol an HTTP
fuzzer cannot follow) and the SSE log stream (it never ends) are left out,
tests/api/test_process_ws.py and test_logstream.py cover them. Afterwards pmd must still
be alive, answer health, and hold a valid programs.json. Exit code: the CLI's, or 3 when
pmd did not survive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from pmd_init.store.programs import parse_programs  # noqa: E402
from tests.harness import Pmd  # noqa: E402

EXCLUDED = ["--exclude-path", "/ws", "--exclude-path-regex", "(/logs/stream|/exec/[^/]+/ws)$",
            # replaced by the hooks' no_undocumented_server_error
            "--exclude-checks", "not_a_server_error"]


#: A quick-start creates and starts in one request, so one whose command cannot run on
#: this machine is refused with a 400 (docs/daemon-api.md), a rule no schema can state;
#: the run's PATH is empty on purpose. The hooks repair generated commands in the fuzzing
#: and stateful phases; no hook reaches the coverage phase, hence this one exception.
CONFIG = """
[[operations]]
include-path = "/api/v1/daemon/quick-start"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
"""


def main() -> int:
    base, examples, seed = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    empty = base / "empty-path"
    empty.mkdir(parents=True, exist_ok=True)
    # stop_timeout 1: the signal routes may STOP web, whose next stop then waits for it
    programs = [{"name": "web", "command": "/bin/sleep 600", "user": "root", "boot": True,
                 "stop_timeout": 1},
                {"name": "ranged", "command": "/bin/sleep 600", "user": "root",
                 "port_range": {"start": 7600, "end": 7601}}]
    pmd = Pmd(base / "pmd", programs, args=["--rate-limit", "0", "--rate-burst", "0"],
              env={"PATH": str(empty), "PMD_EPHEMERAL_GRACE": "1"})
    pmd.start()
    try:
        report = base / "schemathesis.json"
        config = base / "schemathesis.toml"
        config.write_text(CONFIG)
        argv = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
                f"{pmd.url}/api/openapi.json", "--checks", "all", "--seed", seed,
                "--max-examples", examples, "--workers", "1", "--request-timeout", "10",
                "--no-color", "--no-shrink",  # a failure is reported as found, in time
                "--report", "json", "--report-json-path", str(report),
                *EXCLUDED]
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.api.openapi_fuzz_hooks",
               "PYTHONPATH": str(ROOT)}
        started = time.monotonic()
        # generous: a loaded 2-core machine took over 240 s for what an idle one does in ~90
        done = subprocess.run(argv, env=env, cwd=base, timeout=600)
        print(f"schemathesis: exit {done.returncode} in {time.monotonic() - started:.1f} s",
              flush=True)
        alive = pmd.proc is not None and pmd.proc.poll() is None
        health = pmd.http.get("/api/v1/daemon/health") if alive else None
        parse_programs(json.loads((pmd.config_dir / "programs.json").read_text()))
        if not alive or health is None or health.status_code != 200:
            print(f"pmd did not survive the run:\n{pmd.stderr_text()[-4000:]}", flush=True)
            return 3
        return done.returncode
    finally:
        pmd.stop()
        pmd.kill_all()


if __name__ == "__main__":
    sys.exit(main())
