"""What only a real container shows: pmd as the image's PID 1 under the Docker engine.

Runs on the Docker host with PMD_IMAGE set to the image under test (.ci/run does this).
"""

from __future__ import annotations

import re
import shutil
import time

import pytest
from container_kit import DOCKER, IMAGE, LABEL, Container, docker, wait_for

pytestmark = pytest.mark.skipif(
    not IMAGE, reason="PMD_IMAGE is not set: the docker-level container tests need an image")


@pytest.fixture(autouse=True, scope="module")
def _docker_answers() -> None:
    # PMD_IMAGE is set, so this is meant to run: a missing engine is a failure, not a skip.
    assert shutil.which(DOCKER), f"{DOCKER} not found"
    docker("image", "inspect", IMAGE)


def graceful(name: str) -> dict:
    """A program that says so when it stops on TERM."""
    return {
        "name": name,
        "command": "sh -c \"trap 'echo " + name + " stopped gracefully; exit 0' TERM; "
                   "echo " + name + " up; while :; do sleep 0.1; done\"",
        "boot": True,
        "startsecs": 0,
        "stop_timeout": 5,
    }


GRACEFUL = [graceful("alpha") | {"priority": 10}, graceful("beta") | {"priority": 20}]


def assert_stopped_gracefully(logs: str) -> None:
    for name in ("alpha", "beta"):
        assert re.search(rf"^.*\b{name}\b.*\b{name} stopped gracefully$", logs, re.M), logs


def test_pmd_is_pid_1_and_reports_healthy(container_factory) -> None:
    c = container_factory("--health-interval", "1s", "--health-start-period", "1s")
    c.wait_ready()
    assert c.get("/api/v1/daemon/health")["pid"] == 1
    assert "pmd_init" in c.exec("cat", "/proc/1/cmdline").stdout
    wait_for(lambda: c.inspect("{{.State.Health.Status}}") == "healthy", 20, "healthy")


def test_docker_stop_is_prompt_and_graceful(container_factory) -> None:
    c = container_factory(programs=GRACEFUL)
    c.wait_ready()
    c.wait_state(1, "RUNNING")
    c.wait_state(2, "RUNNING")
    started = time.monotonic()
    docker("stop", "-t", "10", c.name)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"docker stop took {elapsed:.2f} s"
    assert c.exit_code() == 0
    assert_stopped_gracefully(c.logs())


def test_docker_kill_term_is_prompt_and_graceful(container_factory) -> None:
    c = container_factory(programs=GRACEFUL)
    c.wait_ready()
    c.wait_state(1, "RUNNING")
    c.wait_state(2, "RUNNING")
    started = time.monotonic()
    docker("kill", "-s", "TERM", c.name)
    assert docker("wait", c.name, timeout=10).stdout.strip() == "0"
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"exit after docker kill -s TERM took {elapsed:.2f} s"
    assert_stopped_gracefully(c.logs())


@pytest.mark.parametrize(("script", "code"), [
    ("exit 3", 3),
    ("exit 0", 0),
    ("kill -KILL $$", 137),
    ("kill -TERM $$", 143),
])
def test_main_command_exit_code_is_the_containers(script: str, code: int) -> None:
    proc = docker("run", "--rm", "--pull", "never", "--network", "none", "--label",
                  "pmd-ci-test=1", IMAGE, "sh", "-c", script, check=False, timeout=60)
    assert proc.returncode == code, proc.stdout + proc.stderr


