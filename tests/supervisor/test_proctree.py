"""The process sampler's rule, with real processes: a program's processes are its process
group, the one every stop signal goes to."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from pmd_init.supervisor.proctree import ProcessSampler, read_stat

# A program as pmd starts one (the leader of a new session and group) whose children take
# every way out of, or stay in, its group.
FAMILY = r"""
import json, os, sys, time

def child(setup):
    # the parent waits until the child has left (or kept) its group: the pids it prints
    # must describe groups as they are, not as they will be a moment later
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        setup()
        os.write(done_w, b"x")
        time.sleep(60)
        os._exit(0)
    os.read(done_r, 1)
    return pid

same_group = child(lambda: None)
new_session = child(os.setsid)
own_group = child(lambda: os.setpgid(0, 0))
# a daemon: fork twice and let the middle one exit; the grandchild is re-parented
read, write = os.pipe()
middle = os.fork()
if middle == 0:
    grandchild = os.fork()
    if grandchild == 0:
        time.sleep(60)
        os._exit(0)
    os.write(write, str(grandchild).encode())
    os._exit(0)
os.waitpid(middle, 0)
daemon = int(os.read(read, 32))
print(json.dumps({"same_group": same_group, "new_session": new_session,
                  "own_group": own_group, "daemon": daemon}), flush=True)
time.sleep(60)
"""


@pytest.fixture
def family() -> Iterator[tuple[int, dict[str, int]]]:
    proc = subprocess.Popen([sys.executable, "-c", FAMILY], stdout=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdout is not None
    pids: dict[str, int] = json.loads(proc.stdout.readline())
    try:
        yield proc.pid, pids
    finally:
        # the group takes the leader, the same-group child and the daemon; the two that
        # left it are signalled by pid
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in (pids["new_session"], pids["own_group"]):
            os.kill(pid, signal.SIGKILL)
        proc.wait()
        for pid in (pids["same_group"], pids["new_session"], pids["own_group"]):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass  # not ours to wait for: they are the leader's children


def test_a_program_is_its_process_group(family):
    leader, pids = family
    group = ProcessSampler().group(leader)
    assert group is not None
    counted = {p.pid for p in group.processes}
    # the child that stayed, and the daemon re-parented away from the program, count;
    # the children that started a new session or a group of their own do not
    assert counted == {leader, pids["same_group"], pids["daemon"]}
    assert [p.pid for p in group.processes] == sorted(counted)
    assert all(p.rss > 0 for p in group.processes)
    assert group.rss == sum(p.rss for p in group.processes)
    assert all(p.name.startswith("python") for p in group.processes)


def test_usage_and_rss_agree_with_the_group(family):
    leader, _ = family
    sampler = ProcessSampler()
    group = sampler.group(leader)
    assert group is not None
    cpu, rss = sampler.usage(leader)
    assert rss == group.rss == sampler.rss(leader)
    assert cpu >= 0.0
    totals = sampler.totals(leader)  # what GET /metrics shows
    assert totals is not None and totals[1] == rss and totals[0] >= 0.0


def test_a_gone_group_has_no_usage():
    proc = subprocess.Popen(["true"], start_new_session=True)
    proc.wait()
    sampler = ProcessSampler()
    assert sampler.group(proc.pid) is None
    assert sampler.rss(proc.pid) is None
    assert sampler.usage(proc.pid) == (0.0, 0)
    assert sampler.totals(proc.pid) is None


def test_a_program_started_after_the_scan_is_still_seen():
    sampler = ProcessSampler(fresh=60.0)
    sampler.rss(os.getpid())  # a scan that the next program is not in
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        while (stat := read_stat(proc.pid)) is None or stat.name != "sleep":
            assert time.monotonic() < deadline, "sleep did not exec"
            time.sleep(0.01)
        group = sampler.group(proc.pid)
        assert group is not None and [p.pid for p in group.processes] == [proc.pid]
        assert group.processes[0].name == "sleep"
    finally:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` from /proc, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_cpu_percent_measures_the_interval_between_scans():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            start_new_session=True)
    idle = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        sampler = ProcessSampler(fresh=0.0)
        time.sleep(0.3)
        # what the kernel charged the busy loop around the sampler's two scans: on a
        # shared machine it may get far less than a core, and the sampler must say so
        before, t0 = cpu_seconds(busy.pid), time.monotonic()
        sampler.usage(busy.pid)
        time.sleep(1.0)
        busy_cpu, _ = sampler.usage(busy.pid)
        after, t1 = cpu_seconds(busy.pid), time.monotonic()
        idle_cpu, _ = sampler.usage(idle.pid)
        charged = 100.0 * (after - before) / (t1 - t0)
        assert charged > 2.0, "the busy loop got no cpu at all"
        assert abs(busy_cpu - charged) < max(5.0, 0.25 * charged), (busy_cpu, charged)
        assert idle_cpu < 5.0
    finally:
        for proc in (busy, idle):
            proc.kill()
            proc.wait()


def test_system_cpu_is_a_percent():
    sampler = ProcessSampler(fresh=0.0)
    first = sampler.system_cpu()
    time.sleep(0.1)
    assert 0.0 <= first <= 100.0 and 0.0 <= sampler.system_cpu() <= 100.0
