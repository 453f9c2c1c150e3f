"""`${VAR}` references and `env_file`, against a real pmd: each program writes what it was
given (its argv, working directory and environment) to a file, and the test reads that
back, across boot, API adds and edits, restarts and a HUP reload."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.helpers import API, assert_error, program
from tests.harness import Pmd

#: pmd's environment: what references expand from.
ENV = {"ECO_GREETING": "hello", "ECO_DIR": "/tmp", "ECO_EMPTY": "", "ECO_USER": "root"}


def dump(out: Path) -> str:
    """A command that writes its args, cwd and environment as JSON to `out`, atomically."""
    script = (f"import json, os, sys; p = {str(out)!r}; "
              "open(p + '.tmp', 'w').write(json.dumps({'argv': sys.argv[1:], "
              "'cwd': os.getcwd(), 'env': dict(os.environ)})); os.replace(p + '.tmp', p); "
              "import time; time.sleep(60)")
    return f"python3 -c \"{script}\""


def seen(pmd: Pmd, out: Path, after: float = 0.0) -> dict[str, Any]:
    """What the program wrote, once a file newer than `after` is there."""
    def ready() -> dict[str, Any] | None:
        try:
            if out.stat().st_mtime <= after:
                return None
            loaded: dict[str, Any] = json.loads(out.read_text())
            return loaded
        except (FileNotFoundError, ValueError):
            return None
    found: dict[str, Any] = pmd.wait_for(ready, what=f"{out.name} written")
    return found


def status(http: httpx.Client, name: str) -> dict[str, Any]:
    for item in http.get(f"{API}/status").json()["statuses"]:
        if item["name"] == name:
            found: dict[str, Any] = item["status"]
            return found
    raise AssertionError(f"no status for {name}")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pmd")


@pytest.fixture(scope="module")
def pmd(base: Path) -> Iterator[Pmd]:
    env_file = base / "app.env"
    env_file.write_text(
        "# written by hand, as for docker compose\n"
        "export FROM_FILE=file-value\n"
        "QUOTED=\"two words # not a comment\"\n"
        "SINGLE='${ECO_GREETING} stays?'\n"
        "EXPANDED=${ECO_GREETING}-${FROM_FILE}\n"
        "OVERRIDDEN=from-file\n"
        "MULTI=\"line one\nline two\"\n"
        "EMPTY=\n")
    programs = [
        {**program("expand", dump(base / "expand.json") +
                   " '${ECO_GREETING}' '${ECO_UNSET:-fallback}' '${ECO_EMPTY:-was-empty}' "
                   "'${ECO_EMPTY-kept-empty}' '$$literal' '$HOME'",
                   directory="${ECO_DIR}", user="${ECO_USER}",
                   environment={"GREETING_TOO": "${ECO_GREETING}!", "OVERRIDDEN": "from-spec"},
                   env_file=str(env_file),
                   stdout_logfile=f"{base}/${{ECO_GREETING}}.out.log"), "id": 1, "boot": True},
        {**program("unset", "echo ${ECO_NOT_SET_ANYWHERE}", startretries=0), "id": 2,
         "boot": True},
        {**program("nofile", "sleep 30", env_file=f"{base}/missing.env", startretries=0),
         "id": 3, "boot": True},
    ]
    with Pmd(base, programs, env=ENV) as running:
        yield running


def test_references_expand_at_start(pmd: Pmd, base: Path) -> None:
    got = seen(pmd, base / "expand.json")
    assert got["argv"] == ["hello", "fallback", "was-empty", "", "$literal", "$HOME"]
    assert got["cwd"] == "/tmp"
    env = got["env"]
    assert env["GREETING_TOO"] == "hello!"
    assert env["FROM_FILE"] == "file-value"
    assert env["QUOTED"] == "two words # not a comment"
    assert env["EXPANDED"] == "hello-file-value"
    assert env["MULTI"] == "line one\nline two"
    assert env["EMPTY"] == ""
    assert env["OVERRIDDEN"] == "from-spec"  # environment wins over env_file
    # the log path expanded too: the program's stdout file is there
    assert (base / "hello.out.log").exists()


def test_the_api_returns_the_text_as_written_and_the_status_the_expansion(pmd: Pmd,
                                                                          base: Path) -> None:
    http = pmd.http
    spec = http.get(f"{API}/programs/1").json()["program"]
    assert spec["directory"] == "${ECO_DIR}"
    assert spec["user"] == "${ECO_USER}"
    assert spec["environment"]["GREETING_TOO"] == "${ECO_GREETING}!"
    assert spec["env_file"] == [str(base / "app.env")]
    expanded = status(http, "expand")["expanded"]
    assert expanded["directory"] == "/tmp"
    assert expanded["user"] == "root"
    assert expanded["stdout_logfile"] == f"{base}/hello.out.log"
    assert expanded["environment"] == {"GREETING_TOO": "hello!"}
    assert expanded["command"].endswith("'hello' 'fallback' 'was-empty' '' '$literal' '$HOME'")
    detail = http.get("/api/processes/expand").json()
    assert detail["config"]["env_file"] == [str(base / "app.env")]


def test_an_unset_variable_is_an_error_for_that_program_only(pmd: Pmd) -> None:
    http = pmd.http
    failed = pmd.wait_for(lambda: (lambda s: s if s["status"] == "FATAL" else None)(
        status(http, "unset")), what="unset FATAL")
    assert "ECO_NOT_SET_ANYWHERE" in failed["spawn_error"]
    assert "command" in failed["spawn_error"]
    missing = pmd.wait_for(lambda: (lambda s: s if s["status"] == "FATAL" else None)(
        status(http, "nofile")), what="nofile FATAL")
    assert "missing.env" in missing["spawn_error"] and "does not exist" in \
        missing["spawn_error"]
    assert status(http, "expand")["status"] == "RUNNING"


def test_env_file_is_read_again_at_each_start(pmd: Pmd, base: Path) -> None:
    out = base / "expand.json"
    before = seen(pmd, out)
    assert before["env"]["FROM_FILE"] == "file-value"
    mtime = out.stat().st_mtime
    env_file = base / "app.env"
    env_file.write_text(env_file.read_text().replace("file-value", "edited-value"))
    response = pmd.http.post(f"{API}/programs/1/restart", json={"wait": True})
    assert response.status_code == 200, response.text
    after = seen(pmd, out, after=mtime)
    assert after["env"]["FROM_FILE"] == "edited-value"
    assert after["env"]["EXPANDED"] == "hello-edited-value"


def test_a_broken_env_file_names_its_line(pmd: Pmd, base: Path) -> None:
    broken = base / "broken.env"
    broken.write_text("GOOD=1\nthis is not an assignment\n")
    http = pmd.http
    response = http.post(f"{API}/programs/add", json=program(
        "broken", "sleep 30", env_file=str(broken), startretries=0))
    assert response.status_code == 200, response.text
    http.post(f"{API}/programs/{response.json()['program']['id']}/start", json={})
    failed = pmd.wait_for(lambda: (lambda s: s if s["status"] == "FATAL" else None)(
        status(http, "broken")), what="broken FATAL")
    assert f"{broken}, line 2" in failed["spawn_error"]
    fifo = base / "fifo.env"
    os.mkfifo(fifo)
    edited = http.post(f"{API}/programs/edit/{response.json()['program']['id']}",
                       json={"env_file": str(fifo)})
    assert edited.status_code == 200, edited.text
    http.post(f"{API}/programs/{response.json()['program']['id']}/start", json={})
    failed = pmd.wait_for(lambda: (lambda s: s if s["status"] == "FATAL" and "fifo" in
                                   s.get("spawn_error", "") else None)(
        status(http, "broken")), what="the FIFO refused")
    assert "not a regular file" in failed["spawn_error"]
    assert http.get(f"{API}/health").status_code == 200  # the loop was never blocked


@pytest.mark.parametrize(("field", "value"), [
    ("command", "echo ${1ABC}"),
    ("command", "echo ${UNCLOSED"),
    ("directory", "relative/${ECO_DIR}"),
    ("user", "${ECO_USER"),
    ("environment", {"A": "${ECO_GREETING:-${NESTED}}"}),
    ("env_file", "relative.env"),
    ("env_file", ["/a.env", "/a.env"]),
])
def test_bad_references_are_refused_and_change_nothing(pmd: Pmd, field: str,
                                                       value: object) -> None:
    http = pmd.http
    before = http.get(f"{API}/programs").json()
    response = http.post(f"{API}/programs/add", json=program("bad", **{field: value}))
    assert_error(response, 400, "VALIDATION_ERROR", field)
    edit = http.post(f"{API}/programs/edit/1", json={field: value})
    assert_error(edit, 400, "VALIDATION_ERROR", field)
    assert http.get(f"{API}/programs").json() == before


def test_a_log_path_given_through_the_api_must_expand_inside_the_log_roots(
        pmd: Pmd, base: Path) -> None:
    http = pmd.http
    outside = http.post(f"{API}/programs/add", json=program(
        "outside", stdout_logfile="${ECO_DIR}/escape.log"))
    assert_error(outside, 400, "VALIDATION_ERROR", "stdout_logfile")
    unset = http.post(f"{API}/programs/add", json=program(
        "unsetlog", stdout_logfile="${ECO_NOT_SET_ANYWHERE}/x.log"))
    assert_error(unset, 400, "VALIDATION_ERROR", "stdout_logfile")
    assert "ECO_NOT_SET_ANYWHERE" in unset.json()["error"]["message"]


def test_pm2_create_takes_env_file(pmd: Pmd, base: Path) -> None:
    env_file = base / "pm2.env"
    env_file.write_text("PM2_FROM_FILE=yes\n")
    out = base / "pm2.json"
    response = pmd.http.post("/api/processes", json={
        "name": "pm2-env", "script": "python3", "args": ["-c", dump(out).split('"')[1]],
        "env_file": str(env_file), "env": {"FROM_ENV": "${ECO_GREETING}"}})
    assert response.status_code in (200, 201), response.text
    got = seen(pmd, out)
    assert got["env"]["PM2_FROM_FILE"] == "yes"
    assert got["env"]["FROM_ENV"] == "hello"


def test_hup_reload_reads_the_new_references(pmd: Pmd, base: Path) -> None:
    out = base / "expand.json"
    mtime = seen(pmd, out)
    stamp = out.stat().st_mtime
    assert mtime
    config = pmd.config_dir / "programs.json"
    data = json.loads(config.read_text())
    for spec in data["programs"]:
        if spec["name"] == "expand":
            spec["environment"]["ADDED"] = "${ECO_UNSET:-added-on-hup}"
    config.write_text(json.dumps(data))
    pmd.signal(signal.SIGHUP)
    got = seen(pmd, out, after=stamp)
    assert got["env"]["ADDED"] == "added-on-hup"
    assert pmd.http.get(f"{API}/programs/1").json()["program"]["environment"]["ADDED"] == \
        "${ECO_UNSET:-added-on-hup}"
