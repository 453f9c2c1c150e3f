"""Signal handlers only queue: each signal's C-level handler writes its number to a
socketpair (signal.set_wakeup_fd) and the loop reads the numbers and dispatches by name.
Nothing runs inside a handler, so there is no reentrancy to reason about.

pmd queues every signal it can catch: one left at its default action would kill pmd when
it is not PID 1 (ALRM, IO, PWR, ABRT...) and orphan its programs. The exceptions:
- the faults (SEGV, BUS, FPE, ILL, TRAP, SYS): a handler that only queues returns to the
  faulting instruction, so a real fault in pmd would spin instead of dumping core;
- PIPE, which pmd raises on itself whenever it writes to a socket or pipe whose reader has
  gone (an API client that hung up, a closed stdout). Python cannot tell those from a
  `kill -PIPE`, so PIPE stays ignored, as Python sets it, and is not passed on.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable, Iterable

FAULTS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL,
                    signal.SIGTRAP, signal.SIGSYS})
UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})
#: Python ignores these itself at start (subprocess's restore_signals resets them for
#: children), so whether pmd's caller ignored them cannot be known.
PYTHON_IGNORES = frozenset({signal.SIGPIPE, signal.SIGXFSZ})

HANDLED: tuple[int, ...] = tuple(sorted(
    int(s) for s in signal.valid_signals() - UNCATCHABLE - FAULTS - {signal.SIGPIPE}))


def reset_mask() -> frozenset[int]:
    """Unblock everything: a mask inherited from the caller would hold back TERM (and
    would pass on to every child, which inherits pmd's mask). Returns that mask."""
    return frozenset(int(s) for s in signal.pthread_sigmask(signal.SIG_SETMASK, []))


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
