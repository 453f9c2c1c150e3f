"""How a run of a program says it is ready, for the sources that need a watcher of their
own. Each watcher calls `on_ready` at most once and holds nothing after `close`.

`LogLineWatch` (readiness `log_line`) listens to the run's captures through their
subscribe API: it sees each chunk once it is in the log file, and matches whole lines only
(a line split across two reads is joined first).

`Readiness`, owned by the supervisor and reached by instances through their Runtime, holds
what the other sources need of pmd's own, and `close` (at shutdown) ends all of it:
- the tasks of startup probes (readiness `probe`: a health check object run until its
  first success, with probes.py's probes);
- the notify socket (readiness `notify`, systemd's protocol): one Unix datagram socket,
  bound on first use at a path in the state dir and handed to the programs that declare
  `notify` as $NOTIFY_SOCKET. Any process that can reach the path may send to it (a
  program's user is not pmd's), so who sent a message is read from the kernel: with
  SO_PASSCRED every datagram carries its sender's pid (SCM_CREDENTIALS; only a process
  with CAP_SYS_ADMIN can claim another pid than its own), and a message counts only for
  the instance whose process group that pid is in (every program leads its own group,
  its pgid is its pid: proctree.py's definition of a program's processes). A forged
  READY=1 from another program is ignored, and logged;
- notification fds (readiness `fd`, s6's protocol): the read end of the pipe whose write
  end the program got as fd N; a newline on it means ready. The read end is pmd's, kept
  open across a re-exec while the run is not ready yet.
"""

from __future__ import annotations

import array
import asyncio
import logging
import os
import re
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..logs.capture import Capture
from .probes import probe
from .proctree import read_stat

if TYPE_CHECKING:
    from ..model.spec import HealthCheckSpec, ProgramSpec
    from .runtime import ChildWatcher

log = logging.getLogger("pmd.readiness")

#: Seconds between two attempts of a startup probe whose check names no `interval` (a
#: health check's default, 30 s, is a liveness rhythm, far too slow to wait for a start).
PROBE_INTERVAL = 1.0
#: The longest notify datagram read whole (systemd's own limit is in the same range); a
#: longer one is cut, and its cut fields ignored.
NOTIFY_MAX = 64 * 1024
#: Datagrams read in one loop turn: a flood of them must not hold up the loop.
NOTIFY_PER_TURN = 64
#: Room for a datagram's ancillary data: its credentials and a few passed fds
#: (`systemd-notify` passes one with BARRIER=1, and waits until it is closed).
_ANCILLARY = socket.CMSG_SPACE(struct.calcsize("3i")) + socket.CMSG_SPACE(16 * 4)
#: sun_path holds 108 bytes, its terminating NUL included.
SUN_PATH_MAX = 107
#: The first so many ignored notify messages are logged, then one in a hundred.
IGNORED_LOGGED = 10
#: A line longer than this is matched by its first part: a program that never writes a
#: newline must not make pmd buffer without end.
MAX_LINE = 64 * 1024


class LogLineWatch:
    __slots__ = ("_pattern", "_on_ready", "_partial", "_unsubscribe")

    def __init__(self, captures: Iterable[Capture], pattern: str,
                 on_ready: Callable[[], None]) -> None:
        self._pattern = re.compile(pattern)
        self._on_ready: Callable[[], None] | None = on_ready
        self._partial: dict[int, bytes] = {}
        self._unsubscribe = [self._listen(index, capture)
                             for index, capture in enumerate(captures)]

    def _listen(self, index: int, capture: Capture) -> Callable[[], None]:
        return capture.subscribe(lambda data: self._feed(index, data))

    def _feed(self, stream: int, data: bytes) -> None:
        if self._on_ready is None:
            return
        text = self._partial.pop(stream, b"") + data
        *lines, rest = text.split(b"\n")
        if len(rest) > MAX_LINE:
            lines.append(rest)
            rest = b""
        if rest:
            self._partial[stream] = rest
        for line in lines:
            if self._pattern.search(line.decode("utf-8", "replace").rstrip("\r")):
                on_ready, self._on_ready = self._on_ready, None
                self.close()
                on_ready()
                return

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        self._partial.clear()
        self._on_ready = None


