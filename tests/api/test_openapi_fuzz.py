"""schemathesis against /api/openapi.json of a real pmd: every phase (coverage, fuzzing,
stateful), every check, a fixed seed, a bounded number of cases, so that CI runs the same
cases each time. The document and the server must agree: no failure.

pmd and the fuzzer run in a network namespace of their own (`unshare --net`, loopback
only), over TCP with pmd's rate limits off (`--rate-limit 0 --rate-burst 0`: the limiter
would answer the fuzzer 429); see openapi_fuzz_run.py for the run and
openapi_fuzz_hooks.py for what the fuzzer is told beyond the document.
PMD_OPENAPI_FUZZ_EXAMPLES raises the cases per operation for a longer local run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
EXAMPLES = os.environ.get("PMD_OPENAPI_FUZZ_EXAMPLES") or "10"
SEED = "20261203"


def can_unshare_net() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=10)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not can_unshare_net(),
                                reason="needs unshare --net (root) and ip")


def test_schemathesis_finds_no_failure(tmp_path):
    pytest.importorskip("schemathesis")
    done = subprocess.run(
        ["unshare", "--net", "--", sys.executable, str(HERE / "openapi_fuzz_run.py"),
         str(tmp_path), EXAMPLES, SEED],
        capture_output=True, text=True, timeout=660)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-12000:]
    assert "passed" in output, output[-4000:]
