"""A real pmd whose config or state dir fills up, turns read-only, or which is killed in
the middle of its writes: an answered change is on disk, a refused one (507) changed
nothing, /health says which dir and why, no temp file outlives a restart, and pmd's open
files do not grow. The quick form of the fault suite's kill9 and fulldisk (bench/faults.py
runs them in full: 50 rounds)."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.helpers import API, assert_error, program
from tests.harness import Pmd
from tests.tmpfs import fill, remount, temp_files, tmpfs

QS = f"{API}/quick-start"


def tagged_pids(tag: str) -> dict[str, int]:
    """Processes whose environment carries QS_TAG=<tag>-<n>: {tag value: pid}."""
    found = {}
    prefix = f"QS_TAG={tag}-".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(prefix):
                found[item.removeprefix(b"QS_TAG=").decode()] = int(entry)
    return found


def kill_tagged(tag: str) -> None:
    """Quick-start programs this test launched that no pmd owns any more (an entry that
    lost its pid is cleaned up without signalling anything)."""
    for pid in tagged_pids(tag).values():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def health(client: httpx.Client) -> dict:
    return client.get(f"{API}/health").json()


@pytest.fixture
def state_on_tmpfs(tmp_path: Path) -> Iterator[Pmd]:
    pmd = Pmd(tmp_path, [], env={"PMD_EPHEMERAL_GRACE": "600"})
    with tmpfs(pmd.state_dir, "64k"):
        try:
            yield pmd
        finally:
            try:
                pmd.stop()
            finally:
                pmd.kill_all()
                kill_tagged(str(tmp_path))


def test_full_state_dir_never_acknowledges_an_unsaved_quick_start(state_on_tmpfs):
    pmd = state_on_tmpfs
    tag = str(pmd.base)  # the whole path: unique across concurrent pytest runs
    # Room for a few launches, then none: a launch needs its document twice over while
    # the new copy is written beside the old one.
    filler = pmd.state_dir / "filler"
    filler.write_bytes(b"\0" * (20 << 10))
    pmd.start()
    http = pmd.http
    fds_before = fd_count(pmd.pid)
    fill_env = "x" * 1500
    acked: dict[str, str] = {}  # tag -> temporary_id
    refused: list[str] = []
    for n in range(60):
        response = http.post(QS, json={
            "command": "sleep 60", "user": "root", "startsecs": 0, "stop_timeout": 2,
            "environment": {"FILL": fill_env, "QS_TAG": f"{tag}-{n}"}})
        if response.status_code == 200:
            acked[f"{tag}-{n}"] = response.json()["temporary_id"]
            continue
        error = assert_error(response, 507, "STORAGE_FULL")
        assert str(pmd.state_dir) in error["message"] and "full" in error["message"]
        assert error["details"]["dir"] == str(pmd.state_dir)
        assert error["details"]["file"] == "ephemeral.json"
        refused.append(f"{tag}-{n}")
    assert acked and refused, (len(acked), len(refused))
    # a refused launch leaves nothing open: the answered ones' pipes (both ends: pmd holds
    # the write ends for a restart) and log files only
    assert fd_count(pmd.pid) <= fds_before + 6 * len(acked) + 2

    on_disk = json.loads((pmd.state_dir / "ephemeral.json").read_text())
    assert set(acked.values()) <= {e["temporary_id"] for e in on_disk["programs"]}
    listed = http.get(QS).json()
    assert {e["temporary_id"] for e in listed["ephemeral_programs"]} == set(acked.values())
    running = tagged_pids(tag)
    assert set(running) == set(acked), "a refused launch runs, or an answered one does not"
    state = health(http)["storage"]["state"]
    assert state["ok"] is False and state["code"] == "STORAGE_FULL"
    assert str(pmd.state_dir) in state["error"] and state["last_error"]["time"]
    assert health(http)["storage"]["config"]["ok"] is True
    assert temp_files(pmd.state_dir) == []

    # Read-only is refused as such.
    remount(pmd.state_dir, "ro")
    try:
        response = http.post(QS, json={"command": "sleep 60", "user": "root",
                                       "environment": {"QS_TAG": f"{tag}-ro"}})
        assert str(pmd.state_dir) in assert_error(response, 507, "STORAGE_READ_ONLY")["message"]
        assert health(http)["storage"]["state"]["code"] == "STORAGE_READ_ONLY"
    finally:
        remount(pmd.state_dir, "rw")
    assert f"{tag}-ro" not in tagged_pids(tag)

    # Space comes back: the next launch succeeds and clears the problem, no poll needed.
    filler.unlink()
    response = http.post(QS, json={"command": "sleep 60", "user": "root", "startsecs": 0,
                                   "stop_timeout": 2, "environment": {"QS_TAG": f"{tag}-late"}})
    assert response.status_code == 200, response.text
    acked[f"{tag}-late"] = response.json()["temporary_id"]
    state = health(http)["storage"]["state"]
    assert state["ok"] is True and state["code"] is None and state["error"] is None
    # the last failure stays on record: the read-only one, or a write of the running
    # launches' pids that came after the remount, while the dir was still full
    assert state["last_error"]["code"] in ("STORAGE_READ_ONLY", "STORAGE_FULL")
    assert state["failures"] >= 2

    # A crash, then a fresh pmd: every answered launch is known to it (running again
    # under it, or reported as cleaned up), and no temp file is left.
    os.kill(pmd.pid, signal.SIGKILL)
    pmd.wait(5)
    pmd.start()
    assert temp_files(pmd.state_dir, pmd.config_dir) == []
    http = pmd.http
    adopted = {e["temporary_id"] for e in http.get(QS).json()["ephemeral_programs"]}
    cleaned = {e.get("temporary_id") for e in health(http)["ephemeral_cleaned"]}
    assert set(acked.values()) <= adopted | cleaned
    assert adopted, "launches whose pid was written are adopted again"


@pytest.fixture
def config_on_tmpfs(tmp_path: Path) -> Iterator[Pmd]:
    kept = program("kept", "sleep 60", boot=True, description="before")
    pmd = Pmd(tmp_path, [kept])
    with tmpfs(pmd.config_dir, "64k"):
        pmd.write_programs([kept])
        try:
            yield pmd.start()
        finally:
            try:
                pmd.stop()
            finally:
                pmd.kill_all()


def test_full_or_read_only_config_dir_refuses_every_change(config_on_tmpfs):
    pmd = config_on_tmpfs
    http = pmd.http
    pmd.wait_for(lambda: http.get(f"{API}/status/1").json()["status"]["status"] == "RUNNING",
                 what="kept RUNNING")
    programs_json = pmd.config_dir / "programs.json"
    kept = http.get(f"{API}/programs/1").json()["program"]
    before = programs_json.read_bytes()
    filler = fill(pmd.config_dir)

    def unchanged() -> None:
        assert programs_json.read_bytes() == before
        assert http.get(f"{API}/programs").json()["programs"] == [kept]
        assert [p["name"] for p in http.get("/api/processes").json()] == ["kept"]
        assert temp_files(pmd.config_dir, pmd.state_dir) == []

    for code in ("STORAGE_FULL", "STORAGE_READ_ONLY"):
        if code == "STORAGE_READ_ONLY":
            filler.unlink()
            remount(pmd.config_dir, "ro")
        try:
            calls = [
                http.post(f"{API}/programs/add", json=program("new", "sleep 60")),
                http.post(f"{API}/programs/edit/1", json={"description": "after"}),
                http.post(f"{API}/programs/1/disable"),
                http.post(f"{API}/programs/remove/1"),
                http.post(f"{API}/programs/reset"),
            ]
            for response in calls:
                error = assert_error(response, 507, code)
                assert str(pmd.config_dir) in error["message"], error
                assert error["details"]["file"] == "programs.json"
            pm2 = [
                http.post("/api/processes", json={"name": "pm2new", "script": "sleep",
                                                  "args": ["60"]}),
                http.delete("/api/processes/kept"),
                http.post("/api/processes/kept/restart", json={"port": 4100}),
            ]
            for response in pm2:
                assert response.status_code == 507, response.text
                body = response.json()
                assert body["success"] is False and body["error"]["code"] == code
                assert str(pmd.config_dir) in body["error"]["message"]
            unchanged()
            status = http.get(f"{API}/status/1").json()["status"]
            assert status["status"] == "RUNNING"  # the refused disable did not stop it
            config = health(http)["storage"]["config"]
            assert config["ok"] is False and config["code"] == code
            assert str(pmd.config_dir) in config["error"]
        finally:
            if code == "STORAGE_READ_ONLY":
                remount(pmd.config_dir, "rw")

    response = http.post(f"{API}/programs/edit/1", json={"description": "after"})
    assert response.status_code == 200, response.text
    stored = json.loads(programs_json.read_text())["programs"]
    assert [p["description"] for p in stored] == ["after"]
    config = health(http)["storage"]["config"]
    assert config["ok"] is True and config["last_error"]["code"] == "STORAGE_READ_ONLY"


def test_kill_9_during_api_writes_loses_no_answered_write(tmp_path):
    """A client adds and edits in a loop while pmd is SIGKILLed at a random moment; each
    round a fresh pmd must have removed every temp file and hold every answered write."""
    rng = random.Random(20261209)
    pmd = Pmd(tmp_path, [program("edited", "sleep 60", boot=False, description="0")])
    acked_adds: set[str] = set()
    last_edit = 0
    n = 0
    planted = pmd.config_dir / ".programs.json.4194300.tmp"  # another pid's, as after a crash
    planted.write_text("{")
    boot_fds: list[int] = []  # pmd's open files at each boot: the same every time
    try:
        for _round in range(10):
            pmd.start()
            boot_fds.append(fd_count(pmd.pid))
            assert temp_files(pmd.config_dir, pmd.state_dir) == []
            stored = json.loads((pmd.config_dir / "programs.json").read_text())["programs"]
            names = {p["name"] for p in stored}
            assert acked_adds <= names, acked_adds - names
            edited = next(p for p in stored if p["name"] == "edited")
            assert int(edited["description"]) >= last_edit
            assert not list(pmd.config_dir.glob("programs.json.bad-*"))

            pid = pmd.pid
            killer = threading.Timer(rng.uniform(0.02, 0.3), os.kill, (pid, signal.SIGKILL))
            killer.start()
            try:
                with httpx.Client(base_url=pmd.url, timeout=5) as client:
                    while True:
                        n += 1
                        try:
                            if n % 2:
                                response = client.post(f"{API}/programs/add", json=program(
                                    f"p{n}", "sleep 60", boot=False))
                            else:
                                response = client.post(f"{API}/programs/edit/1",
                                                       json={"description": str(n)})
                        except httpx.TransportError:
                            break
                        assert response.status_code == 200, response.text
                        if n % 2:
                            acked_adds.add(f"p{n}")
                        else:
                            last_edit = n
            finally:
                killer.join()
            pmd.wait(5)
        pmd.start()
        assert temp_files(pmd.config_dir, pmd.state_dir) == []
        stored = json.loads((pmd.config_dir / "programs.json").read_text())["programs"]
        assert acked_adds <= {p["name"] for p in stored}
        assert int(next(p for p in stored if p["name"] == "edited")["description"]) \
            >= last_edit
        assert acked_adds and last_edit, "the loop wrote between the kills"
        boot_fds.append(fd_count(pmd.pid))
        assert max(boot_fds) <= boot_fds[0] + 2, boot_fds
    finally:
        try:
            pmd.stop()
        finally:
            pmd.kill_all()


def test_a_start_removes_stale_temp_files_of_pmds_naming_only(tmp_path):
    """Temp files a killed pmd left in the config and the state dir (any pid, pmd's own
    `.<name>.<pid>.tmp`) are gone once a new pmd has started, its health counts them;
    files of other names, however alike, are left alone."""
    pmd = Pmd(tmp_path, [program("kept", "sleep 60", boot=False)])
    stale = [pmd.config_dir / ".programs.json.4194301.tmp",
             pmd.config_dir / ".programs.last-good.json.77.tmp",
             pmd.state_dir / ".ephemeral.json.4194302.tmp",
             pmd.state_dir / ".pids.json.1.tmp"]
    others = [pmd.config_dir / "notes.tmp", pmd.config_dir / ".programs.json.tmp",
              pmd.config_dir / ".programs.json.abc.tmp", pmd.state_dir / "ephemeral.json.1.tmp",
              pmd.state_dir / ".editor.swp"]
    for path in [*stale, *others]:
        path.write_bytes(b"{" * 4096)
    with pmd:
        assert temp_files(pmd.config_dir, pmd.state_dir) == []
        assert [p for p in stale if p.exists()] == []
        assert [p for p in others if not p.exists()] == []
        storage = health(pmd.http)["storage"]
        assert (storage["config"]["stale_temp_files_removed"],
                storage["state"]["stale_temp_files_removed"]) == (2, 2), storage
        log = pmd.stderr_text()
    assert "removed 2 stale temp file(s) from the config dir" in log
    assert "removed 2 stale temp file(s) from the state dir" in log
