"""pmd blocks the fault signals and PIPE in its threads and lets one thread wait for them
(pid1/signals.py). What that rests on, checked in a real process with pmd's own mask
and waiting thread: a real fault still ends the process at once with its default action
(it must never spin on the faulting instruction), a `kill -SEGV` from another process
is queued instead, and a PIPE the process raises on itself by writing to a closed pipe is
not passed on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.harness import ROOT

#: A process set up as pmd sets itself up: the mask, a loop and the signal queue with its
#: waiting thread. It prints each signal the queue hands over, one a line, then runs BODY.
SETUP = """
import asyncio, ctypes, os, signal, sys
from pmd_init.pid1 import signals
signals.reset_mask()
async def main():
    queue = signals.SignalQueue(asyncio.get_running_loop(),
                                lambda nums: print(*nums, flush=True))
    queue.install()
    queue.relay_waited()
    print("ready", flush=True)
BODY
asyncio.run(main())
"""


def run(body: str, *, send: list[int] = ()) -> tuple[int, list[str]]:
    code = SETUP.replace("BODY", "\n".join("    " + line for line in body.splitlines()))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    lines = []
    for signum in send:
        proc.send_signal(signum)
        lines.append(proc.stdout.readline().strip())
    if send:
        proc.kill()
    rest = proc.stdout.read()  # not communicate(): readline's buffer would be lost
    return proc.wait(timeout=20), lines + rest.split()


def test_a_real_fault_still_ends_the_process_with_its_default_action():
    # reading address 0 is a SEGV made by the kernel, in the main thread, which has SEGV
    # blocked: it must end the process, not be queued or spin
    code, printed = run("ctypes.string_at(0)\nawait asyncio.sleep(1)")
    assert code == -signal.SIGSEGV
    assert printed == []


def test_fault_signals_and_pipe_sent_by_another_process_are_queued():
    sent = [signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP,
            signal.SIGSYS, signal.SIGPIPE]
    code, printed = run("await asyncio.sleep(60)", send=sent)
    assert printed == [str(int(s)) for s in sent]
    assert code == -signal.SIGKILL  # it lived through them all until killed


def test_a_pipe_raised_by_writing_to_a_closed_pipe_is_not_queued():
    # the write fails with EPIPE, as Python expects with PIPE ignored; the kernel's PIPE
    # is not passed on, from the loop's thread or from another
    code, printed = run(
        "def write():\n"
        "    r, w = os.pipe()\n"
        "    os.close(r)\n"
        "    try:\n"
        "        os.write(w, b'x')\n"
        "    except BrokenPipeError:\n"
        "        print('EPIPE', flush=True)\n"
        "write()\n"
        "await asyncio.to_thread(write)\n"
        "await asyncio.sleep(0.5)")
    assert code == 0
    assert printed == ["EPIPE", "EPIPE"]
