"""A crash loop's restarts write into the same pipes: a real pmd restarts a program at once
after each exit, the run's unfinished last line is ended at its exit (forwarded as a line
of its own, shipped as one), each run's output comes before the next run's, in the log
file too, and the restarts after the first run are handed the pipes the ended run had.
An exit not followed by a restart at once (the start-rate limit) lets go of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.helpers import API, program
from tests.harness import Pmd

BURST = 4  # starts within the start-rate window: then BACKOFF (start_limit)


@pytest.fixture(scope="module")
def looped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pmd, Path]]:
    base: Path = tmp_path_factory.mktemp("pmd")
    marks = base / "marks"
    marks.mkdir()
    (base / "loop.sh").write_text(
        f"echo $$ >> {marks}/pids\n"
        "out=$(readlink /proc/$$/fd/1); err=$(readlink /proc/$$/fd/2)\n"
        f"echo \"$out\" >> {marks}/stdout; echo \"$err\" >> {marks}/stderr\n"
        "printf 'out-%s\\npartial-%s' $$ $$\n"
        "printf 'err-%s' $$ >&2\n"
        "exit 1\n")
    spec = program("loop", f"sh {base}/loop.sh", id=1, startsecs=0, autorestart="true",
                   start_limit_burst=BURST, start_limit_interval=60, boot=False)
    with Pmd(base, [spec]) as running:
        assert running.uds.post(f"{API}/programs/1/start").status_code == 200
        def held() -> bool:
            status = running.uds.get(f"{API}/status/1").json()["status"]
            return status["status"] == "BACKOFF" and status["backoff_reason"] == "start_limit"
        running.wait_for(held, 15, what="the start-rate limit")
        pids = (marks / "pids").read_text().split()
        assert len(pids) == BURST
        running.wait_for(lambda: f"[loop] partial-{pids[-1]}\n".encode()
                         in running.stdout_path.read_bytes()
                         and f"[loop] err-{pids[-1]}\n".encode()
                         in running.stderr_path.read_bytes(), what="the last run's lines")
        yield running, marks


def test_each_runs_last_line_is_ended_at_its_exit_in_order(
        looped: tuple[Pmd, Path]) -> None:
    pmd, marks = looped
    pids = (marks / "pids").read_text().split()
    out = [line for line in pmd.stdout_path.read_bytes().decode().splitlines()
           if line.startswith("[loop] ")]
    err = [line for line in pmd.stderr_path.read_bytes().decode().splitlines()
           if line.startswith("[loop] ")]
    assert out == [line for pid in pids for line in (f"[loop] out-{pid}",
                                                      f"[loop] partial-{pid}")]
    assert err == [f"[loop] err-{pid}" for pid in pids]
    logged = (pmd.log_dir / "loop" / "stdout.log").read_text()
    assert logged == "".join(f"out-{pid}\npartial-{pid}" for pid in pids)  # as written
    assert (pmd.log_dir / "loop" / "stderr.log").read_text() == \
        "".join(f"err-{pid}" for pid in pids)


def test_restarts_at_once_write_into_the_pipes_the_ended_run_had(
        looped: tuple[Pmd, Path]) -> None:
    _, marks = looped
    for stream in ("stdout", "stderr"):
        pipes = (marks / stream).read_text().split()
        assert len(pipes) == BURST and all(p.startswith("pipe:[") for p in pipes)
        assert len(set(pipes)) == 1, pipes  # each restart got the pipes of the run before


def test_an_exit_without_a_restart_at_once_lets_go_of_the_pipes(
        looped: tuple[Pmd, Path]) -> None:
    pmd, marks = looped
    pipes = set((marks / "stdout").read_text().split())
    pmd.wait_for(lambda: not pipes & set(_pipes_held(pmd)), 5, what="the pipes let go")


def _pipes_held(pmd: Pmd) -> list[str]:
    """What pmd's open files are (pipe:[inode] for a pipe)."""
    held = []
    for fd in Path(f"/proc/{pmd.pid}/fd").iterdir():
        try:
            held.append(fd.readlink().as_posix())
        except OSError:
            continue
    return held
