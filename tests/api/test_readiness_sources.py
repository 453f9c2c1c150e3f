"""Readiness sources with real programs: a startup probe (http and script), each releasing
its dependents only once it succeeded, observed from the programs' own marker files."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.api.helpers import API
from tests.api.test_dependencies_boot import prog, stamp, started, written
from tests.harness import Pmd


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def marked(base: Path, name: str) -> float:
    return float((base / name).read_text())


def test_a_startup_probe_makes_ready_at_its_first_success(tmp_path: Path) -> None:
    base = tmp_path / "marks"
    base.mkdir()
    port = free_port()
    programs = [
        # serves only after 0.8 s: the first probes are refused
        prog("web", f"sh -c 'sleep 0.8; date +%s.%N > {base}/web.up; "
                    f"exec python3 -m http.server --bind 127.0.0.1 {port}'",
             readiness={"probe": {"type": "http", "url": f"http://127.0.0.1:{port}/"},
                        "timeout_seconds": 20}),
        prog("flag", f"sh -c 'sleep 0.5; date +%s.%N > {base}/flag.up; exec sleep 60'",
             readiness={"probe": {"type": "script", "command": f"test -e {base}/flag.up"}}),
        prog("api", stamp(base, "api"), depends_on={"web": "ready", "flag": "ready"}),
    ]
    with Pmd(tmp_path / "pmd", programs) as pmd:
        http = pmd.http
        ids = {p["name"]: p["id"] for p in http.get(f"{API}/programs").json()["programs"]}
        pmd.wait_for(lambda: written(base / "api.start"), timeout=15)
        assert started(base, "api") >= marked(base, "web.up")
        assert started(base, "api") >= marked(base, "flag.up")
        for name in ("web", "flag"):
            status = http.get(f"{API}/status/{ids[name]}").json()["status"]
            assert status["ready"] is True and status["ready_at"], status
            assert f"{name}: ready (probe)" in pmd.stderr_text()
        # a health check's 30 s default interval is not a startup probe's: the retry after
        # the refused first attempts came a second later, not 30 s
        assert started(base, "api") - marked(base, "web.up") < 10
