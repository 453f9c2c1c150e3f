"""Inputs that once got a 500 or were accepted and failed later: each now gets a clear 400
(or 404) that names the field, and changes nothing."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import pytest

from pmd_init.logs import tail as tail_module
from pmd_init.logs.tail import last_lines
from tests.api.helpers import API, assert_error, program
from tests.harness import Pmd


@pytest.fixture(scope="module")
def pmd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pmd]:
    base: Path = tmp_path_factory.mktemp("robust-inputs")
    with Pmd(base, [program("keep")], args=["--rate-limit", "0", "--rate-burst", "0"]) as running:
        yield running


def programs_of(pmd: Pmd) -> tuple[object, str]:
    return (pmd.http.get(f"{API}/programs").json(),
            (pmd.config_dir / "programs.json").read_text())


@pytest.mark.parametrize("ident", ["%C2%B2", "\u00b2", "9" * 5000])
def test_process_id_that_is_a_digit_but_not_a_number(pmd, ident):
    # "²".isdigit() is true and int("²") raises; so does int() of 5000 digits: both were 500s.
    for method, path in [("GET", ""), ("GET", "/logs"), ("POST", "/stop"),
                         ("POST", "/restart"), ("DELETE", "")]:
        r = pmd.http.request(method, f"/api/processes/{ident}{path}")
        assert_error(r, 404, "PROCESS_NOT_FOUND")


def test_process_memory_limit_too_large_for_programs_json(pmd):
    before = programs_of(pmd)
    # 10**23 GB does not fit the 64-bit integers of programs.json: it was a 500 TypeError.
    for memory in ["99999999999999999999999G", "9" * 30, 2**61]:
        r = pmd.http.post("/api/processes", json={"name": "big", "script": "sleep 5",
                                                   "max_memory_restart": memory})
        assert_error(r, 400, "INVALID_CONFIGURATION", "max_memory_restart")
    r = pmd.http.post(f"{API}/programs/add", json=program("big", max_memory_restart=2**61))
    assert_error(r, 400, "VALIDATION_ERROR", "max_memory_restart")
    assert programs_of(pmd) == before


@pytest.mark.parametrize("field,value", [("port", "\u0663\u0660\u0660\u0660"),
                                         ("port", "3000-"), ("port", "1_000"),
                                         ("max_memory_restart", "\u0663G")])
def test_process_numbers_are_ascii_digits(pmd, field, value):
    before = programs_of(pmd)
    r = pmd.http.post("/api/processes", json={"name": "digits", "script": "sleep 5",
                                               field: value})
    assert_error(r, 400, "INVALID_CONFIGURATION", field)
    assert programs_of(pmd) == before


@pytest.mark.parametrize("fields,field", [
    ({"display": ":0\x00"}, "display"),
    ({"port_param": "--port\x00", "port_range": {"start": 9100, "end": 9101}}, "port_param"),
    ({"health_check": {"type": "script", "command": "true\x00"}}, "health_check.command"),
    ({"health_check": {"type": "tcp", "host": "local\nhost", "port": 1}},
     "health_check.host"),
    ({"health_check": {"type": "http", "url": "not-a-url"}}, "health_check.url"),
    ({"health_check": {"type": "http", "url": "ftp://example.com/"}}, "health_check.url"),
    ({"name": " "}, "name"),
    ({"name": "a\x85b"}, "name"),
    ({"name": "a\u2028b"}, "name"),
])
def test_text_that_would_fail_at_spawn_is_refused_up_front(pmd, fields, field):
    # These were accepted, then every start failed ("embedded null byte") or every probe.
    before = programs_of(pmd)
    r = pmd.http.post(f"{API}/programs/add", json={**program("textual"), **fields})
    assert_error(r, 400, "VALIDATION_ERROR", field)
    keep = before[0]["programs"][0]["id"]  # type: ignore[index]
    edit = {k: v for k, v in fields.items() if k != "name"} or fields
    r = pmd.http.post(f"{API}/programs/edit/{keep}", json=edit)
    assert r.status_code == 400 and r.json()["error"]["field"] == field, r.text
    assert programs_of(pmd) == before


def test_health_url_with_a_port_placeholder_is_still_accepted(pmd):
    r = pmd.http.post(f"{API}/programs/add", json=program(
        "placeholder", health_check={"type": "http", "url": "http://127.0.0.1:{port}/ok"}))
    assert r.status_code == 200, r.text
    assert pmd.http.post(f"{API}/programs/remove/{r.json()['id']}").status_code == 200


def test_stream_start_finds_the_last_lines_without_a_byte_loop(tmp_path):
    # 32 MB of 200 kB lines: the search for where the last 10000 lines begin went byte by
    # byte in Python and held the event loop for seconds per stream.
    path = tmp_path / "long.log"
    line = b"x" * 200_000 + b"\n"
    with open(path, "wb") as f:
        for _ in range(160):
            f.write(line)
    with lines_run_in(tail_module.__file__) as run:
        assert last_lines(path, 10000)[0].start == 0
        assert last_lines(path, 2)[0].start == len(line) * 158
        assert last_lines(path, 1)[0].start == len(line) * 159
    # Counted, not timed: a loop over the 32 MB byte by byte runs tens of millions of
    # Python lines; block reads and C-level searches run a few thousand.
    assert run.lines < 50_000, run.lines


class _LineCount:
    lines = 0


@contextmanager
def lines_run_in(filename: str) -> Iterator[_LineCount]:
    """How many Python lines of one module run inside the block (sys.settrace)."""
    counted = _LineCount()

    def local(frame: FrameType, event: str, arg: object) -> object:
        if event == "line":
            counted.lines += 1
        return local

    def calls(frame: FrameType, event: str, arg: object) -> object:
        return local if frame.f_code.co_filename == filename else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        yield counted
    finally:
        sys.settrace(previous)