def test_flags_go_to_pmd_init() -> None:
    proc = docker("run", "--rm", "--pull", "never", "--network", "none", "--label",
                  "pmd-ci-test=1", IMAGE, "--version", check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("pmd_init ")


def test_docker_exec_pmd_list(container_factory) -> None:
    c = container_factory()  # the image's example config
    c.wait_ready()
    out = c.exec("pmd", "list").stdout
    for name in ("heartbeat", "web", "report"):
        assert name in out, out


def test_added_program_survives_restart_and_quick_start_is_cleaned(container_factory) -> None:
    c = container_factory()  # volumes: the image's anonymous /etc/pmd, /var/lib/pmd
    c.wait_ready()
    status, body = c.api("POST", "/api/v1/daemon/programs/add", {
        "name": "added",
        "command": "sh -c 'echo added up; exec sleep 4141'",
        "user": "root",
        "boot": True,
        "startsecs": 0,
    })
    assert status in (200, 201), body
    added_id = body["id"]
    status, body = c.api("POST", "/api/v1/daemon/quick-start", {
        "command": "sleep 4242", "user": "root", "name": "scratch", "wait": True,
    })
    assert status in (200, 201), body
    temporary_id = body["temporary_id"]
    wait_for(lambda: "sleep 4242" in c.processes(), 10, "the quick-start process")
    wait_for(lambda: "sleep 4141" in c.processes(), 10, "the added program")

    docker("restart", "-t", "10", c.name)
    c.wait_ready()

    programs = c.get("/api/v1/daemon/programs")["programs"]
    assert "added" in [p["name"] for p in programs]
    c.wait_state(added_id, "RUNNING")
    assert "sleep 4141" in c.processes()
    assert "sleep 4242" not in c.processes()
    quick = c.get("/api/v1/daemon/quick-start")["ephemeral_programs"]
    alive = [q for q in quick if q["temporary_id"] == temporary_id
             and q.get("status") in ("running", "starting")]
    assert not alive, quick


def test_no_zombie_after_a_burst_of_orphans(container_factory) -> None:
    c = container_factory()
    c.wait_ready()
    # 1000 double forks: each grandchild is orphaned and re-parented to PID 1 (pmd).
    c.exec("python3", "-c", (
        "import os\n"
        "for _ in range(1000):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        if os.fork() == 0:\n"
        "            os._exit(0)\n"
        "        os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"))
    wait_for(lambda: c.zombies() == 0, 5, "no zombies")
    assert c.running()


def test_docker_logs_prefix_each_line_with_the_program_name(container_factory) -> None:
    c = container_factory(programs=[{
        "name": "talker",
        "command": "sh -c 'echo hello from talker; echo trouble in talker >&2; exec sleep 1000'",
        "boot": True,
        "startsecs": 0,
    }])
    c.wait_ready()
    wait_for(lambda: "trouble in talker" in c.logs(), 10, "the program's lines")
    logs = c.logs()
    assert re.search(r"^.*\btalker\b.*\bhello from talker$", logs, re.M), logs
    assert re.search(r"^.*\btalker\b.*\btrouble in talker$", logs, re.M), logs


def test_an_empty_config_folder_gets_the_example_config(container_factory, tmp_path) -> None:
    config = tmp_path / "empty-config"
    config.mkdir()
    c = container_factory("-v", f"{config}:/etc/pmd")
    c.wait_ready()
    assert (config / "programs.json").exists()
    names = [p["name"] for p in c.get("/api/v1/daemon/programs")["programs"]]
    assert {"heartbeat", "web", "report"} <= set(names)


@pytest.mark.parametrize("how", [("-e", "PMD_USER=pmd"), ("--user", "10001:10001")],
                         ids=["PMD_USER", "--user"])
def test_non_root_mode(container_factory, how: tuple[str, str]) -> None:
    c = container_factory(*how)
    c.wait_ready()
    uid = c.exec("id", "-u", "pmd").stdout.strip()
    assert uid == "10001"
    status = c.exec("cat", "/proc/1/status").stdout
    assert re.search(rf"^Uid:\s+{uid}\s+{uid}\s", status, re.M), status
    for path in ("/etc/pmd/programs.json", "/var/lib/pmd", "/var/log/pmd", "/run/pmd"):
        assert c.exec("stat", "-c", "%u", path).stdout.strip() == uid, path
    c.wait_state(1, "RUNNING")
    # The API may add programs: the config volume is writable by pmd's user.
    status_code, body = c.api("POST", "/api/v1/daemon/programs/add", {
        "name": "mine", "command": "sleep 1000", "user": "pmd", "boot": True,
        "startsecs": 0,
    })
    assert status_code in (200, 201), body
    c.wait_state(body["id"], "RUNNING")
    docker("stop", c.name)
    assert c.exit_code() == 0


def test_restricted_pod_arbitrary_uid_group_0_read_only_root(tmp_path) -> None:
    """OpenShift's arbitrary uid in group 0 with a read-only root file system: pmd writes
    only to its tmpfs folders and the config volume, every program runs, the API and the
    probes answer, and the HEALTHCHECK (`pmd livez`) turns healthy."""
    import json
    import os
    import uuid

    config = tmp_path / "config"
    config.mkdir()
    programs = [graceful("alpha") | {"priority": 10}, graceful("beta") | {"priority": 20},
                {"name": "writer", "boot": True, "startsecs": 0,
                 "command": "sh -c 'id -u > /tmp/uid; id -g >> /tmp/uid; exec sleep 600'"}]
    (config / "programs.json").write_text(json.dumps({"version": 1, "programs": programs}))
    os.chmod(config, 0o777)  # the config volume: writable by the pod's uid
    name = f"pmd-test-{uuid.uuid4().hex[:10]}"
    docker("run", "-d", "--pull", "never", "--name", name, "--label", LABEL,
           "--network", "none", "--read-only", "--user", "12345:0",
           "--tmpfs", "/var/lib/pmd", "--tmpfs", "/var/log/pmd", "--tmpfs", "/run/pmd",
           "--tmpfs", "/tmp", "-v", f"{config}:/etc/pmd",
           "--health-interval", "1s", "--health-start-period", "1s",
           "-e", "PMD_PROBE_PORT=127.0.0.1:9616", IMAGE)
    c = Container(name)
    try:
        c.wait_ready()
        status = c.exec("cat", "/proc/1/status").stdout
        assert re.search(r"^Uid:\s+12345\s", status, re.M), status
        assert re.search(r"^Gid:\s+0\s", status, re.M), status
        for program_id in (1, 2, 3):
            c.wait_state(program_id, "RUNNING")
        wait_for(lambda: c.exec("cat", "/tmp/uid", check=False).stdout.split() == ["12345", "0"],
                 10, "writer's uid")
        for path in ("/livez", "/readyz", "/startupz"):
            assert c.get(path)[{"/livez": "live", "/readyz": "ready",
                                "/startupz": "started"}[path]] is True
        probe = c.exec("python3", "-c", "import urllib.request as u; print(u.urlopen("
                       "'http://127.0.0.1:9616/livez').status)").stdout.strip()
        assert probe == "200"
        for command in (("pmd", "livez"), ("pmd", "readyz"), ("pmd", "startupz")):
            assert c.exec(*command, check=False).returncode == 0, command
        code, body = c.api("POST", "/api/v1/daemon/programs/edit/3", {"description": "x"})
        assert code == 200, body
        assert c.exec("touch", "/etc/pmd-not-a-volume", check=False).returncode != 0
        wait_for(lambda: c.inspect("{{.State.Health.Status}}") == "healthy", 20, "healthy")
        logs = c.logs()
        assert "Read-only file system" not in logs and "not writable" not in logs, logs
        docker("stop", "-t", "10", name)
        assert c.exit_code() == 0
        assert_stopped_gracefully(c.logs())
    finally:
        docker("rm", "-f", "-v", name, check=False)
