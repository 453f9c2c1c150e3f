"""The main command (`pmd_init -- CMD ARGS`): what tini and dumb-init do for their child.

It runs in a process group of its own, in pmd's session and working directory, with the
terminal when there is one. Every signal pmd receives is passed on to that group (or to
the command alone with `--single-child`), through the rewrite table. When the command
exits, what it left behind in its group gets TERM, so a shell's background jobs do not
outlive it.

Signal dispositions: the main command starts with the signals that pmd's caller ignored
still ignored (what `nohup` users expect, and what tini does), every other signal at its
default action, and an empty signal mask (dumb-init's way), or under pmd-tini the mask
pmd's caller gave pmd (tini's way). Programs of programs.json get defaults for every
signal: they are services, and a stop signal they cannot see would make them unstoppable.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterable

from ..supervisor.spawn import SpawnRequest, spawn

log = logging.getLogger("pmd")

#: The job-control signals after which pmd stops itself too, as dumb-init does: the
#: shell above pmd sees its job stop, and its `fg` (a CONT, passed on) resumes both.
JOB_CONTROL = frozenset({signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})


def _prepare_child(ignored: frozenset[int], mask: frozenset[int]) -> Callable[[], None]:
    """What runs in the child between fork and exec."""

    def prepare() -> None:
        # A signal arriving now runs pmd's C handler, which would write to pmd's queue.
        signal.set_wakeup_fd(-1)
        _take_terminal(ignored)
        for signum in ignored:
            signal.signal(signum, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    return prepare


def _take_terminal(ignored: frozenset[int]) -> None:
    """Make this new process group the terminal's foreground, before exec.

    Done in the child, as tini does: from the parent after the spawn it races with an
    interactive shell that checks at start whether it is in the foreground, finds it is
    not and stops itself with SIGTTIN (10 hangs in 30 tries, measured). A background group
    asking for the foreground gets SIGTTOU, so TTOU is ignored around the call.
    """
    try:
        if not os.isatty(0):
            return
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            os.tcsetpgrp(0, os.getpgrp())
        finally:
            signal.signal(signal.SIGTTOU, signal.SIG_IGN if signal.SIGTTOU in ignored
                          else signal.SIG_DFL)
    except OSError:
        pass  # no terminal, or not ours to give: the command runs without it


class MainCommand:
    """One main command: spawn it, pass signals on, TERM its group when it is done."""

    def __init__(self, argv: list[str], env: dict[str, str], *, single_child: bool,
                 rewrite: dict[int, int], job_control: bool,
                 ignored: Iterable[int] = (), mask: Iterable[int] = ()) -> None:
        self.argv = argv
        self.env = env
        self.single_child = single_child
        self.rewrite = rewrite
        self.job_control = job_control
        self.ignored = frozenset(ignored)
        self.mask = frozenset(mask)
        self.pid: int | None = None

    def spawn(self) -> int:
        """Start it; raises SpawnError when it cannot run (127 missing, 126 otherwise)."""
        popen = spawn(SpawnRequest(argv=self.argv, env=self.env, stdin_devnull=False,
                                   new_session=False,
                                   preexec=_prepare_child(self.ignored, self.mask)))
        self._popen = popen  # kept until the reaper has its status
        self.pid = popen.pid
        return popen.pid

    def adopt(self, pid: int) -> None:
        """After a re-exec: the command is still running with this pid."""
        self.pid = pid

    def exited(self) -> None:
        """The command is gone: TERM (through the rewrite table) to what is left of its
        group, as dumb-init does in its default mode; nothing in single-child mode."""
        pid, self.pid = self.pid, None
        if pid is None or self.single_child:
            return
        target = self.rewrite.get(signal.SIGTERM, signal.SIGTERM)
        if target:
            _send(pid, target, group=True)

    def forward(self, signum: int) -> None:
        """Pass a received signal on; after a job-control signal pmd stops itself too,
        unless it is PID 1 (the kernel does not stop a namespace's init)."""
        if self.pid is not None:
            target = self.rewrite.get(signum, signum)
            if target:
                _send(self.pid, target, group=not self.single_child)
                log.debug("signal %s passed on as %s", _name(signum), _name(target))
            else:
                log.debug("signal %s dropped (rewritten to 0)", _name(signum))
        if self.job_control and signum in JOB_CONTROL and os.getpid() != 1:
            os.kill(os.getpid(), signal.SIGSTOP)

    def kill(self) -> None:
        if self.pid is not None:
            _send(self.pid, signal.SIGKILL, group=True)


def _send(pid: int, signum: int, *, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except OSError:
        pass  # gone already


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
