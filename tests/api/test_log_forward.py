"""log_forward against a real pmd: the exact bytes each mode puts on pmd's own stdout and
stderr (what `docker logs` shows), with a program that already writes JSON in `raw`, a
line longer than pmd holds, and a last line without its newline at exit."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.helpers import API, assert_error, program
from tests.harness import Pmd

LONG = 200 * 1024  # over the 64 KiB a partial line is held for


#: name -> (what it runs in sh, its log_forward): scripts in files, no quoting games
SCRIPTS = {
    "pre": (r"printf 'a\nb\npartial-no-newline'", "prefixed"),
    "stamp": (r"printf 'x\n'", "timestamped"),
    "rawjson": (r"""printf '{"level":"info","msg":"hi"}\n{"level":"warn"}'""", "raw"),
    "js": (r"printf 'hello\n\377 bad\n'; printf 'err-line\n' >&2; printf 'tail'", "json"),
    "quiet": (r"printf 'secret-off\n'", "off"),
    "long": (f"head -c {LONG} /dev/zero | tr '\\0' L; printf '\\nafter\\n'", "raw"),
    "default": (r"printf 'by-default\n'", None),  # PMD_LOG_FORWARD=json below
}


@pytest.fixture(scope="module")
def pmd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pmd]:
    base: Path = tmp_path_factory.mktemp("pmd")
    programs = []
    for name, (script, mode) in SCRIPTS.items():
        (base / f"{name}.sh").write_text(script + "\n")
        spec = {**program(name, f"sh {base}/{name}.sh", startsecs=0, autorestart="false"),
                "boot": True}
        if mode is not None:
            spec["log_forward"] = mode
        programs.append(spec)
    with Pmd(base, programs, env={"PMD_LOG_FORWARD": "json"}) as running:
        running.wait_for(lambda: all(
            s["status"]["status"] == "EXITED"
            for s in running.http.get(f"{API}/status").json()["statuses"]),
            what="every program ran")
        running.wait_for(lambda: b"after\n" in running.stdout_path.read_bytes()
                         and b'"tail"' in running.stdout_path.read_bytes(),
                         what="the last lines forwarded")
        yield running


def out(pmd: Pmd) -> bytes:
    return pmd.stdout_path.read_bytes()


def test_prefixed_ends_a_last_partial_line(pmd: Pmd) -> None:
    lines = [line for line in out(pmd).split(b"\n") if line.startswith(b"[pre] ")]
    assert lines == [b"[pre] a", b"[pre] b", b"[pre] partial-no-newline"]


def test_timestamped_puts_an_rfc3339_time_before_the_prefix(pmd: Pmd) -> None:
    found = re.findall(rb"^(\S+) \[stamp\] x$", out(pmd), re.M)
    assert len(found) == 1
    assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", found[0])


def test_raw_leaves_a_json_writers_bytes_untouched(pmd: Pmd) -> None:
    lines = out(pmd).split(b"\n")
    # each a whole line of its own, as written (the last one, which had no newline, is
    # ended at exit; other programs' lines may come between the two, never inside one)
    for line in (b'{"level":"info","msg":"hi"}', b'{"level":"warn"}'):
        assert lines.count(line) == 1
        assert json.loads(line)


def test_raw_cuts_a_line_longer_than_it_holds_and_loses_nothing(pmd: Pmd) -> None:
    data = out(pmd)
    start = data.index(b"L" * 1024)
    end = data.index(b"after\n", start)
    lines = data[start:end].split(b"\n")
    assert lines[-1] == b""
    # Where the line is cut depends on the reads (whole when one read took it all): each
    # piece is a line of its own, so another program's whole line may come between two
    # pieces, never inside one.
    pieces = [line for line in lines[:-1] if line.startswith(b"L")]
    assert all(set(piece) == {ord("L")} for piece in pieces)
    assert b"".join(pieces) == b"L" * LONG  # every byte, in order, cut only by newlines
    others = [line for line in lines[:-1] if not line.startswith(b"L")]
    assert all(line and b"L" * 16 not in line for line in others)


def test_json_is_one_object_a_line_on_the_programs_stream(pmd: Pmd) -> None:
    objects = [json.loads(line) for line in out(pmd).split(b"\n")
               if line.startswith(b"{\"time\"")]
    mine = [o for o in objects if o["program"] == "js"]
    assert [o["line"] for o in mine] == ["hello", "\ufffd bad", "tail"]
    assert {(o["stream"], o["port"]) for o in mine} == {("stdout", None)}
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", o["time"])
               for o in mine)
    errors = [json.loads(line) for line in pmd.stderr_path.read_bytes().split(b"\n")
              if line.startswith(b"{\"time\"")]
    assert [(o["program"], o["stream"], o["line"]) for o in errors] == \
        [("js", "stderr", "err-line")]


def test_off_forwards_nothing_and_the_default_comes_from_pmd_log_forward(pmd: Pmd) -> None:
    data = out(pmd)
    assert b"secret-off" not in data
    assert b"secret-off" in (pmd.log_dir / "quiet" / "stdout.log").read_bytes()
    defaults = [json.loads(line) for line in data.split(b"\n")
                if line.startswith(b"{\"time\"") and b'"default"' in line]
    assert [o["line"] for o in defaults] == ["by-default"]


def test_the_field_is_checked_and_returned(pmd: Pmd) -> None:
    http = pmd.http
    bad = http.post(f"{API}/programs/add", json=program("x", log_forward="loud"))
    assert_error(bad, 400, "VALIDATION_ERROR", "log_forward")
    listed = {p["name"]: p for p in http.get(f"{API}/programs").json()["programs"]}
    assert listed["rawjson"]["log_forward"] == "raw"
    assert "log_forward" not in listed["default"]
    created = http.post("/api/processes", json={"name": "pm2-raw", "script": "true",
                                                "log_forward": "raw"})
    assert created.status_code == 201, created.text
    assert http.get("/api/processes/pm2-raw").json()["config"]["log_forward"] == "raw"
