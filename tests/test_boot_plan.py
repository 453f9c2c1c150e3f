"""The boot plan (pid1/early.py): boot programs started before pmd's imports.

Real pmd as PID 1 of a PID namespace, started twice on the same config and state dirs:
the first start writes the plan, the second uses it. What a test reads is pmd's own log
line about the plan, the API's status, and the programs' own marker files (each run
appends its pid: a program started twice leaves two lines for one pmd start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.helpers import API, wait_until
from tests.harness import ROOT, Pmd, can_unshare

pytestmark = pytest.mark.skipif(not can_unshare(), reason="needs unshare --pid (root)")


def marking(base: Path, name: str, extra: str = "") -> str:
    """A command that says hello on stdout with its pid, appends its pid to its marker
    file, and sleeps. `$$$$` is `$$` once pmd's expansion has read it: the shell's pid."""
    return (f"sh -c 'echo hello-$$$$ {extra}; echo $$$$ >> {base}/{name}.runs; "
            "exec sleep 60'")


def runs(base: Path, name: str) -> list[str]:
    path = base / f"{name}.runs"
    return path.read_text().split() if path.exists() else []


def programs(base: Path, **commands: str) -> list[dict[str, object]]:
    return [{"id": index + 1, "name": name, "command": command, "boot": True,
             "startsecs": 0.2, "stop_timeout": 2}
            for index, (name, command) in enumerate(commands.items())]


def boot_line(pmd: Pmd, since: int) -> str:
    """pmd's log line about the boot plan, of the start whose stderr begins at `since`."""
    def found() -> str | None:
        lines = [line for line in pmd.stderr_text()[since:].splitlines()
                 if "INFO boot plan" in line]
        return lines[0] if lines else None
    return wait_until(found, 10, "the boot plan's log line")


def status(pmd: Pmd, program_id: int) -> dict:
    return pmd.uds.get(f"{API}/status/{program_id}").json()["status"]


def running(pmd: Pmd, program_id: int) -> dict:
    return wait_until(lambda: (s := status(pmd, program_id))["status"] == "RUNNING" and s,
                      10, f"program {program_id} RUNNING")


def start_again(pmd: Pmd, env: dict[str, str] | None = None) -> int:
    """Stop pmd, start it again on the same folders; returns where its new log begins."""
    assert pmd.stop() == 0
    since = len(pmd.stderr_text())
    if env is not None:
        pmd.env = env
    pmd.start()
    return since


def test_the_second_start_uses_the_plan_and_starts_each_program_once(tmp_path: Path) -> None:
    specs = programs(tmp_path, early=marking(tmp_path, "early"),
                     later=marking(tmp_path, "later"))
    specs.append({"id": 3, "name": "delayed", "command": marking(tmp_path, "delayed"),
                  "boot": True, "delay_seconds": 1, "startsecs": 0})
    specs.append({"id": 4, "name": "dependent", "command": marking(tmp_path, "dependent"),
                  "boot": True, "depends_on": ["early"], "startsecs": 0})
    with Pmd(tmp_path, specs, pid1=True) as pmd:
        assert "boot plan: none used" in boot_line(pmd, 0)
        for i in (1, 2, 3, 4):
            running(pmd, i)
        plan = json.loads((pmd.state_dir / "boot-plan.json").read_text())
        # a delay and a dependency need the supervisor: those start as before
        assert [p["name"] for p in plan["programs"]] == ["early", "later"]

        since = start_again(pmd)
        line = boot_line(pmd, since)
        assert f"boot plan {pmd.state_dir / 'boot-plan.json'}: 2 of 2 programs started " \
            "before pmd's imports" in line
        for i in (1, 2, 3, 4):
            running(pmd, i)
        for name in ("early", "later", "delayed", "dependent"):
            assert len(runs(tmp_path, name)) == 2, name  # once per pmd start, never twice

        # taken over like any program: its pid, its first line in its log file, its
        # restart and its stop
        first = status(pmd, 1)
        pid = runs(tmp_path, "early")[-1]
        assert str(first["pid"]) == pid
        log = pmd.log_dir / "early" / "stdout.log"
        wait_until(lambda: f"hello-{pid}" in log.read_text(), 5, "the first line logged")
        logs = pmd.uds.get(f"{API}/programs/1/logs", params={"lines": 10}).json()["logs"]
        assert f"hello-{pid}" in logs.split("\n")
        assert pmd.uds.post(f"{API}/programs/1/restart").json()["success"] is True
        wait_until(lambda: len(runs(tmp_path, "early")) == 3, 10, "the restart's run")
        again = running(pmd, 1)
        assert str(again["pid"]) == runs(tmp_path, "early")[-1] != pid
        wait_until(lambda: f"hello-{again['pid']}" in log.read_text(), 5, "its line logged")
        stopped = pmd.uds.post(f"{API}/programs/2/stop").json()
        assert stopped["success"] is True
        assert status(pmd, 2)["status"] == "STOPPED"


