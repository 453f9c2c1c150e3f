"""Commands run on request (POST /api/v1/daemon/exec) with their streams handed to a client.

An `ExecRun` is one command. It is spawned when its client attaches, so no output is lost
before anyone reads it; its stdin, stdout and stderr are non-blocking pipes, or one
pseudo-terminal when a terminal is asked for. The reaper routes its exit here, as it does a
program's. Output is pulled by the client: the next chunk is read only once the previous one
was sent, so a client that stops reading fills the pipe and pauses the command, and pmd
holds at most one chunk per stream whatever the command writes.

`Execs` owns every run: those waiting for their client, those running, and detached runs
whose client has gone (their output is read and dropped, so they never block on a full pipe;
they stay listed for a while after they end). A run whose client goes away without
`detached` gets SIGHUP, as a terminal's session does when the line drops, and SIGKILL if it
is still there two seconds later.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import signal
import struct
import termios
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import NotFound
from .runtime import Child, ChildWatcher
from .spawn import Account, SpawnError, SpawnRequest, describe_exit, killpg, spawn

log = logging.getLogger("pmd")

STDIN, STDOUT, STDERR = 0, 1, 2
CHUNK = 64 * 1024
#: A run nobody attaches to within this long after the request is dropped.
ATTACH_SECONDS = 30.0
#: A finished detached run stays listed (with its exit code) this long.
KEEP_SECONDS = 600.0
#: Between the SIGHUP of a client gone and the SIGKILL.
HANGUP_GRACE = 2.0


@dataclass(frozen=True, slots=True)
class ExecSpec:
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None = None
    account: Account | None = None
    #: (rows, cols) of the pseudo-terminal, or None for three pipes.
    terminal: tuple[int, int] | None = None
    stdin: bool = False
    timeout: float | None = None
    detached: bool = False


def _take_controlling_terminal() -> None:
    """In the child, after setsid (start_new_session) and before exec: the pty on fd 0
    becomes this new session's controlling terminal, so `tty`, job control and Ctrl-C
    work. dup2 alone does not make a terminal controlling."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def set_window(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class ExecRun:
    def __init__(self, loop: asyncio.AbstractEventLoop, children: ChildWatcher, run_id: str,
                 spec: ExecSpec, spawner: Callable[[SpawnRequest], Child] = spawn) -> None:
        self._loop = loop
        self._children = children
        self._spawn = spawner
        self.id = run_id
        self.spec = spec
        self.created_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.pid: int | None = None
        self.exit_code: int | None = None
        #: The signal's name when the command was killed by one ("SIGTERM").
        self.signal: str | None = None
        #: Why it ended, when it is not its own exit: "timeout", a spawn error's reason.
        self.reason: str | None = None
        self.attached = False
        self.client_gone = False
        #: Done once the command has ended (reaped, or never started).
        self.done: asyncio.Future[None] = loop.create_future()
        self._child: Child | None = None
        self._out: dict[int, int] = {}  # stream -> the fd pmd reads it from
        self._stdin: int | None = None
        self._pty: int | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self._timers: list[asyncio.TimerHandle] = []

    @property
    def finished(self) -> bool:
        return self.done.done()

    @property
    def streams(self) -> tuple[int, ...]:
        return tuple(self._out)

    def start(self) -> None:
        """Spawn; a command that cannot run ends at once with a shell's code (127 when it
        does not exist, 126 otherwise) and the reason."""
        spec = self.spec
        ours: list[int] = []
        theirs: list[int] = []
        req = SpawnRequest(argv=list(spec.argv), env=dict(spec.env), cwd=spec.cwd,
                           account=spec.account)
        try:
            if spec.terminal is not None:
                master, slave = os.openpty()
                ours.append(master)
                theirs.append(slave)
                set_window(master, *spec.terminal)
                req.stdin_fd = req.stdout = req.stderr = slave
                req.preexec = _take_controlling_terminal
                self._pty = master
                self._out = {STDOUT: master}
                self._stdin = master if spec.stdin else None
            else:
                for stream in (STDOUT, STDERR):
                    r, w = os.pipe2(os.O_CLOEXEC)
                    ours.append(r)
                    theirs.append(w)
                    self._out[stream] = r
                req.stdout, req.stderr = theirs
                if spec.stdin:
                    r, w = os.pipe2(os.O_CLOEXEC)
                    ours.append(w)
                    theirs.append(r)
                    req.stdin_fd = r
                    self._stdin = w
            child = self._spawn(req)
        except (SpawnError, OSError) as exc:
            for fd in ours:
                os.close(fd)
            self._out, self._stdin, self._pty = {}, None, None
            code = exc.exit_code if isinstance(exc, SpawnError) else 126
            self._finish(code, None, str(exc))
            return
        finally:
            for fd in theirs:
                os.close(fd)
        for fd in ours:
            os.set_blocking(fd, False)
        self._child = child
        self.pid = child.pid
        self.started_at = time.time()
        self._children.watch(child.pid, self._exited)
        if spec.timeout is not None:
            self._timers.append(self._loop.call_later(spec.timeout, self._time_out))

    def _exited(self, status: int | None) -> None:
        if self._child is not None and status is not None:
            self._child.returncode = os.waitstatus_to_exitcode(status)
        if status is None:
            self._finish(None, None, "exit status unknown")
            return
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        self._finish(describe_exit(status), _signal_name(sig) if sig else None, self.reason)

    def _finish(self, code: int | None, sig: str | None, reason: str | None) -> None:
        if self.finished:
            return
        self.exit_code, self.signal, self.reason = code, sig, reason
        self.finished_at = time.time()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self.done.set_result(None)
        for waiter in list(self._waiters):
            if not waiter.done():
                waiter.set_result(None)

    def _time_out(self) -> None:
        if not self.finished and self.pid is not None:
            self.reason = "timeout"
            killpg(self.pid, signal.SIGKILL)

    # ---- streams ---------------------------------------------------------------------

    async def read(self, stream: int) -> bytes:
        """The next chunk of `stream`, or b"" at its end. Once the command has ended, what
        is in the pipe is still read, but a descendant holding the pipe open keeps it from
        ending no longer."""
        fd = self._out.get(stream)
        if fd is None:
            return b""
        while True:
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                if self.finished:
                    data = b""
                else:
                    await self._ready(fd, reading=True)
                    continue
            except OSError:  # EIO: a pty whose terminal side is closed everywhere
                data = b""
            if not data:
                self._close_stream(stream)
            return data

    async def write(self, data: bytes) -> bool:
        """Write to the command's stdin, waiting while its pipe is full; False when stdin
        is closed (not asked for, ended, or the command closed its end)."""
        view = memoryview(data)
        while view:
            fd = self._stdin
            if fd is None or self.finished:
                return False
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                await self._ready(fd, reading=False)
            except OSError:  # EPIPE: the command closed its stdin
                self.close_stdin()
                return False
        return True

    def close_stdin(self) -> None:
        """End of input: the pipe is closed; a terminal is sent its EOF character (^D)."""
        fd, self._stdin = self._stdin, None
        if fd is None:
            return
        if fd == self._pty:
            with contextlib.suppress(OSError):
                os.write(fd, bytes([termios.tcgetattr(fd)[6][termios.VEOF][0]]))
            return
        os.close(fd)

    def send_signal(self, signum: int) -> bool:
        if self.pid is None or self.finished:
            return False
        return killpg(self.pid, signum)

    def resize(self, rows: int, cols: int) -> bool:
        """The kernel sends SIGWINCH to the terminal's foreground group."""
        if self._pty is None:
            return False
        with contextlib.suppress(OSError):
            set_window(self._pty, rows, cols)
        return True

    def hang_up(self) -> None:
        """The client went away: SIGHUP, then SIGKILL if it is still running."""
        if self.send_signal(signal.SIGHUP):
            self._timers.append(self._loop.call_later(HANGUP_GRACE, self.kill))

    def terminate(self, grace: float) -> None:
        if self.send_signal(signal.SIGTERM):
            self._timers.append(self._loop.call_later(grace, self.kill))

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def _ready(self, fd: int, reading: bool) -> None:
        waiter: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not waiter.done():
                waiter.set_result(None)

        (self._loop.add_reader if reading else self._loop.add_writer)(fd, wake)
        self._waiters.add(waiter)
        try:
            await waiter
        finally:
            self._waiters.discard(waiter)
            (self._loop.remove_reader if reading else self._loop.remove_writer)(fd)

    def _close_stream(self, stream: int) -> None:
        fd = self._out.pop(stream, None)
        if fd is None or fd == self._stdin:
            return
        os.close(fd)
        if fd == self._pty:
            self._pty = None

    def close(self) -> None:
        """Let go of every descriptor (after the client is gone and the output read)."""
        for stream in list(self._out):
            self._close_stream(stream)
        self.close_stdin()
        if self._pty is not None:
            os.close(self._pty)
            self._pty = None

    def view(self) -> dict[str, object]:
        return {"id": self.id, "command": list(self.spec.argv),
                "user": self.spec.account.name if self.spec.account else None,
                "pid": self.pid, "terminal": self.spec.terminal is not None,
                "detached": self.spec.detached, "created_at": self.created_at,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "exit_code": self.exit_code, "signal": self.signal, "reason": self.reason}


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


