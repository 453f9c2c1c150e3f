"""GET /metrics against a real pmd: the text is read back with prometheus_client's own
parsers (the 0.0.4 text format and OpenMetrics), and every figure is held against what the
Daemon API's status says of the same program."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.api.helpers import API, program
from tests.harness import ROOT, Pmd

KEY = "metrics-key"
PROGRAMS = [{**p, "boot": True} for p in [
    {**program("sleeper"), "id": 1},
    {**program("talker", "sh -c 'printf \"hello\\n\"; printf \"err12\\n\" >&2; exec sleep 30'"),
     "id": 2},
    {**program("quitter", "sh -c 'exit 3'", startsecs=0, autorestart="false"), "id": 3},
    {**program("ranged", "sh -c 'exec sleep 30'", port_range={"start": 47001, "end": 47002}),
     "id": 4},
]]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def pmd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pmd]:
    base: Path = tmp_path_factory.mktemp("pmd")
    with Pmd(base, PROGRAMS, api_key=KEY) as running:
        http = running.http
        running.wait_for(lambda: all(
            s["status"]["status"] in ("RUNNING", "EXITED")
            for s in http.get(f"{API}/status").json()["statuses"]), what="programs settled")
        for program_id in (1, 2):  # sleeper and talker: one restart each, through the API
            response = http.post(f"{API}/programs/{program_id}/restart", json={"wait": True})
            assert response.status_code == 200, response.text
        running.wait_for(lambda: _status(http, 2)["status"] == "RUNNING",
                         what="talker running again")
        yield running


def _status(http: httpx.Client, program_id: int) -> dict[str, Any]:
    status: dict[str, Any] = http.get(f"{API}/status/{program_id}").json()["status"]
    return status


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def at(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def test_text_format_parses_and_matches_the_status(pmd: Pmd) -> None:
    http = pmd.http
    response = http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    types = {f.name: f.type for f in text_string_to_metric_families(response.text)}
    assert types["pmd_program_restarts"] == "counter"
    assert types["pmd_program_up"] == "gauge"
    assert types["pmd_log_bytes"] == "counter"
    assert types["process_resident_memory_bytes"] == "gauge"
    found = samples(response.text)

    for program_id, name in ((1, "sleeper"), (2, "talker"), (3, "quitter")):
        status = _status(http, program_id)
        labels = {"program": name, "port": ""}
        assert at(found, "pmd_program_up", **labels) == (status["status"] == "RUNNING")
        assert at(found, "pmd_program_restarts_total", **labels) == status["restarts"]
        for state in ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED",
                      "FATAL", "UNKNOWN"):
            assert at(found, "pmd_program_state", state=state, **labels) == \
                (state == status["status"]), (name, state)
        if "pid" in status:
            assert at(found, "pmd_program_memory_bytes", **labels) > 0
            assert at(found, "pmd_program_cpu_seconds_total", **labels) >= 0
            assert at(found, "pmd_program_ready", **labels) == 1
            assert at(found, "pmd_program_start_time_seconds", **labels) > 1.6e9
    assert at(found, "pmd_program_restarts_total", program="sleeper", port="") == 1
    quitter = _status(http, 3)
    assert quitter["status"] == "EXITED" and quitter["exit_code"] == 3
    assert at(found, "pmd_program_last_exit_code", program="quitter", port="") == 3
    assert at(found, "pmd_program_ready", program="quitter", port="") == 0
    assert ("pmd_program_memory_bytes",
            frozenset({"program": "quitter", "port": ""}.items())) not in found

    ranged = _status(http, 4)
    assert ranged["type"] == "port-range"
    for instance in ranged["instances"]:
        port = str(instance["port"])
        assert at(found, "pmd_program_up", program="ranged", port=port) == \
            (instance["status"] == "RUNNING")
        assert at(found, "pmd_program_state", program="ranged", port=port,
                  state=instance["status"]) == 1
    assert {port for (name, labels) in found if name == "pmd_program_up"
            for key, port in labels if ("program", "ranged") in labels and key == "port"} \
        == {"47001", "47002"}

    assert at(found, "pmd_build_info", version=http.get("/api/status").json()["version"],
              python=".".join(map(str, sys.version_info[:3]))) == 1
    health = http.get(f"{API}/health").json()
    assert at(found, "pmd_orphans_reaped_total") <= health["orphans_reaped"]
    for result in ("sent", "failed", "dropped"):
        assert at(found, "pmd_webhook_deliveries_total", result=result) == \
            health["webhooks"][result]
    assert at(found, "pmd_programs") == 4
    assert at(found, "process_resident_memory_bytes") > 0
    assert at(found, "process_open_fds") > 0


def test_log_bytes_count_every_run(pmd: Pmd) -> None:
    """talker wrote 6 bytes to each stream before and again after its restart: the counter
    holds both runs, though the first run's pipes are closed."""
    found = pmd.wait_for(lambda: (lambda f: at(f, "pmd_log_bytes_total", program="talker",
                                               port="", stream="stderr") == 12 and f)(
        samples(pmd.http.get("/metrics").text)), what="12 bytes of stderr")
    assert at(found, "pmd_log_bytes_total", program="talker", port="", stream="stdout") == 12
    assert at(found, "pmd_log_dropped_bytes_total", program="talker", port="",
              stream="stdout") == 0
    assert at(found, "pmd_log_bytes_total", program="sleeper", port="", stream="stdout") == 0


