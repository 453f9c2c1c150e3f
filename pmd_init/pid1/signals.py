"""Signal handlers only queue: each signal's C-level handler writes its number to a
socketpair (signal.set_wakeup_fd) and the loop reads the numbers and dispatches by name.
Nothing runs inside a handler, so there is no reentrancy to reason about.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable, Iterable

HANDLED = (
    signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT,
)


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
            self._previous[signum] = signal.signal(signum, _noop)
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