def test_a_first_start_spawns_once_the_configuration_validates(tmp_path: Path) -> None:
    """No plan yet: the programs a plan would hold start before the supervisor exists,
    each once, and are taken over like a plan's; the others start as before."""
    specs = programs(tmp_path, app=marking(tmp_path, "app", f"$$(env > {tmp_path}/env.txt)"))
    specs.append({"id": 2, "name": "dependent", "command": marking(tmp_path, "dependent"),
                  "boot": True, "depends_on": ["app"], "startsecs": 0})
    with Pmd(tmp_path, specs, pid1=True) as pmd:
        line = boot_line(pmd, 0)
        assert "none used" in line and "1 of 1 programs started once the configuration " \
            "validated" in line
        app, dependent = running(pmd, 1), running(pmd, 2)
        assert [str(app["pid"])] == runs(tmp_path, "app")  # started once, and taken over
        assert [str(dependent["pid"])] == runs(tmp_path, "dependent")
        log = pmd.log_dir / "app" / "stdout.log"
        wait_until(lambda: f"hello-{app['pid']}" in log.read_text(), 5, "its first line")
        if "PYDANTIC_DISABLE_PLUGINS" not in os.environ:  # pmd's switch, not the program's
            assert "PYDANTIC_DISABLE_PLUGINS=" not in (tmp_path / "env.txt").read_text()
        assert (pmd.state_dir / "boot-plan.json").exists()  # for the next start


@pytest.mark.parametrize("problem", ["programs.json", "programs.d"])
def test_a_configuration_with_a_problem_spawns_nothing_before_its_load(
        tmp_path: Path, problem: str) -> None:
    """What validates nothing starts early: the load reports it and boots as always."""
    good = programs(tmp_path, app=marking(tmp_path, "app"))
    pmd = Pmd(tmp_path, good, pid1=True)
    if problem == "programs.json":  # the default copy boots instead
        (pmd.config_dir / "programs.default.json").write_text(
            json.dumps({"version": 1, "programs": good}))
        pmd.write_programs([{"name": "bad", "command": ""}])
    else:
        (pmd.config_dir / "programs.d").mkdir()
        (pmd.config_dir / "programs.d" / "more.json").write_text("{not json")
    with pmd:
        line = boot_line(pmd, 0)
        assert "none used" in line and "validated" not in line
        app = running(pmd, 1)
        assert [str(app["pid"])] == runs(tmp_path, "app")


def test_a_changed_configuration_is_not_started_from_an_old_plan(tmp_path: Path) -> None:
    with Pmd(tmp_path, programs(tmp_path, app=marking(tmp_path, "old")), pid1=True) as pmd:
        running(pmd, 1)
        assert (pmd.state_dir / "boot-plan.json").exists()
        pmd.write_programs(programs(tmp_path, app=marking(tmp_path, "new")))
        since = start_again(pmd)
        line = boot_line(pmd, since)
        assert "none used" in line and "is for another configuration" in line
        running(pmd, 1)
        assert len(runs(tmp_path, "old")) == 1 and len(runs(tmp_path, "new")) == 1
        # and the plan written now is the new configuration's: the next start uses it
        since = start_again(pmd)
        assert "1 of 1 programs started before pmd's imports" in boot_line(pmd, since)
        running(pmd, 1)
        assert len(runs(tmp_path, "old")) == 1 and len(runs(tmp_path, "new")) == 2


def test_the_environment_of_this_start_is_the_one_programs_get(tmp_path: Path) -> None:
    command = f"sh -c 'echo $${{GREETING}} >> {tmp_path}/greetings; exec sleep 60'"
    with Pmd(tmp_path, programs(tmp_path, app=command), pid1=True,
             env={"GREETING": "one"}) as pmd:
        running(pmd, 1)
        since = start_again(pmd, env={"GREETING": "two"})
        assert "1 of 1 programs started before pmd's imports" in boot_line(pmd, since)
        running(pmd, 1)
        assert (tmp_path / "greetings").read_text().split() == ["one", "two"]


@pytest.mark.parametrize("damage", ["not json", "wrong shape", "writable by others",
                                    "writable by its group"])
def test_a_damaged_plan_is_ignored(tmp_path: Path, damage: str) -> None:
    with Pmd(tmp_path, programs(tmp_path, app=marking(tmp_path, "app")), pid1=True) as pmd:
        running(pmd, 1)
        path = pmd.state_dir / "boot-plan.json"
        plan = json.loads(path.read_text())
        if damage == "not json":
            path.write_bytes(b'{"format": 1, "key": ')
        elif damage == "wrong shape":
            plan["programs"][0]["environment"] = ["A=1"]
            path.write_text(json.dumps(plan))
        elif damage == "writable by others":
            os.chmod(path, 0o646)
        else:  # and programs.json is not
            os.chmod(pmd.config_dir / "programs.json", 0o644)
            os.chmod(path, 0o664)
        since = start_again(pmd)
        line = boot_line(pmd, since)
        assert "none used" in line and f"{path} ignored" in line
        running(pmd, 1)
        assert len(runs(tmp_path, "app")) == 2


