"""The `pmd` client, run as the real binary against a real pmd: over the Unix socket by
default, over HTTP with --url and --api-key, tables and --json, and one-line errors with a
non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.helpers import wait_until
from tests.api.process_helpers import ENV
from tests.harness import ROOT, Pmd

KEY = "cli-secret"
BINARY = ROOT / ".venv" / "bin" / "pmd"


def command() -> list[str]:
    if BINARY.exists():
        return [str(BINARY)]
    return [sys.executable, "-m", "pmd_init.cli.pmd"]


@pytest.fixture(scope="module")
def pmd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pmd]:
    base: Path = tmp_path_factory.mktemp("cli")
    with Pmd(base, [], env=ENV, api_key=KEY) as running:
        yield running


def run(pmd: Pmd, *args: str, env: dict[str, str] | None = None, timeout: float = 30
        ) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PMD_SOCKET": str(pmd.socket), "PYTHONPATH": str(ROOT)}
    full.pop("PMD_URL", None)
    full.pop("PMD_API_KEY", None)
    full.update(env or {})
    return subprocess.run([*command(), *args], capture_output=True, text=True, env=full,
                          timeout=timeout)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def fails(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pmd: ") and text in lines[0], \
        result.stderr


def listed(pmd: Pmd) -> dict[str, dict]:
    return {p["name"]: p for p in json.loads(ok(run(pmd, "list", "--json")))}


def test_status_exits_zero_when_pmd_answers(pmd, tmp_path):
    out = ok(run(pmd, "status"))
    assert out.startswith("pmd ") and "ok" in out
    assert json.loads(ok(run(pmd, "status", "--json")))["status"] == "ok"
    fails(run(pmd, "status", env={"PMD_SOCKET": str(tmp_path / "none.sock")}),
          "cannot reach pmd")


def test_start_list_show_stop_restart_delete(pmd):
    out = ok(run(pmd, "start", "sh -c 'echo hello from $NAME; exec sleep 60'",
                 "--name", "cli-app", "--port", "3900", "--env", "NAME=cli"))
    assert "cli-app" in out
    wait_until(lambda: listed(pmd)["cli-app"]["status"] == "online", 10, "online")
    table = ok(run(pmd, "list"))
    header, *rows = table.splitlines()
    assert header.split()[:5] == ["ID", "NAME", "STATUS", "PID", "PORT"]
    row = next(r for r in rows if "cli-app" in r).split()
    assert row[2] == "online" and row[4] == "3900"
    assert ok(run(pmd, "list", "--status", "stopped")).strip() == "no processes"
    shown = ok(run(pmd, "show", "cli-app"))
    assert "status" in shown and "online" in shown and "NAME" in shown
    detail = json.loads(ok(run(pmd, "show", "cli-app", "--json")))
    assert detail["config"]["env"] == {"NAME": "cli", "PORT": "3900"}
    wait_until(lambda: "hello from cli" in ok(run(pmd, "logs", "cli-app")), 10, "log line")
    logs = json.loads(ok(run(pmd, "logs", "cli-app", "--json", "--lines", "1",
                             "--type", "out")))
    assert logs["logs"][0]["message"] == "hello from cli" and logs["total_lines"] == 1
    assert "stopped successfully" in ok(run(pmd, "stop", "cli-app"))
    assert listed(pmd)["cli-app"]["status"] == "stopped"
    assert "restarted successfully" in ok(run(pmd, "restart", "cli-app", "--port", "3901"))
    wait_until(lambda: listed(pmd)["cli-app"]["port"] == "3901", 10, "moved to 3901")
    assert "reloaded successfully" in ok(run(pmd, "reload", "cli-app"))
    assert "deleted successfully" in ok(run(pmd, "delete", "cli-app"))
    assert "cli-app" not in listed(pmd)


def test_errors_are_one_line_and_non_zero(pmd):
    fails(run(pmd, "show", "ghost"), "PROCESS_NOT_FOUND: Process with ID 'ghost' not found")
    fails(run(pmd, "stop", "ghost"), "PROCESS_NOT_FOUND")
    ok(run(pmd, "start", "sleep 60", "--name", "twice"))
    fails(run(pmd, "start", "sleep 60", "--name", "twice"), "PROCESS_ALREADY_EXISTS")
    fails(run(pmd, "start", "sleep 60", "--name", "bad", "--port", "x"),
          "INVALID_CONFIGURATION")
    fails(run(pmd, "start", "sleep 60", "--env", "novalue"), "--env takes KEY=VALUE")
    assert run(pmd, "no-such-command").returncode == 2  # argparse usage error


def test_http_with_url_and_api_key(pmd):
    url = pmd.url
    fails(run(pmd, "--url", url, "list"), "PERMISSION_DENIED")
    fails(run(pmd, "list", "--url", url, "--api-key", "wrong"), "invalid API key")
    assert isinstance(json.loads(ok(run(pmd, "list", "--json", "--url", url,
                                        "--api-key", KEY))), list)
    ok(run(pmd, "system", env={"PMD_URL": url, "PMD_API_KEY": KEY}))
    system = json.loads(ok(run(pmd, "system", "--json")))
    assert {"hostname", "cpu", "memory", "disk", "processes"} <= set(system)
    fails(run(pmd, "status", "--url", "http://127.0.0.1:1"), "cannot reach pmd")


def test_quick_start_and_follow(pmd):
    out = ok(run(pmd, "quick-start", "sh -c 'echo one; sleep 0.5; echo two; exec sleep 60'",
                 "--name", "quick-cli", "--ttl", "60", "--wait"))
    assert "running" in out
    temporary_id = out.split()[1]
    assert temporary_id.startswith("quick_")
    assert json.loads(ok(run(pmd, "show", temporary_id, "--json")))["name"] == "quick-cli"
    full = {**os.environ, "PMD_SOCKET": str(pmd.socket), "PYTHONPATH": str(ROOT)}
    followed = pmd.base / "followed"
    with open(followed, "w") as sink:
        follower = subprocess.Popen([*command(), "logs", "quick-cli", "-f", "--interval",
                                     "0.2"], stdout=sink, stderr=subprocess.DEVNULL, env=full)
    try:
        # until the follower shows the second line, however long its own start-up takes
        wait_until(lambda: "] two" in followed.read_text(), timeout=15, what="two followed")
        time.sleep(0.6)  # three more polls, in which nothing may be shown twice
    finally:
        follower.terminate()
        follower.wait(timeout=10)
    out = followed.read_text()
    messages = [line.split("] ", 1)[1] for line in out.splitlines() if "] " in line]
    assert messages == ["one", "two"]
    ok(run(pmd, "delete", temporary_id))


def test_reexec_keeps_programs(pmd):
    ok(run(pmd, "start", "sh -c 'echo before; exec sleep 60'", "--name", "survivor"))
    ok(run(pmd, "start", "sh -c 'echo done; sleep 1.2'", "--name", "finished",
           "--no-autorestart"))
    pid = wait_until(lambda: listed(pmd)["survivor"]["pid"], 10, "pid")
    wait_until(lambda: listed(pmd)["finished"]["status"] == "stopped", 10, "finished")

    def stamps(name: str) -> list:
        logs = json.loads(ok(run(pmd, "logs", name, "--json")))["logs"]
        return [line["timestamp"] for line in logs]

    before = wait_until(lambda: stamps("survivor"), 10, "a log line")
    finished = stamps("finished")
    assert "re-execut" in ok(run(pmd, "reexec"))
    wait_until(lambda: run(pmd, "status").returncode == 0, 15, "pmd back")
    assert wait_until(lambda: listed(pmd).get("survivor", {}).get("pid"), 10) == pid
    # the capture times of lines logged before the re-exec came along
    assert stamps("survivor") == before and before[0] is not None
    assert stamps("finished") == finished and finished[0] is not None


def test_the_client_imports_no_server_code():
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, pmd_init.cli.pmd; "
         "print(sorted(m for m in sys.modules if m.split('.')[0] in "
         "('sanic', 'pydantic', 'psutil', 'orjson')))"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert probe.stdout.strip() == "[]", probe.stderr


def test_list_shows_what_a_program_waits_for():
    from pmd_init.cli.pmd import status_text

    assert status_text({"status": "online"}) == "online"
    assert status_text({"status": "launching", "waiting_for": ["db (healthy)", "c (ready)"],
                        "blocked": None}) == "launching (waiting for db (healthy), c (ready))"
    assert status_text({"status": "launching", "waiting_for": ["m (completed_successfully)"],
                        "blocked": "m exited 3"}) == "launching (blocked: m exited 3)"
