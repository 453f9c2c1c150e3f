"""Signal handlers only queue: each signal's C-level handler writes its number to a
socketpair (signal.set_wakeup_fd) and the loop reads the numbers and dispatches by name.
Nothing runs inside a handler, so there is no reentrancy to reason about.

pmd queues every signal it can catch: one left at its default action would kill pmd when
it is not PID 1 (ALRM, IO, PWR, ABRT...) and orphan its programs. Two kinds are waited
for by a thread of their own instead (sigwaitinfo), blocked in every other thread:
- the faults (SEGV, BUS, FPE, ILL, TRAP, SYS): a handler that only queues returns to the
  faulting instruction, so a real fault in pmd would spin instead of dumping core. A real
  fault is not affected by the block: the kernel delivers it to the faulting thread all
  the same, at its default action, and pmd dumps core; what reaches the waiting thread was
  sent by a process (`kill -SEGV`) and is passed on like the rest, as dumb-init does.
- PIPE, which the kernel raises on pmd whenever it writes to a socket or pipe whose reader
  has gone (an API client that hung up, a closed stdout). That one is aimed at the writing
  thread, stays pending there while blocked and is dropped when the spawn unblocks it (its
  disposition stays ignored, as Python sets it); a `kill -PIPE` from another process is
  aimed at pmd as a whole and reaches the waiting thread, which passes it on.
Children do not inherit the block: spawn lifts it around the fork. The one gap: a signal
of these that lands during a fork (a few microseconds a spawn) finds the spawning thread
unblocked: a fault signal then ends pmd, as it always did before, and a PIPE is dropped.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pid1/early.py imports this module before asyncio is
    import asyncio

from ..supervisor.spawn import WAITED

UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})
#: Python ignores these itself at start (subprocess's restore_signals resets them for
#: children), so whether pmd's caller ignored them cannot be known.
PYTHON_IGNORES = frozenset({signal.SIGPIPE, signal.SIGXFSZ})

HANDLED: tuple[int, ...] = tuple(sorted(
    int(s) for s in signal.valid_signals() - UNCATCHABLE - WAITED))


def reset_mask() -> frozenset[int]:
    """Unblock everything but what pmd's waiting thread takes: a mask inherited from the
    caller would hold back TERM (and would pass on to every child, which inherits pmd's
    mask). Returns the mask there was."""
    return frozenset(int(s) for s in signal.pthread_sigmask(signal.SIG_SETMASK, WAITED))


def block_waited() -> None:
    """Block what pmd's waiting thread takes, in the calling thread (and so in every
    thread it starts later)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)


def inherited_ignored() -> frozenset[int]:
    """Signals ignored by whoever started pmd (nohup ignores HUP); read before install()."""
    return frozenset(s for s in HANDLED if s not in PYTHON_IGNORES
                     and signal.getsignal(s) == signal.SIG_IGN)


def _noop(signum: int, frame: object) -> None:
    """The Python-level handler does nothing; the byte on the wakeup fd is the message."""


class SignalQueue:
    def __init__(self, loop: asyncio.AbstractEventLoop,
                 dispatch: Callable[[list[int]], None]) -> None:
        self._loop = loop
        self._dispatch = dispatch
        # Imported here, not with this module: pid1/entry.py imports this module before a
        # first start's first spawn, and socket (with selectors) is 2.4 ms of that path;
        # the queue is made once asyncio, which imports socket itself, is.
        import socket

        self._rsock, self._wsock = socket.socketpair()
        for sock in (self._rsock, self._wsock):
            sock.setblocking(False)
        self._wsock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self._previous: dict[int, object] = {}

    def install(self, signums: Iterable[int] = HANDLED) -> None:
        # A burst of SIGCHLD can fill the socket; the lost bytes are harmless (one reap
        # pass collects every exit) and must not print warnings on every signal.
        signal.set_wakeup_fd(self._wsock.fileno(), warn_on_full_buffer=False)
        for signum in signums:
            try:
                self._previous[signum] = signal.signal(signum, _noop)
            except (OSError, ValueError):  # reserved by the C library on some systems
                continue
            signal.siginterrupt(signum, False)
        self._loop.add_reader(self._rsock.fileno(), self._readable)

    def relay_waited(self) -> None:
        """Start the thread that waits for the faults and PIPE (blocked in every thread of
        pmd since reset_mask, so every thread started later inherits the block) and queues
        those another process sent."""
        # Started with every signal blocked: a signal pmd handles must never land in this
        # thread (during a re-exec the main thread blocks them to hold them for the next
        # image; one this thread took then would be lost).
        held = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            threading.Thread(target=self._wait, name="pmd-signals", daemon=True).start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def _wait(self) -> None:
        me = os.getpid()
        while True:
            info = signal.sigwaitinfo(WAITED)
            # Made by the kernel (si_code > 0), or by pmd on itself: this thread's own
            # write to a closed socket raises a PIPE "sent" by pmd. Neither is passed on.
            if info.si_code > 0 or info.si_pid == me:
                continue
            try:
                self._wsock.send(bytes([info.si_signo]))
            except OSError:
                pass  # the queue is full or gone (a re-exec under way): as for the C handler

    def _readable(self) -> None:
        try:
            data = self._rsock.recv(4096)
        except BlockingIOError:
            return
        if not data:
            return
        # Keep order but fold repeats: 3000 SIGCHLD bytes are one reap pass.
        seen: dict[int, None] = {}
        for signum in data:
            seen.setdefault(signum, None)
        self._dispatch(list(seen))

    def restore(self) -> None:
        self._loop.remove_reader(self._rsock.fileno())
        signal.set_wakeup_fd(-1)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