def test_a_plan_that_starts_a_program_differently_is_corrected(tmp_path: Path) -> None:
    """The plan's key holds, but its entry says something else than the configuration
    (as a plan of a pmd with other rules would): the supervisor kills what the plan
    started and starts the program as configured."""
    with Pmd(tmp_path, programs(tmp_path, app=marking(tmp_path, "right")), pid1=True) as pmd:
        running(pmd, 1)
        path = pmd.state_dir / "boot-plan.json"
        plan = json.loads(path.read_text())
        plan["programs"][0]["command"] = marking(tmp_path, "stale")
        path.write_text(json.dumps(plan))
        since = start_again(pmd)
        assert "0 of 1 programs started before pmd's imports" in boot_line(pmd, since)
        app = running(pmd, 1)
        assert str(app["pid"]) == runs(tmp_path, "right")[-1]
        assert len(runs(tmp_path, "right")) == 2
        stale = runs(tmp_path, "stale")
        assert len(stale) == 1
        stale_pid = stale[0]
        assert f"app: the boot plan's process (pid {stale_pid}) killed: it is configured " \
            "otherwise now" in pmd.stderr_text()[since:]
        pmd.uds.post(f"{API}/programs/1/stop")  # what is left runs in pmd's namespace
        out = subprocess.run(["cat", f"/proc/{pmd.pid}/task/{pmd.pid}/children"],
                             capture_output=True, text=True).stdout.split()
        assert out == []  # the stale run is gone (killed and reaped), the right one stopped


def test_write_boot_plan_serves_the_first_start(tmp_path: Path) -> None:
    """`pmd_init --write-boot-plan` at an image's build: a container's first start (a
    fresh state dir) uses the plan in the config dir."""
    pmd = Pmd(tmp_path, programs(tmp_path, app=marking(tmp_path, "app")), pid1=True)
    command = [a for a in pmd.argv() if a not in ("unshare", "--pid", "--fork",
                                                   "--mount-proc")]
    done = subprocess.run([*command, "--write-boot-plan"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "1 of 1 boot programs start before pmd's imports" in done.stdout
    assert not (pmd.state_dir / "programs.last-good.json").exists()  # nothing else
    with pmd:
        line = boot_line(pmd, 0)
        assert f"boot plan {pmd.config_dir / 'boot-plan.json'}: 1 of 1" in line
        running(pmd, 1)
        assert len(runs(tmp_path, "app")) == 1


def test_write_boot_plan_refuses_a_broken_configuration(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "programs.json").write_text('{"version": 1, "programs": [{"name": 3}]}')
    done = subprocess.run([sys.executable, "-m", "pmd_init", "--config-dir", str(config),
                           "--state-dir", str(tmp_path / "state"), "--write-boot-plan"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    assert "no boot plan written" in done.stderr
    assert not (config / "boot-plan.json").exists()


def test_pmd_boot_plan_0_neither_reads_nor_writes_one(tmp_path: Path) -> None:
    with Pmd(tmp_path, programs(tmp_path, app=marking(tmp_path, "app")), pid1=True) as pmd:
        running(pmd, 1)
        plan = pmd.state_dir / "boot-plan.json"
        written = plan.read_bytes()
        since = start_again(pmd, env={"PMD_BOOT_PLAN": "0"})
        running(pmd, 1)
        assert "INFO boot plan" not in pmd.stderr_text()[since:]
        assert plan.read_bytes() == written and len(runs(tmp_path, "app")) == 2
        pmd.write_programs(programs(tmp_path, app=marking(tmp_path, "app", "changed")))
        since = start_again(pmd, env={})  # PMD_BOOT_PLAN back to its default
        assert "none used" in boot_line(pmd, since)  # not this configuration's plan
        running(pmd, 1)
        assert plan.read_bytes() != written  # and the new configuration's is written


def test_the_plans_key_is_hashlibs_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pid1/early.py hashes with the interpreter's own SHA-256 module, not hashlib's
    # OpenSSL one (hashlib's import is off a plan's start): the same bytes, the same key
    import hashlib

    from pmd_init.pid1 import early
    from pmd_init.settings import parse_settings

    (tmp_path / "programs.json").write_text(json.dumps(
        {"version": 1, "programs": programs(tmp_path, a=marking(tmp_path, "a"))}))
    (tmp_path / "programs.d").mkdir()
    (tmp_path / "programs.d" / "b.json").write_bytes(bytes(range(256)) * 4096)
    settings = parse_settings(["--config-dir", str(tmp_path)])
    key = early.plan_key(settings, "")
    assert early.sha256 is not hashlib.sha256
    monkeypatch.setattr(early, "sha256", hashlib.sha256)
    assert early.plan_key(settings, "") == key