class Execs:
    """Every exec run of this pmd, from its request to its end (or its listing's end)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, children: ChildWatcher,
                 spawner: Callable[[SpawnRequest], Child] = spawn) -> None:
        self._loop = loop
        self._children = children
        self._spawn = spawner
        self.runs: dict[str, ExecRun] = {}
        self._seq = itertools.count(1)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._drains: set[asyncio.Task[None]] = set()
        self.closed = False

    def create(self, spec: ExecSpec) -> ExecRun:
        run_id = f"exec_{int(time.time() * 1000)}_{next(self._seq)}"
        run = self.runs[run_id] = ExecRun(self._loop, self._children, run_id, spec,
                                          self._spawn)
        self._timers[run_id] = self._loop.call_later(ATTACH_SECONDS, self._forget, run_id)
        return run

    def get(self, run_id: str) -> ExecRun:
        run = self.runs.get(run_id)
        if run is None:
            raise NotFound(f"no exec run '{run_id}'", field="id")
        return run

    def attach(self, run: ExecRun) -> bool:
        """The client is here: start the command. False when the run already has one."""
        if run.attached or self.closed:
            return False
        run.attached = True
        timer = self._timers.pop(run.id, None)
        if timer is not None:
            timer.cancel()
        run.start()
        return True

    def release(self, run: ExecRun) -> None:
        """The client is gone (or done). A detached run that is still going is drained
        in the background; any other is hung up and forgotten once it has ended."""
        run.client_gone = True
        if run.spec.detached and not run.finished:
            task = self._loop.create_task(self._drain(run), name=f"drain {run.id}")
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
            return
        if not run.finished:
            run.hang_up()
            run.done.add_done_callback(lambda _: self._ended(run))
        else:
            self._ended(run)

    async def _drain(self, run: ExecRun) -> None:
        async def discard(stream: int) -> None:
            while await run.read(stream):
                pass

        try:
            await asyncio.gather(*(discard(s) for s in run.streams))
            await run.done
        finally:
            self._ended(run)

    def _ended(self, run: ExecRun) -> None:
        run.close()
        if run.spec.detached and not self.closed:
            self._timers[run.id] = self._loop.call_later(KEEP_SECONDS, self._forget, run.id)
        else:
            self._forget(run.id)

    def _forget(self, run_id: str) -> None:
        self._timers.pop(run_id, None)
        run = self.runs.pop(run_id, None)
        if run is not None:
            run.close()

    def detached(self) -> list[ExecRun]:
        return sorted((r for r in self.runs.values() if r.spec.detached and r.attached),
                      key=lambda r: r.created_at)

    async def close(self) -> None:
        """Shutdown: kill every command still running and let go of everything."""
        self.closed = True
        for run in self.runs.values():
            run.kill()
        waits = [r.done for r in self.runs.values() if r.attached and not r.finished]
        if waits:
            await asyncio.wait(waits, timeout=2.0)
        for task in list(self._drains):
            task.cancel()
        for task in list(self._drains):
            with contextlib.suppress(BaseException):
                await task
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for run_id in list(self.runs):
            self._forget(run_id)

    def kill_all(self) -> None:
        for run in self.runs.values():
            run.kill()