def test_unix_socket_needs_no_key_and_tcp_does(pmd: Pmd) -> None:
    over_socket = pmd.uds.get("/metrics")
    assert over_socket.status_code == 200
    assert ("pmd_program_up", frozenset({"program": "sleeper", "port": ""}.items())) in \
        samples(over_socket.text)
    with httpx.Client(base_url=pmd.url, timeout=10) as bare:
        refused = bare.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert bare.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code \
            == 401
        assert bare.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}) \
            .status_code == 200


def test_openmetrics_when_the_scraper_asks(pmd: Pmd) -> None:
    # What Prometheus sends by default: OpenMetrics first, the text format as a fallback.
    accept = ("application/openmetrics-text;version=1.0.0;q=0.5,"
              "application/openmetrics-text;version=0.0.1;q=0.4,"
              "text/plain;version=0.0.4;q=0.3,*/*;q=0.1")
    response = pmd.http.get("/metrics", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(
        "application/openmetrics-text; version=1.0.0")
    assert response.text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(response.text)}
    assert families["pmd_program_restarts"].type == "counter"
    restarts = {s.labels["program"]: s.value for s in families["pmd_program_restarts"].samples
                if s.name == "pmd_program_restarts_total" and s.labels.get("port") == ""}
    assert restarts["sleeper"] == 1
    plain = pmd.http.get("/metrics", headers={"Accept": "text/plain"})
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# EOF" not in plain.text


def test_promtool_accepts_the_text_format(pmd: Pmd) -> None:
    """Prometheus' own parser and linter (`promtool check metrics`, Debian's `prometheus`
    package, which .ci/run and scripts/system-deps install). promtool 2.x reads the text
    format only; OpenMetrics is held to prometheus_client's strict parser above."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    text = pmd.http.get("/metrics").text
    assert "pmd_program_restarts_total" in text and "process_cpu_seconds_total" in text
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                             text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == ""


def test_openapi_lists_metrics(pmd: Pmd) -> None:
    doc = pmd.http.get("/api/openapi.json").json()
    op = doc["paths"]["/metrics"]["get"]
    assert "text/plain" in op["responses"]["200"]["content"]
    assert "security" in op


def test_prometheus_client_is_not_imported_before_a_scrape() -> None:
    """Its import costs tens of milliseconds: pmd's start never pays it."""
    code = ("import sys, pmd_init.pid1.main, pmd_init.api.server, pmd_init.api.daemon, "
            "pmd_init.api.metrics, pmd_init.api.process, pmd_init.api.ws\n"
            "assert 'prometheus_client' not in sys.modules, 'imported at start'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_counters_survive_a_reexec(pmd: Pmd) -> None:
    """Runs last in this module: pmd re-executes; its counters must not fall back."""
    before = samples(pmd.uds.get("/metrics").text)
    assert pmd.http.post(f"{API}/reexec").json()["success"] is True
    pmd.wait_for(lambda: "re-executed:" in pmd.stderr_text(), what="the new pmd")
    pmd.wait_ready()
    after = samples(pmd.uds.get("/metrics").text)
    for stream in ("stdout", "stderr"):
        labels = {"program": "talker", "port": "", "stream": stream}
        assert at(after, "pmd_log_bytes_total", **labels) == \
            at(before, "pmd_log_bytes_total", **labels) == 12
    assert at(after, "pmd_program_restarts_total", program="sleeper", port="") == 1
    assert at(after, "pmd_program_up", program="sleeper", port="") == 1
