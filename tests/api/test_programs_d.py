"""programs.d: drop-in files merged with programs.json, against a real pmd: at boot, on
HUP and across a re-exec, with their problems in health, and API changes written to the
file each program came from."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.helpers import API, program
from tests.harness import Pmd


def doc(*programs: dict[str, Any]) -> str:
    return json.dumps({"programs": list(programs)})


def names_in(path: Path) -> list[str]:
    return [p["name"] for p in json.loads(path.read_text())["programs"]]


def states(http: httpx.Client) -> dict[str, str]:
    return {s["name"]: s["status"]["status"]
            for s in http.get(f"{API}/status").json()["statuses"]}


def problem(http: httpx.Client) -> str:
    return str(http.get(f"{API}/health").json().get("config_problem") or "")


@pytest.fixture(scope="module")
def pmd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pmd]:
    base: Path = tmp_path_factory.mktemp("pmd")
    dropins = base / "config" / "programs.d"
    dropins.mkdir(parents=True)
    (dropins / "10-web.json").write_text(doc(
        {**program("web", depends_on=["base"]), "boot": True},
        {**program("base", "sleep 31"), "boot": True}))  # defined twice: left out
    (dropins / "20-broken.json").write_text("{not json")
    (dropins / "30-orphan.json").write_text(doc(
        {**program("orphan", depends_on={"nowhere": "running"}), "boot": True}))
    (dropins / "notes.txt").write_text("not a drop-in")
    with Pmd(base, [{**program("base"), "id": 1, "boot": True}]) as running:
        running.wait_for(lambda: states(running.http).get("web") == "RUNNING",
                         what="web running")
        yield running


def test_boot_merges_the_drop_ins_and_reports_what_it_left_out(pmd: Pmd) -> None:
    http = pmd.http
    assert states(http) == {"base": "RUNNING", "web": "RUNNING"}
    spec = {p["name"]: p for p in http.get(f"{API}/programs").json()["programs"]}
    assert spec["base"]["command"] == "sleep 30"  # programs.json's definition won
    assert spec["web"]["id"] not in (None, 1)
    found = problem(http)
    assert "20-broken.json left out" in found
    assert "10-web.json: program 'base' is already defined" in found
    assert "30-orphan.json" in found and "nowhere" in found
    assert "notes.txt" not in found


def test_api_changes_go_to_the_file_the_program_came_from(pmd: Pmd) -> None:
    http = pmd.http
    config = pmd.config_dir
    web_file = config / "programs.d" / "10-web.json"
    web_id = next(p["id"] for p in http.get(f"{API}/programs").json()["programs"]
                  if p["name"] == "web")
    edited = http.post(f"{API}/programs/edit/{web_id}", json={"description": "edited"})
    assert edited.status_code == 200, edited.text
    saved = json.loads(web_file.read_text())["programs"]
    assert [p["name"] for p in saved] == ["web"]
    assert saved[0]["description"] == "edited" and saved[0]["id"] == web_id
    assert names_in(config / "programs.json") == ["base"]

    added = http.post(f"{API}/programs/add", json=program("extra", boot=True))
    assert added.status_code == 200, added.text
    assert names_in(config / "programs.json") == ["base", "extra"]
    assert names_in(web_file) == ["web"]

    renamed = http.post(f"{API}/programs/edit/{web_id}", json={"name": "web2"})
    assert renamed.status_code == 200, renamed.text
    assert names_in(web_file) == ["web2"]
    assert names_in(config / "programs.json") == ["base", "extra"]

    removed = http.post(f"{API}/programs/remove/{web_id}")
    assert removed.status_code == 200, removed.text
    assert names_in(web_file) == []
    assert (config / "programs.d" / "20-broken.json").read_text() == "{not json"


def test_hup_reads_new_and_fixed_drop_ins(pmd: Pmd) -> None:
    http = pmd.http
    dropins = pmd.config_dir / "programs.d"
    (dropins / "20-broken.json").write_text(doc({**program("fixed"), "boot": True}))
    (dropins / "30-orphan.json").unlink()
    (dropins / "40-new.json").write_text(doc({**program("fresh"), "boot": True}))
    pmd.signal(signal.SIGHUP)
    pmd.wait_for(lambda: {"fixed", "fresh"} <= {n for n, s in states(http).items()
                                                if s == "RUNNING"}, what="new drop-ins")
    assert problem(http) == ""
    # a name defined twice on HUP: reported, never a crash-loop; the first one stays
    (dropins / "50-twice.json").write_text(doc({**program("fresh", "sleep 40")}))
    pmd.signal(signal.SIGHUP)
    pmd.wait_for(lambda: "50-twice.json" in problem(http), what="the duplicate reported")
    assert states(http)["fresh"] == "RUNNING"
    (dropins / "50-twice.json").unlink()


def test_after_a_reexec_edits_still_go_to_their_file(pmd: Pmd) -> None:
    http = pmd.http
    fresh_file = pmd.config_dir / "programs.d" / "40-new.json"
    assert http.post(f"{API}/reexec").json()["success"] is True
    pmd.wait_for(lambda: "re-executed:" in pmd.stderr_text(), what="the new pmd")
    pmd.wait_ready()
    fresh_id = next(p["id"] for p in http.get(f"{API}/programs").json()["programs"]
                    if p["name"] == "fresh")
    edited = http.post(f"{API}/programs/edit/{fresh_id}", json={"description": "after"})
    assert edited.status_code == 200, edited.text
    assert json.loads(fresh_file.read_text())["programs"][0]["description"] == "after"
    assert "fresh" not in names_in(pmd.config_dir / "programs.json")
