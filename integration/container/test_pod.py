"""The pmd service of compose.test.yml seen from its tester, which shares its network
namespace (no bridge network: everything here is on the pod's loopback), its Unix socket
folder and its log folder. The pmd service runs the image's example config.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from container_kit import wait_for

URL = os.environ.get("PMD_CONTAINER_URL", "")
API_KEY = os.environ.get("PMD_CONTAINER_API_KEY", "")
SOCKET = os.environ.get("PMD_CONTAINER_SOCKET", "/run/pmd/pmd.sock")
LOG_DIR = Path(os.environ.get("PMD_CONTAINER_LOG_DIR", "/var/log/pmd"))

pytestmark = pytest.mark.skipif(
    not URL, reason="PMD_CONTAINER_URL is not set: these run in compose.test.yml's tester")


@pytest.fixture(scope="module")
def http() -> Iterator[Any]:
    """TCP with the API key, as a client in the pod would talk to pmd."""
    with httpx.Client(base_url=URL, headers={"X-API-Key": API_KEY}, timeout=20) as client:
        yield client


@pytest.fixture(scope="module")
def uds() -> Iterator[Any]:
    """The Unix socket: trusted by its file mode, no key."""
    transport = httpx.HTTPTransport(uds=SOCKET)
    with httpx.Client(base_url="http://pmd", transport=transport, timeout=20) as client:
        yield client


def statuses(client: Any) -> dict[str, Any]:
    body = client.get("/api/v1/daemon/status").json()
    return {s["name"]: s["status"] for s in body["statuses"]}


def test_pmd_is_pid_1_of_its_container(uds) -> None:
    health = uds.get("/api/v1/daemon/health").json()
    assert health["status"] == "ok"
    assert health["pid"] == 1


def test_health_is_public_and_the_rest_needs_the_key() -> None:
    with httpx.Client(base_url=URL, timeout=20) as anonymous:
        assert anonymous.get("/api/v1/daemon/health").status_code == 200
        assert anonymous.get("/api/v1/daemon/programs").status_code == 401
    with httpx.Client(base_url=URL, headers={"X-API-Key": "wrong"}, timeout=20) as wrong:
        assert wrong.get("/api/v1/daemon/programs").status_code == 401


def test_api_status(http) -> None:
    assert http.get("/api/status").json()["status"] == "ok"


def test_the_example_config_boots(http) -> None:
    def booted() -> bool:
        found = statuses(http)
        web = found.get("web", {})
        return (found.get("heartbeat", {}).get("status") == "RUNNING"
                and web.get("running_instances") == web.get("total_instances") == 2)
    wait_for(booted, 20, "heartbeat and both web instances RUNNING")
    # lazy_load: started only when asked.
    assert statuses(http)["report"].get("status") != "RUNNING"


def test_programs_listen_on_the_shared_loopback() -> None:
    for port in (8080, 8081):
        response = wait_for(lambda p=port: httpx.get(f"http://127.0.0.1:{p}/", timeout=5),
                            20, f"the web instance on {port}")
        assert response.status_code == 200


def test_added_program_runs_and_logs_to_the_volume(http) -> None:
    name = f"pod-{uuid.uuid4().hex[:8]}"
    response = http.post("/api/v1/daemon/programs/add", json={
        "name": name,
        "command": f"sh -c 'echo {name} says hi; exec sleep 1000'",
        "user": "root",
        "boot": True,
        "startsecs": 0,
    })
    assert response.status_code in (200, 201), response.text
    program_id = response.json()["id"]
    try:
        http.post(f"/api/v1/daemon/programs/{program_id}/start", json={})
        wait_for(lambda: http.get(f"/api/v1/daemon/status/{program_id}").json()
                 ["status"].get("status") == "RUNNING", 15, f"{name} RUNNING")
        log = LOG_DIR / name / "stdout.log"
        wait_for(lambda: log.exists() and f"{name} says hi" in log.read_text(), 10,
                 f"{log}")
    finally:
        response = http.post(f"/api/v1/daemon/programs/remove/{program_id}")
        assert response.status_code == 200, response.text
    names = [p["name"] for p in http.get("/api/v1/daemon/programs").json()["programs"]]
    assert name not in names


def test_quick_start_runs_and_cleans_up(http) -> None:
    response = http.post("/api/v1/daemon/quick-start", json={
        "command": "sleep 300", "user": "root", "name": "pod-scratch", "wait": True,
    })
    assert response.status_code in (200, 201), response.text
    body = response.json()
    assert body["status"] == "running", body
    temporary_id = body["temporary_id"]
    response = http.post(f"/api/v1/daemon/quick-start/{temporary_id}/stop")
    assert response.status_code == 200, response.text
    assert response.json()["cleaned_up"] is True


def test_pmd_client_over_the_shared_socket() -> None:
    env = dict(os.environ, PMD_SOCKET=SOCKET)
    status = subprocess.run(["pmd", "status"], capture_output=True, text=True, env=env,
                            timeout=30)
    assert status.returncode == 0, status.stdout + status.stderr
    listing = subprocess.run(["pmd", "list"], capture_output=True, text=True, env=env,
                             timeout=30)
    assert listing.returncode == 0, listing.stdout + listing.stderr
    assert "heartbeat" in listing.stdout
