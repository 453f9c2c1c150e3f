"""Backoff with real processes and pmd as PID 1: an exponential schedule (1 s, 2 s, 4 s,
then FATAL after startretries) and `startretries: -1` (retried past the default three,
at a linear schedule capped by backoff_max_seconds, never FATAL). The gaps come from
pmd's own state timestamps (its /ws events: each BACKOFF to the next STARTING, and the
`retry_at` it announced) and from the programs' own start stamps, never from the times
this test polled."""

from __future__ import annotations

import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_dependencies_boot import API
from tests.api.test_policies import events
from tests.harness import Pmd, can_unshare

pytestmark = pytest.mark.skipif(not can_unshare(), reason="needs unshare --pid (root)")


def failing(stamps: Path, **fields: object) -> dict[str, object]:
    """A program that stamps its start and exits 1 before its startsecs: a failed start."""
    return {"name": stamps.stem, "boot": False, "startsecs": 0.5, "stop_timeout": 1,
            "command": f"sh -c 'date +%s.%N >> {stamps}; exit 1'", **fields}


def starts(stamps: Path) -> list[float]:
    try:
        return [float(line) for line in stamps.read_text().splitlines() if line]
    except FileNotFoundError:
        return []


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in pairwise(times)]


def backoff_then_start(moves: list[dict[str, Any]]) -> list[tuple[dict[str, Any], ...]]:
    """Each move into BACKOFF paired with the STARTING that ended it."""
    return [(move, after) for move, after in pairwise(moves)
            if move["to"] == "BACKOFF" and after["to"] == "STARTING"]


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def test_exponential_backoff_and_retrying_forever_follow_their_schedule(
        tmp_path: Path) -> None:
    base = tmp_path / "marks"
    base.mkdir()
    expo, forever = base / "expo.starts", base / "forever.starts"
    programs = [
        failing(expo, backoff="exponential", startretries=3),
        failing(forever, startretries=-1, backoff_max_seconds=2),
    ]
    with Pmd(tmp_path / "pmd", programs, pid1=True) as pmd, events(pmd) as seen:
        http = pmd.http
        ids = {p["name"]: p["id"] for p in http.get(f"{API}/programs").json()["programs"]}
        for name in ("expo", "forever"):  # started once /ws listens: every event is seen
            assert http.post(f"{API}/programs/{ids[name]}/start").status_code == 200
        fatal = pmd.wait_for(lambda: (s := http.get(f"{API}/status/{ids['expo']}")
                                      .json()["status"])["status"] == "FATAL" and s,
                             timeout=15, what="expo FATAL")
        assert fatal["exit_code"] == 1
        # the first run and three retries, 1 s, 2 s and 4 s apart
        expo_starts = starts(expo)
        assert len(expo_starts) == 4, expo_starts
        for gap, expected in zip(gaps(expo_starts), (1, 2, 4), strict=True):
            assert expected - 0.3 <= gap < expected + 1.5, gaps(expo_starts)
        # pmd's own clock: each BACKOFF announced its retry, and the next STARTING kept it
        waits = [(backoff["timestamp"], backoff["retry_at"], start["timestamp"])
                 for backoff, start in backoff_then_start(seen.of("expo"))]
        assert len(waits) == 3, seen.of("expo")
        for (entered, retry_at, started), expected in zip(waits, (1, 2, 4), strict=True):
            assert expected - 0.3 <= started - entered < expected + 1.5, waits
            # whole seconds; pmd reads its clock for retry_at just before the state's time
            assert retry_at in (iso(entered + expected), iso(entered + expected - 0.01)), waits
        # /ws is a connection of its own: the status can say FATAL before its event is read
        pmd.wait_for(lambda: seen.of("expo")[-1]["to"] == "FATAL", timeout=5,
                     what="expo's FATAL event, its last")
        # retried forever: past the default three retries by now, 1 s then 2 s (the cap)
        pmd.wait_for(lambda: len(starts(forever)) >= 5, timeout=10, what="5 starts")
        status = http.get(f"{API}/status/{ids['forever']}").json()["status"]
        assert status["status"] in ("BACKOFF", "STARTING"), status
        forever_gaps = gaps(starts(forever))
        for gap, expected in zip(forever_gaps, (1, 2, 2, 2, 2, 2, 2), strict=False):
            assert expected - 0.3 <= gap < expected + 1.5, forever_gaps
        waits = [start["timestamp"] - backoff["timestamp"]
                 for backoff, start in backoff_then_start(seen.of("forever"))]
        assert len(waits) >= 4, seen.of("forever")  # past the default three retries
        for gap, expected in zip(waits, (1, 2, 2, 2, 2, 2, 2), strict=False):
            assert expected - 0.3 <= gap < expected + 1.5, waits
        assert "FATAL" not in {m["to"] for m in seen.of("forever")}
        # the next attempt's time is in the status, on the same schedule
        backing = pmd.wait_for(lambda: (s := http.get(f"{API}/status/{ids['forever']}")
                                        .json()["status"])["status"] == "BACKOFF" and s,
                               what="forever in BACKOFF")
        assert backing["retry_at"] and backing["backoff_reason"] == "failed_start", backing
