from __future__ import annotations

import signal

from tests.harness import Pmd


def test_boot_status_and_clean_exit(tmp_path):
    programs = [{"name": "hello", "command": "sh -c 'echo hi; exec sleep 100'", "boot": True,
                 "startsecs": 0}]
    with Pmd(tmp_path, programs, pid1=True) as pmd:
        http = pmd.http
        got = pmd.wait_for(lambda: http.get("/api/v1/daemon/status/1").json()["status"]
                           ["status"] == "RUNNING", what="RUNNING")
        assert got
        assert http.get("/api/status").json()["status"] == "ok"
        assert pmd.uds.get("/api/v1/daemon/health").json()["pid"] == 1
        pmd.signal(signal.SIGTERM)
        assert pmd.wait() == 0
    assert (pmd.log_dir / "hello" / "stdout.log").read_text() == "hi\n"
    assert "[hello] hi" in pmd.stdout_text()
