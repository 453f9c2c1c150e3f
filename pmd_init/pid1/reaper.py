"""The one caller of waitpid in pmd.

On every SIGCHLD the loop calls `reap()`, which collects exit statuses until waitpid says
there are none left: one SIGCHLD may stand for many exits (signals coalesce), so a pass that
simply stopped early would leave zombies behind. A pass handles at most `BATCH` exits and
then continues in the next loop turn, so a storm of exits cannot keep requests, log pipes
and timers waiting. Each status goes to whoever watches that pid (an owner may restart
one program there, the loop turn's first start; the others wait for turns of their own in
the supervisor's queue of starts); a pid nobody
watches is an orphan that was reparented to us (we are PID 1 or a subreaper) and is counted.

Processes that are not our children (re-adopted after pmd was killed while running as a
subreaper) cannot be waited for; they are watched through a pidfd, which becomes readable
when they exit. Their exit code is unknown and reported as None.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

log = logging.getLogger("pmd.reaper")

#: Exits handled per loop turn before the rest wait for the next turn.
BATCH = 256

ExitCallback = Callable[[int | None], None]  # the raw wait status, or None when unknown


class Reaper:
    def __init__(self, loop: asyncio.AbstractEventLoop, *, warn_orphans: bool = False) -> None:
        self._loop = loop
        #: Log a warning for every orphan reaped (tini's -w).
        self.warn_orphans = warn_orphans
        self._owners: dict[int, ExitCallback] = {}
        self._pidfds: dict[int, int] = {}
        self.orphans_reaped = 0
        self.children_reaped = 0
        self._early: dict[int, int] = {}
        self._expected: set[int] = set()
        self._more: asyncio.Handle | None = None

    def watch(self, pid: int, on_exit: ExitCallback) -> None:
        """Route pid's exit to on_exit. If it was already reaped as an orphan in this very
        loop turn (adopted after re-exec, say), the status is delivered at once."""
        self._expected.discard(pid)
        status = self._early.pop(pid, None)
        if status is not None:
            self._loop.call_soon(on_exit, status)
            return
        self._owners[pid] = on_exit

    def unwatch(self, pid: int) -> None:
        self._owners.pop(pid, None)
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            self._loop.remove_reader(fd)
            os.close(fd)

    def watch_foreign(self, pid: int, on_exit: ExitCallback) -> bool:
        """Watch a process that is not our child. False if it is already gone."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        self._pidfds[pid] = fd
        self._owners[pid] = on_exit

        def exited() -> None:
            self._loop.remove_reader(fd)
            os.close(fd)
            self._pidfds.pop(pid, None)
            callback = self._owners.pop(pid, None)
            if callback is not None:
                callback(None)

        self._loop.add_reader(fd, exited)
        return True

    def keep_early(self, pids: set[int]) -> None:
        """Pids about to be adopted (after re-exec): a status reaped before `watch` is kept."""
        self._expected = set(pids)

    def reap(self) -> None:
        if self._more is not None:
            self._more.cancel()
            self._more = None
        for _ in range(BATCH):
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            owner = self._owners.pop(pid, None)
            if owner is None:
                if pid in self._expected:
                    self._early[pid] = status
                    continue
                self.orphans_reaped += 1
                if self.warn_orphans:
                    log.warning("Reaped zombie process with pid=%d (exit %d)", pid,
                                os.waitstatus_to_exitcode(status))
                continue
            self.children_reaped += 1
            try:
                owner(status)
            except Exception:
                log.exception("exit handler for pid %d failed", pid)
        # A full batch: there may be more, and no new SIGCHLD will say so.
        self._more = self._loop.call_soon(self.reap)

    @property
    def watched(self) -> int:
        return len(self._owners)