class Readiness:
    """The readiness sources that need pmd's own resources, for every instance."""

    def __init__(self, loop: asyncio.AbstractEventLoop, children: ChildWatcher,
                 base_env: Mapping[str, str], notify_path: Path) -> None:
        self.loop = loop
        self.children = children
        self.base_env = base_env
        self.notify_path = notify_path
        #: Startup probes under way, cancelled ones included until they end.
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._notify: socket.socket | None = None
        #: The instance runs that declared `notify`, by process group (their pid).
        self._notified: dict[int, Callable[[dict[str, str]], None]] = {}
        #: Messages from no such group (another program's, a stray process's).
        self.notify_ignored = 0

    # ---- probe ---------------------------------------------------------------------

    def follow_probe(self, check: HealthCheckSpec, program: ProgramSpec, port: int | None,
                     on_ready: Callable[[], None]) -> Callable[[], None]:
        """Probe until the first success, then call `on_ready`; the first attempt at once,
        the next ones `interval` apart (PROBE_INTERVAL unless the check names one)."""
        if self._closed:
            return _nothing
        task = self.loop.create_task(self._probe_until_ready(check, program, port, on_ready),
                                     name=f"ready probe {program.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

        def stop() -> None:
            task.cancel()

        return stop

    async def _probe_until_ready(self, check: HealthCheckSpec, program: ProgramSpec,
                                 port: int | None, on_ready: Callable[[], None]) -> None:
        interval = check.interval if "interval" in check.model_fields_set else PROBE_INTERVAL
        while True:
            try:
                error = await asyncio.wait_for(
                    probe(check, program, port, self.children, self.base_env), check.timeout)
            except TimeoutError:
                error = f"no answer within {check.timeout:g}s"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed probe is data, not a crash
                error = f"{type(exc).__name__}: {exc}"
            if error is None:
                on_ready()
                return
            log.debug("%s: not ready yet: %s", program.name, error)
            await asyncio.sleep(interval)

    # ---- notify --------------------------------------------------------------------

    def notify_address(self) -> str | None:
        """$NOTIFY_SOCKET for a program that declares `notify`: the socket, bound now if
        it is not yet; None when it cannot be (the program then never gets ready by
        notify, and its timeout_seconds, if any, says so)."""
        if self._notify is None and not self._closed:
            try:
                self._notify = self._bind(self.notify_path)
            except OSError as exc:
                log.error("notify socket %s: %s", self.notify_path, exc)
                return None
            self.loop.add_reader(self._notify.fileno(), self._readable)
        return str(self.notify_path) if self._notify is not None else None

    @staticmethod
    def _bind(path: Path) -> socket.socket:
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            raise OSError(f"the path is longer than {SUN_PATH_MAX} bytes (a shorter "
                          "--state-dir is needed)")
        sock = socket.socket(socket.AF_UNIX,
                             socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            path.unlink(missing_ok=True)  # left by a pmd that was killed
            sock.bind(str(path))
            # Programs run as their own users and must be able to send; the credentials
            # of each datagram, not the file's mode, say whose message it is.
            os.chmod(path, 0o666)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        except OSError:
            sock.close()
            raise
        return sock

    def follow_notify(self, pgid: int,
                      on_message: Callable[[dict[str, str]], None]) -> Callable[[], None]:
        """Hand the messages of process group `pgid` (an instance's run) to `on_message`,
        as a dict of their fields, until the returned function is called."""
        self._notified[pgid] = on_message

        def stop() -> None:
            if self._notified.get(pgid) is on_message:
                del self._notified[pgid]

        return stop

    def _readable(self) -> None:
        sock = self._notify
        if sock is None:
            return
        for _ in range(NOTIFY_PER_TURN):
            try:
                data, ancillary, _flags, _ = sock.recvmsg(NOTIFY_MAX, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("notify socket: %s", exc)
                return
            pid: int | None = None
            fds: list[int] = []
            for level, kind, payload in ancillary:
                if level != socket.SOL_SOCKET:
                    continue
                if kind == socket.SCM_CREDENTIALS and len(payload) >= 12:
                    pid = struct.unpack("3i", payload[:12])[0]
                elif kind == socket.SCM_RIGHTS:
                    passed = array.array("i")
                    passed.frombytes(payload[:len(payload) - len(payload) % passed.itemsize])
                    fds.extend(passed)
            try:
                self._deliver(pid, data)
            finally:
                # Read the sender's group first, then let it go: `systemd-notify` waits
                # (BARRIER=1 with a fd) until pmd closes what it passed, so it is still
                # there to be looked up while its READY=1 is handled.
                for fd in fds:
                    os.close(fd)

    def _deliver(self, pid: int | None, data: bytes) -> None:
        stat = read_stat(pid) if pid else None
        # A zombie keeps its /proc/<pid>/stat, so a sender that has just exited still
        # counts, until its parent reaps it.
        on_message = self._notified.get(stat.pgid) if stat is not None else None
        if on_message is None:
            self.notify_ignored += 1
            if self.notify_ignored <= IGNORED_LOGGED or self.notify_ignored % 100 == 0:
                log.warning("notify message from pid %s ignored: not in the process group "
                            "of a program with readiness notify (%d ignored so far)",
                            pid, self.notify_ignored)
            return
        on_message(parse_notify(data))

    def hand_over(self) -> dict[str, object] | None:
        """Before a re-exec: the socket's number, kept open across the exec, so that no
        message sent meanwhile is lost."""
        if self._notify is None:
            return None
        os.set_inheritable(self._notify.fileno(), True)
        return {"fd": self._notify.fileno(), "path": str(self.notify_path)}

    def take_over(self, handed: Mapping[str, object] | None) -> None:
        """After a re-exec: the socket the previous image bound (see hand_over)."""
        if not handed or not isinstance(handed.get("fd"), int):
            return
        fd = handed["fd"]
        assert isinstance(fd, int)
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            log.error("notify socket not taken over (%s): bound again on first use", exc)
            return
        os.set_inheritable(fd, False)
        sock.setblocking(False)
        self._notify = sock
        self.loop.add_reader(fd, self._readable)

    # ---- notification fd -----------------------------------------------------------

    def follow_fd(self, fd: int, on_ready: Callable[[], None],
                  on_closed: Callable[[], None]) -> Callable[[], None]:
        """Read `fd` until a newline comes (then `on_ready`) or the program closes its end
        without one; the fd is pmd's from now on, and closed by the returned function
        (once is enough: later calls do nothing) or at that end. `on_closed` says when it
        is closed, so that its number is never handed on after."""
        done = False

        def stop() -> None:
            nonlocal done
            if not done:
                done = True
                self.loop.remove_reader(fd)
                os.close(fd)
                on_closed()

        def readable() -> None:
            try:
                data = os.read(fd, 4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if b"\n" in data:
                stop()  # s6 closes its end once it has the newline; so does pmd
                on_ready()
            elif not data:
                stop()  # closed without a newline: not ready this way (timeout_seconds)

        os.set_blocking(fd, False)
        self.loop.add_reader(fd, readable)
        return stop

    # ---- shutdown ------------------------------------------------------------------

    async def close(self) -> None:
        """Nothing new is followed; every probe under way is cancelled and awaited; the
        notify socket is closed and its path removed."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._notify is not None:
            self.loop.remove_reader(self._notify.fileno())
            self._notified.clear()
            self._notify.close()
            self._notify = None
            self.notify_path.unlink(missing_ok=True)


def parse_notify(data: bytes) -> dict[str, str]:
    """sd_notify's message: newline-separated KEY=VALUE assignments (later ones win)."""
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return fields


def _nothing() -> None:
    pass
