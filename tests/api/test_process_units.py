"""The pieces of the process API that need no running pmd: request mapping, status names,
durations, log tails with offsets and capture times."""

from __future__ import annotations

import os

import pytest

from pmd_init.api import process_requests, process_views
from pmd_init.api.errors import ApiError
from pmd_init.api.process_views import pm2_status
from pmd_init.logs.times import CAPACITY, LineTimes
from pmd_init.model.states import ProgramState as S
from pmd_init.supervisor.errors import Invalid


def spec_of(**body):  # noqa: ANN003, ANN201
    return process_requests.CreateProcess.model_validate(body).to_spec()


def test_script_and_args_become_one_quoted_command():
    assert spec_of(name="a", script="node", args=["server.js"]).command == "node server.js"
    spec = spec_of(name="a", script="sh", args=["-c", "echo 'hi there'; sleep 1"])
    assert process_views.script_and_args(spec.command) == ("sh", ["-c", "echo 'hi there'; sleep 1"])
    assert spec_of(name="a", script="node server.js --x").command == "node server.js --x"


def test_ports_map_to_port_or_range():
    one = spec_of(name="a", script="x", port="3000")
    assert one.port_range is None and one.environment["PORT"] == "3000"
    assert process_views.port_text(one) == "3000"
    many = spec_of(name="a", script="x", port="4000-4003", instances=4)
    assert (many.port_range.start, many.port_range.end) == (4000, 4003)
    assert process_views.port_text(many) == "4000-4003" and "PORT" not in many.environment
    with pytest.raises(Invalid) as wrong:
        spec_of(name="a", script="x", port="4000-4003", instances=2)
    assert wrong.value.field == "instances"
    for bad in ("0", "70000", "5-3", "x-y", ""):
        with pytest.raises(ValueError):
            process_requests.parse_port(bad)


def test_memory_sizes():
    assert process_requests.parse_memory("512M") == 512 << 20
    assert process_requests.parse_memory("1G") == 1 << 30
    assert process_requests.parse_memory("300k") == 300 << 10
    assert process_requests.parse_memory(1234) == 1234
    for bad in ("lots", "12X", "M"):
        with pytest.raises(ValueError):
            process_requests.parse_memory(bad)


def test_another_user_needs_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    monkeypatch.setattr(process_requests, "current_user", lambda: "someone")
    with pytest.raises(ApiError) as denied:
        spec_of(name="a", script="x", user="root")
    assert denied.value.status == 403 and denied.value.code == "PERMISSION_DENIED"


def test_status_names():
    assert pm2_status(S.RUNNING) == "online"
    assert pm2_status(S.STARTING) == pm2_status(S.BACKOFF) == "launching"
    assert pm2_status(S.STOPPING) == "stopping"
    assert pm2_status(S.STOPPED) == pm2_status(S.EXITED, True) == "stopped"
    assert pm2_status(S.EXITED, False) == pm2_status(S.FATAL) == "errored"
    assert pm2_status(S.UNKNOWN) == "errored"


def test_durations():
    assert process_views.duration(0) == "0s"
    assert process_views.duration(8130) == "2h 15m 30s"
    assert process_views.duration(59) == "59s"
    assert process_views.duration(3 * 86400 + 5) == "3d 5s"
    assert process_views.duration(5 * 86400 + 12 * 3600 + 30 * 60 + 9, with_seconds=False) == \
        "5d 12h 30m"


def test_line_times():
    times = LineTimes(start=100)
    assert times.time_of(50) is None  # before pmd watched the file
    times.note(120, now=1000.2)
    times.note(130, now=1000.9)  # same second: the entry grows
    times.note(150, now=1002.0)
    assert times.time_of(110) == times.time_of(130) == 1000.2
    assert times.time_of(131) == times.time_of(150) == 1002.0
    assert times.end == 150
    for i in range(CAPACITY):
        times.note(200 + i, now=2000.0 + i)
    assert times.time_of(150) is None  # pushed out of the ring
    assert times.time_of(200 + CAPACITY - 1) == 2000.0 + CAPACITY - 1
    times.reset(0)
    assert times.time_of(10) is None and times.end == 0
