"""One process slot: a program, or one port of a port-range program.

Every state change goes through `_set_state`, which checks the transition against
states.TRANSITIONS and publishes a StateEvent. The desired state (`want`) is set by the API
and by signals; the machine acts on it. Timers (startsecs, backoff, stop timeout, boot
delay) are the only clocks: nothing polls. Everything outside the process slot (clock,
timers, spawning, signals, the reaper, logs, the event stream) comes from a `Runtime`.

A restart after an exit runs in the reaper's pass when it is the loop turn's first start;
any other waits in the runtime's queue of starts, one a loop turn, so however fast
programs die, each loop turn still serves requests, pipes and timers. A start-rate limit
(systemd's StartLimitBurst) turns a crash loop into BACKOFF with growing delays instead of
a spawn storm.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..logs.capture import ByteCount, Capture, LineStyle, LogFile
from ..logs.times import export
from ..model.expand import ExpansionError, expand
from ..model.policies import restart_delay
from ..model.spec import backoff_delay
from ..model.states import RUNNING_STATES, STOPPED_STATES, ProgramState, check_transition
from .events import Event, EventBus, ReadyEvent, SignalEvent, StateEvent
from .plan import spawn_rlimits
from .readiness import LogLineWatch
from .runtime import QueuedStart
from .spawn import (
    Prespawned,
    SpawnError,
    SpawnRequest,
    build_argv,
    describe_exit,
    program_env,
    resolve_account,
)

if TYPE_CHECKING:
    from ..model.spec import ProgramSpec
    from .runtime import Cancellable, Child, Runtime
    from .snapshots import InstanceSnapshot


class Slot(Protocol):
    """What an instance knows of the program it belongs to (a `Program`)."""

    @property
    def spec(self) -> ProgramSpec: ...

    @property
    def id(self) -> int | None: ...

    @property
    def name(self) -> str: ...

    @property
    def log_folder(self) -> str: ...

    @property
    def is_ephemeral(self) -> bool: ...

    temporary_id: str | None


log = logging.getLogger("pmd.supervisor")
S = ProgramState

#: The longest wait of a start held back by the start-rate limit (1 s, 2 s, 4 s ... 60 s).
START_LIMIT_BACKOFF_MAX = 60.0


class Instance:
    __slots__ = (
        "program", "port", "rt", "state", "pid", "popen", "started_at", "started_mono",
        "stopped_at", "exit_code", "spawn_error", "backoff", "restarts", "_want",
        "_timer", "_waiters", "_changed", "stdout_log", "stderr_log", "captures",
        "_restart_after_stop", "state_since", "health_status", "adopted", "retry_at",
        "backoff_reason", "_starts", "_limit_hits", "_restart_pending", "completed",
        "ready_at", "_ready_watch", "_ready_timer", "_not_ready", "_out_bytes", "_err_bytes",
        "notify_status",
        "notify_stopping", "_notify_watch", "ready_fd", "_streak", "prespawned", "_split",
        "_pipes_for", "_out_w", "_err_w", "__weakref__",
    )

    def __init__(self, program: Slot, port: int | None, runtime: Runtime) -> None:
        self.program = program
        self.port = port
        self.rt = runtime
        self.state = S.STOPPED
        self.state_since = runtime.clock.time()
        self.pid: int | None = None
        self.popen: Child | None = None
        self.started_at: float | None = None
        self.started_mono: float | None = None
        self.stopped_at: float | None = None
        self.exit_code: int | None = None
        self.spawn_error: str | None = None
        self.backoff = 0
        self.restarts = 0
        self._want = False
        self._timer: Cancellable | None = None
        #: Futures of wait_state(), each with its states; and of wait_change(), resolved by
        #: the next change of state or of `want`. None while nobody waits (an idle
        #: program's case): a list is made by the first wait.
        self._waiters: list[tuple[frozenset[ProgramState],
                                  asyncio.Future[ProgramState]]] | None = None
        self._changed: list[asyncio.Future[None]] | None = None
        self.stdout_log: LogFile | None = None
        self.stderr_log: LogFile | None = None
        self.captures: list[Capture] = []
        self._restart_after_stop = False
        self.health_status = "unknown"
        self.adopted = False
        #: Its process when a boot plan started it before the supervisor existed: its
        #: first spawn takes it over instead of forking (see _exec).
        self.prespawned: Prespawned | None = None
        #: When a BACKOFF ends (wall clock), and why the instance is waiting.
        self.retry_at: float | None = None
        self.backoff_reason: str | None = None
        #: Monotonic times of the latest starts (start_limit_burst at most), for the
        #: start-rate limit. A list: an empty deque is 760 bytes, a list 56.
        self._starts: list[float] = []
        self._limit_hits = 0
        #: A restart is decided and scheduled; `restarts` counts it when it spawns.
        self._restart_pending = False
        #: A oneshot's verdict once its run ended: its exit code was in exitcodes or not.
        self.completed: bool | None = None
        #: When this run became ready (wall clock); None until then, and after it ends.
        self.ready_at: float | None = None
        #: How this run's readiness watcher is closed, and its timeout; `_not_ready` once
        #: the timeout hit.
        self._ready_watch: Callable[[], None] | None = None
        self._ready_timer: Cancellable | None = None
        self._not_ready = False
        #: Bytes read from the stdout and stderr pipes, over every run of this slot (two
        #: slots: a dict of the two is 0.2 KiB a program more; see `log_bytes`).
        self._out_bytes = ByteCount()
        self._err_bytes = ByteCount()
        #: What this run said on the notify socket: its latest STATUS= text, and whether
        #: it announced STOPPING=1; and how pmd stops listening to it.
        self.notify_status: str | None = None
        self.notify_stopping = False
        self._notify_watch: Callable[[], None] | None = None
        #: readiness `fd`: pmd's read end of this run's notification pipe, until it is
        #: ready (or gone); handed over across a re-exec.
        self.ready_fd: int | None = None
        #: Automatic restarts in a row (restart_delays' index); a run as long as the
        #: start-rate window, or a start by hand, begins a new streak.
        self._streak = 0
        #: The last command line split into argv (shlex), and its split: a crash loop
        #: splits the same line at every start. Kept from a slot's second start on: a
        #: program started once and running holds none (0.3 KiB).
        self._split: tuple[str, str | None, list[str]] | None = None
        #: pmd's copies of the write ends of this run's stdout and stderr pipes, and the
        #: spec they were made for: held while the run lives, so that its exit is no EOF
        #: and the restart that follows it (at once, or from the queue of starts) writes
        #: into the same pipes (no new pipes, no new captures); let go at any other exit,
        #: and when a waiting restart is called off (see _exited). Two int slots and the
        #: spec's (None: no ends held), not a tuple of the three: 64 bytes a program less.
        self._pipes_for: ProgramSpec | None = None
        self._out_w = self._err_w = -1

    # ---- identity ------------------------------------------------------------------

    @property
    def name(self) -> str:
        if self.port is None:
            return self.program.name
        return f"{self.program.name}:{self.port}"

    def uptime(self) -> float | None:
        if self.started_mono is None or self.state not in RUNNING_STATES:
            return None
        return max(0.0, self.rt.clock.monotonic() - self.started_mono)

    @property
    def want(self) -> bool:
        """The desired state: running (True) or stopped. A stop of an instance that is
        stopped already changes only this, so it wakes wait_change() as a state does."""
        return self._want

    @want.setter
    def want(self, value: bool) -> None:
        if value != self._want:
            self._want = value
            self._wake_changed()

    @property
    def log_bytes(self) -> dict[str, ByteCount]:
        """Bytes read from each stream, over every run of this slot, by stream name."""
        return {"stdout": self._out_bytes, "stderr": self._err_bytes}

    def wait_change(self) -> asyncio.Future[None]:
        """A future that resolves at the next change of `state` or of `want`."""
        future: asyncio.Future[None] = self.rt.timers.create_future()
        if self._changed is None:
            self._changed = []
        self._changed.append(future)
        return future

    def _wake_changed(self) -> None:
        changed, self._changed = self._changed, None
        for future in changed or ():
            if not future.done():
                future.set_result(None)

    # ---- the machine ---------------------------------------------------------------

    def _set_state(self, new: ProgramState, exit_code: int | None = None,
                   reason: str | None = None) -> None:
        old = self.state
        check_transition(old, new)
        self.state = new
        self.state_since = self.rt.clock.time()
        if new != S.BACKOFF:
            self.retry_at = None
            if new != S.FATAL:  # a FATAL after failed starts keeps why they failed
                self.backoff_reason = None
        self.rt.publish(StateEvent(
            program_id=self.program.id, program=self.program.name, instance=self.name,
            port=self.port, from_state=old, to_state=new, pid=self.pid,
            exit_code=exit_code, time=self.state_since,
            temporary_id=self.program.temporary_id, reason=reason,
            retry_at=self.retry_at, source=self,
        ))
        self._wake_changed()
        if self._waiters:
            keep = []
            for states, future in self._waiters:
                if new in states:
                    if not future.done():
                        future.set_result(new)
                elif not future.done():
                    keep.append((states, future))
            self._waiters = keep or None

    def wait_state(self, states: Iterable[ProgramState]) -> asyncio.Future[ProgramState]:
        """A future that resolves with the first state in `states` (now, or later)."""
        wanted = frozenset(states)
        future: asyncio.Future[ProgramState] = self.rt.timers.create_future()
        if self.state in wanted:
            future.set_result(self.state)
        elif self._waiters is None:
            self._waiters = [(wanted, future)]
        else:
            self._waiters.append((wanted, future))
        return future

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _later(self, delay: float, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = self.rt.timers.call_later(delay, callback)

    def _soon(self, callback: Callable[[], None]) -> None:
        """Run `callback` in a later loop turn, in the runtime's queue of starts."""
        self._cancel_timer()
        self._timer = self.rt.starts.push(callback)

    # ---- commands (desired state) --------------------------------------------------

    def start(self, delay: float = 0) -> None:
        """Want it running. A stopped, exited, fatal or backing-off instance spawns now
        (or after `delay`); a stopping one starts again once it has stopped. Asking
        explicitly clears the failed-start count and the start-rate limit."""
        self.want = True
        if self.state == S.STOPPING:
            self._restart_after_stop = True
            return
        if self.state in (S.STARTING, S.RUNNING):
            return
        self.backoff = 0
        self._starts.clear()
        self._limit_hits = 0
        self._streak = 0
        self._restart_pending = False
        if delay > 0:
            self._later(delay, self._delayed_start)
        else:
            self._spawn()

    def _delayed_start(self) -> None:
        self._timer = None
        if self.want and self.state in STOPPED_STATES | {S.BACKOFF}:
            self._spawn()
        else:
            self._release_pipes()

    def stop(self, reason: str | None = None) -> asyncio.Future[ProgramState]:
        """Want it stopped: stop signal to the group, SIGKILL after stop_timeout.
        `reason` goes on the STOPPING event (idle ...)."""
        self.want = False
        self._restart_after_stop = False
        if self.state in (S.STARTING, S.RUNNING):
            self._begin_stop(reason)
        elif self.state == S.BACKOFF:
            self._cancel_timer()
            self._release_pipes()
            self._set_state(S.STOPPED)
        elif self.state in STOPPED_STATES:
            self._cancel_timer()  # a pending boot delay or restart
            self._release_pipes()
        return self.wait_state(STOPPED_STATES)

    def restart(self, reason: str | None = None) -> None:
        """Stop, then start again; `reason` goes on the STOPPING event (max_age ...)."""
        if self.state in (S.STARTING, S.RUNNING):
            self.want = True
            self._restart_after_stop = True
            self._begin_stop(reason)
        else:
            self.start()

    def kill_now(self) -> None:
        """Shutdown's last resort: SIGKILL the group, whatever the state."""
        self.want = False
        self._restart_after_stop = False
        self._cancel_timer()
        if self.pid is not None:
            self.rt.killpg(self.pid, signal.SIGKILL)
        else:
            self._release_pipes()  # a restart that waited in the queue: none now

    def signal(self, signum: int, group: bool = True) -> bool:
        """Send a signal to the process group (or the main pid alone); the state machine
        learns what it did from the exit, if any, like any other exit."""
        if self.pid is None:
            return False
        return self.rt.killpg(self.pid, signum) if group else self.rt.kill(self.pid, signum)

    # ---- transitions driven by the OS ----------------------------------------------

    def _spawn(self) -> None:
        """Start the process now. The STARTING event carries the new pid (or none, when
        the spawn failed and BACKOFF follows at once)."""
        self._cancel_timer()
        for capture in tuple(self.captures):  # what the previous run left in its pipes
            capture.drain()
        spec = self.program.spec
        self.spawn_error = None
        self.exit_code = None
        self.completed = None
        self.ready_at = None
        self.notify_status = None
        self.notify_stopping = False
        if self._restart_pending:
            self._restart_pending = False
            self.restarts += 1
        now = self.rt.clock.monotonic()
        early, self.prespawned = self.prespawned, None
        try:
            child = self._exec(early)
        except SpawnError as exc:
            if early is not None and not early.settled:
                self._discard(early, "its start fails now")
            self._note_start(now)
            self.spawn_error = str(exc)
            log.error("%s: spawn error: %s", self.name, exc)
            self._set_state(S.STARTING)
            self._to_backoff()
            return
        started_at = self.rt.clock.time()
        if early is not None and child is early.popen:
            # taken over: its run began at the boot plan's spawn, a little earlier
            now, started_at = min(now, early.started_mono), min(started_at, early.started_at)
        self._note_start(now)
        self.popen = child
        self.pid = child.pid
        self.started_at = started_at
        self.started_mono = now
        self.rt.children.watch(child.pid, self._exited)
        self._follow_notify()
        self._set_state(S.STARTING)
        self._arm_readiness()
        left = spec.startsecs
        if early is not None and child is early.popen:
            left -= self.rt.clock.monotonic() - now  # counted from the plan's spawn
        if left <= 0:
            self._running()
        else:
            self._later(left, self._running)

    def _exec(self, early: Prespawned | None = None) -> Child:
        """Spawn the process, or take over `early` (started by a boot plan) when it was
        started exactly as it would be now; an `early` that differs is killed first."""
        spec = self.program.spec
        fields = self.rt.expand(spec)  # ${VAR}s, and env_file afresh
        account = resolve_account(fields.user)
        split = self._split
        if split is not None and split[0] == fields.command and split[1] == spec.terminal_shell:
            argv = list(split[2])
        else:
            argv = build_argv(fields.command, spec.terminal_shell)
            if self.started_mono is not None:  # it ran before: kept for the next start
                self._split = (fields.command, spec.terminal_shell, list(argv))
        if self.port is not None:
            argv += [spec.effective_port_param, str(self.port)]
        env = program_env(self.rt.base_env, account, fields.environment, spec.display,
                          self.port)
        if spec.readiness is not None and spec.readiness.notify and self.rt.readiness:
            # Only programs that declare `notify` are told where the socket is (pmd's own
            # NOTIFY_SOCKET, if it had one, is never in the base environment).
            address = self.rt.readiness.notify_address()
            if address is not None:
                env["NOTIFY_SOCKET"] = address
        cwd = fields.directory
        if cwd is None and account is not None and self.program.temporary_id is not None:
            cwd = account.home if os.path.isdir(account.home) else None  # quick-start rule
        rlimits = spawn_rlimits(spec)
        if early is not None:
            if early.matches(argv, env, cwd, account, rlimits, spec.logs_enabled) \
                    and self.port is None and not spec.sockets \
                    and (spec.readiness is None or spec.readiness.fd is None):
                early.settled = True
                if early.pipes is not None:
                    self._ensure_logfiles()
                    self.attach_captures(early.pipes[0], early.pipes[1], early.popen.pid)
                    early.pipes = None
                return early.popen
            self._discard(early, "it is configured otherwise now")
        out_w = err_w = None
        pipes: list[tuple[int, int]] = []
        kept = self._pipes_for is not None
        if kept and (self._pipes_for is not spec or not spec.logs_enabled
                     or len(self.captures) != 2):
            self._release_pipes()  # made for another configuration
            kept = False
        if kept:
            out_w, err_w = self._out_w, self._err_w
        elif spec.logs_enabled:
            pipes = [Capture.make_pipe(), Capture.make_pipe()]
            out_w, err_w = pipes[0][1], pipes[1][1]
        listen_fds: list[tuple[str, int]] = []
        if spec.sockets:
            if self.rt.sockets is None:
                raise SpawnError("sockets are not available in this pmd")
            listen_fds = self.rt.sockets.fds_for(spec.sockets)
        notification: tuple[int, int] | None = None
        if spec.readiness is not None and spec.readiness.fd is not None \
                and self.rt.readiness is not None:
            notification = os.pipe2(os.O_CLOEXEC)
        try:
            child = self.rt.spawn(SpawnRequest(
                argv=argv, env=env, cwd=cwd, account=account,
                stdout=out_w if out_w is not None else subprocess.DEVNULL,
                stderr=err_w if err_w is not None else subprocess.DEVNULL,
                extra_fd=None if notification is None or spec.readiness is None
                else (notification[1], spec.readiness.fd or 0),
                listen_fds=listen_fds,
                rlimits=rlimits,
            ))
        except BaseException:
            for r, w in [*pipes, *([notification] if notification else [])]:
                os.close(r)
                os.close(w)
            raise
        if notification is not None:
            os.close(notification[1])  # the program's end now
            self.ready_fd = notification[0]
        if kept:
            for capture in self.captures:
                capture.end_run(child.pid)
        elif pipes:
            self._out_w, self._err_w, self._pipes_for = pipes[0][1], pipes[1][1], spec
            self._ensure_logfiles()
            self.attach_captures(pipes[0][0], pipes[1][0], child.pid)
        return child

    def _release_pipes(self) -> None:
        """Let go of the write ends: the captures end at EOF, once no process of the
        ended run (a child it left behind) holds them either."""
        if self._pipes_for is not None:
            self._pipes_for = None
            out_w, err_w, self._out_w, self._err_w = self._out_w, self._err_w, -1, -1
            os.close(out_w)
            os.close(err_w)

    def _discard(self, early: Prespawned, why: str) -> None:
        """A boot plan's process that is not this start's: killed, never kept."""
        log.warning("%s: the boot plan's process (pid %d) killed: %s", self.name,
                    early.popen.pid, why)
        self.rt.children.watch(early.popen.pid, early.exited)
        early.discard(self.rt.killpg)

    def _ensure_logfiles(self) -> None:
        spec = self.program.spec
        if self.stdout_log is None:
            self.stdout_log = LogFile(self.log_file("stdout"), spec.log_max_bytes, spec.log_backups,
                                      self.rt.saved_times)
        if self.stderr_log is None:
            self.stderr_log = LogFile(self.log_file("stderr"), spec.log_max_bytes, spec.log_backups,
                                      self.rt.saved_times)
        self.stdout_log.ensure_open()
        self.stderr_log.ensure_open()

    def attach_captures(self, out_fd: int, err_fd: int, pid: int | None = None) -> None:
        make = self.rt.capture
        if make is None:  # a runtime without log sinks (unit tests): nobody reads
            os.close(out_fd)
            os.close(err_fd)
            return
        forward_out, forward_err = self.rt.forwarders
        prefix = f"[{self.name}] ".encode()
        mode = self.program.spec.log_forward or self.rt.forward_mode
        closed = self._capture_closed  # one bound method for both
        for fd, logfile, forward, stream, count in (
                (out_fd, self.stdout_log, forward_out, "stdout", self._out_bytes),
                (err_fd, self.stderr_log, forward_err, "stderr", self._err_bytes)):
            tap = self.rt.tap(self.program.name, self.name, stream, pid)
            style = None if mode == "prefixed" else \
                LineStyle(mode, self.program.name, self.port, stream)
            self.captures.append(make(fd, logfile, forward, prefix, closed, count, style,
                                      tap))

    def _capture_closed(self, capture: Capture) -> None:
        if capture in self.captures:
            self.captures.remove(capture)

    def log_path(self, stream: str) -> Path:
        return Path(self.log_file(stream))

    def log_file(self, stream: str) -> str:
        """`log_path` as text, made without pathlib for the log dir's files. pathlib
        interns each part of each path it parses, the program's own name too; the table
        of interned strings keeps the room of those that are gone until it is resized,
        and a resize makes room for three times the strings it holds. A program's start
        and each listing of all programs parsed a path or two a program: with a thousand
        programs the table doubled at boot, 1 MiB at once (docs/performance.md)."""
        spec = self.program.spec
        custom = spec.stdout_logfile if stream == "stdout" else spec.stderr_logfile
        if custom and "$" in custom:
            try:
                custom = expand(custom, self.rt.base_env)
            except ExpansionError:
                pass  # the start that needs it fails with that error; a view shows the text
        if custom:
            path = Path(custom)
            if self.port is not None:
                path = path.with_name(f"{path.stem}.{self.port}{path.suffix}")
            return str(path)
        # the log dir's text is a whole path already, and a program's name has no "/"
        folder = os.path.join(str(self.rt.log_dir), self.program.log_folder)
        if self.port is not None:
            folder = os.path.join(folder, str(self.port))
        return os.path.join(folder, f"{stream}.log")

    def _running(self) -> None:
        self._timer = None
        if self.state != S.STARTING:
            return
        if self.program.spec.readiness is None:
            self.backoff = 0
        self._set_state(S.RUNNING)
        if self.program.spec.readiness is None:
            self.mark_ready("running")

    def _arm_readiness(self, timeout: float | None = None) -> None:
        """Watch this run's readiness source, and time it out (`timeout`: what is left of
        it, for a run adopted across a re-exec)."""
        readiness = self.program.spec.readiness
        self._not_ready = False
        if readiness is None:
            return
        if readiness.log_line is not None and self.captures:
            self._ready_watch = LogLineWatch(self.captures, readiness.log_line,
                                             lambda: self.mark_ready("log_line")).close
        elif readiness.probe is not None and self.rt.readiness is not None:
            self._ready_watch = self.rt.readiness.follow_probe(
                readiness.probe, self.program.spec, self.port, lambda: self.mark_ready("probe"))
        elif self.ready_fd is not None and self.rt.readiness is not None:
            self._ready_watch = self.rt.readiness.follow_fd(
                self.ready_fd, lambda: self.mark_ready("fd"), self._ready_fd_closed)
        limit = readiness.timeout_seconds if timeout is None else timeout
        if limit is not None:
            self._ready_timer = self.rt.timers.call_later(limit, self._ready_timeout)

    def _follow_notify(self) -> None:
        """Listen to this run's messages on the notify socket (until it exits): READY=1,
        STATUS=, STOPPING=1, from a process of its own group."""
        readiness = self.program.spec.readiness
        if readiness is None or not readiness.notify or self.rt.readiness is None \
                or self.pid is None:
            return
        self._notify_watch = self.rt.readiness.follow_notify(self.pid, self._notified)

    def _notified(self, fields: dict[str, str]) -> None:
        if "STATUS" in fields:
            self.notify_status = fields["STATUS"][:1024] or None
        if fields.get("STOPPING") == "1" and not self.notify_stopping:
            self.notify_stopping = True
            log.info("%s: says it is stopping (STOPPING=1)", self.name)
        if fields.get("READY") == "1":
            self.mark_ready("notify")

    def _unfollow_notify(self) -> None:
        if self._notify_watch is not None:
            self._notify_watch()
            self._notify_watch = None

    def _ready_fd_closed(self) -> None:
        self.ready_fd = None

    def _disarm_readiness(self) -> None:
        if self._ready_watch is not None:
            self._ready_watch()
            self._ready_watch = None
        if self._ready_timer is not None:
            self._ready_timer.cancel()
            self._ready_timer = None

    def _ready_timeout(self) -> None:
        """Not ready in time: a failed start. The run is stopped (stop signal, SIGKILL
        after stop_timeout) and its exit goes to BACKOFF, as an exit before startsecs."""
        self._ready_timer = None
        if self.ready_at is not None or self.pid is None or \
                self.state not in (S.STARTING, S.RUNNING):
            return
        spec = self.program.spec
        log.warning("%s: not ready within %ss: stopping it", self.name,
                    spec.readiness.timeout_seconds if spec.readiness else None)
        self._not_ready = True
        if self._ready_watch is not None:
            self._ready_watch()
            self._ready_watch = None
        pid = self.pid
        self.rt.killpg(pid, spec.stop_signum)
        self._ready_timer = self.rt.timers.call_later(
            spec.stop_timeout, lambda: self.pid == pid and self.rt.killpg(pid, signal.SIGKILL))

    def mark_ready(self, via: str) -> None:
        """This run is ready (once per run; later signals change nothing)."""
        if self.ready_at is not None or self.state not in (S.STARTING, S.RUNNING) \
                or self._not_ready:
            return
        self._disarm_readiness()
        # A program with a readiness source has started well once it is ready, not at
        # startsecs: failed starts count until then.
        self.backoff = 0
        self.ready_at = self.rt.clock.time()
        if self.rt.wants(ReadyEvent):
            self.rt.publish(ReadyEvent(
                program_id=self.program.id, program=self.program.name, instance=self.name,
                port=self.port, pid=self.pid, time=self.ready_at, via=via,
                temporary_id=self.program.temporary_id, source=self))

    def _to_backoff(self, reason: str = "failed_start") -> None:
        """A failed start (spawn error, or an exit before startsecs): the spec's backoff
        (supervisord's 1 s, 2 s, 3 s ... by default), then FATAL after startretries
        (never, with -1)."""
        spec = self.program.spec
        self.backoff += 1
        if 0 <= spec.startretries < self.backoff or not self.want:
            # the last failed start says why, as the earlier ones did (ready_timeout ...),
            # in its events and, once FATAL, in its status
            self.backoff_reason = reason
            self._set_state(S.BACKOFF, self.exit_code, reason=reason)
            if self.want:
                self.want = False
                self._set_state(S.FATAL, self.exit_code, reason=reason)
            else:
                self._set_state(S.STOPPED)
            return
        self._backoff_for(spec.retry_delay(self.backoff), reason)

    def _backoff_for(self, delay: float, reason: str) -> None:
        self.retry_at = self.rt.clock.time() + delay
        self.backoff_reason = reason
        self._set_state(S.BACKOFF, self.exit_code, reason=reason)
        self._later(delay, self._delayed_start)

    def _note_start(self, now: float) -> None:
        self._starts.append(now)
        del self._starts[:-max(self.program.spec.start_limit_burst, 1)]

    def _start_limit_wait(self) -> float | None:
        """Seconds the next automatic start must wait for the start-rate limit, or None.
        The wait doubles with each consecutive hit (1 s, 2 s, 4 s ... 60 s) and is never
        shorter than the time until the window has room again."""
        spec = self.program.spec
        burst = spec.start_limit_burst
        if burst <= 0 or len(self._starts) < burst:
            return None
        now = self.rt.clock.monotonic()
        room_at = self._starts[0] + spec.start_limit_interval
        if room_at <= now:
            return None
        self._limit_hits += 1
        growing = backoff_delay(self._limit_hits, "exponential", START_LIMIT_BACKOFF_MAX)
        return max(growing, room_at - now)

    def _exited(self, status: int | None) -> None:
        """The reaper saw our pid exit (status None: exit of an adopted non-child). The
        EXITED change comes first; a restart then spawns at once when it is the loop turn's
        first start (runtime.StartQueue), else waits in the queue of starts. A restart at
        once writes into the same pipes; after any other exit pmd lets go of them."""
        try:
            self._exit_changes(status)
        finally:
            # kept for a new run (spawned now, or waiting in the queue of starts)
            if self.pid is None and not isinstance(self._timer, QueuedStart):
                self._release_pipes()

    def _exit_changes(self, status: int | None) -> None:
        self._cancel_timer()
        code = describe_exit(status) if status is not None else None
        if self.popen is not None and status is not None:
            self.popen.returncode = os.waitstatus_to_exitcode(status)
        pid = self.pid
        self.exit_code = code
        self.ready_at = None
        self._disarm_readiness()
        self._unfollow_notify()
        not_ready, self._not_ready = self._not_ready, False
        self.stopped_at = self.rt.clock.time()
        spec = self.program.spec
        if self.state == S.STOPPING:
            if pid is not None:
                self.rt.killpg(pid, signal.SIGKILL)  # stragglers of the group
            self.pid = None
            self.popen = None
            self._set_state(S.STOPPED, code)
            if self._restart_after_stop and self.want:
                self._restart_after_stop = False
                self._restart_pending = True
                self._soon(self._delayed_start)
            return
        self.pid = None
        self.popen = None
        if self.state == S.STARTING:  # died before startsecs: a failed start
            self._to_backoff("ready_timeout" if not_ready else "failed_start")
            return
        if self.state != S.RUNNING:
            return
        if not_ready:  # stopped for not being ready in time: a failed start too
            self._set_state(S.EXITED, code, reason="ready_timeout")
            self._to_backoff("ready_timeout")
            return
        if spec.oneshot:  # its run is its purpose: the code says success or failure
            self.want = False
            self.completed = spec.expects_exit(code)
            self._set_state(S.EXITED if self.completed else S.FATAL, code)
            return
        again = self.want and (spec.autorestart == "true"
                               or (spec.autorestart == "unexpected"
                                   and not spec.expects_exit(code)))
        if not again:
            self.want = False
        ran = self.started_mono is not None and \
            self.rt.clock.monotonic() - self.started_mono >= spec.start_limit_interval
        if ran:
            self._limit_hits = 0  # a run as long as the window: the loop is broken
            self._streak = 0
        self._set_state(S.EXITED, code)
        if not again:
            return
        self._restart_pending = True
        wait = self._start_limit_wait()
        if wait is not None:
            log.warning("%s: %d starts within %ss: next start in %.0f s", self.name,
                        len(self._starts), spec.start_limit_interval, wait)
            self._backoff_for(wait, "start_limit")
            return
        if spec.restart_delays:
            self._streak += 1
            delay = restart_delay(spec.restart_delays, self._streak)
            if delay > 0:
                self._backoff_for(delay, "restart_delay")
                return
        # Restart from the exit event itself (no tick, no delay after a good run): at once
        # when it is the loop turn's first start, else in the queue of starts.
        self._cancel_timer()
        if not self.rt.starts.run_now(self._delayed_start):
            self._timer = self.rt.starts.push(self._delayed_start)

    def _begin_stop(self, reason: str | None = None) -> None:
        self._cancel_timer()
        self._disarm_readiness()
        self._not_ready = False
        self._set_state(S.STOPPING, reason=reason)
        self._stop_step(0)

    def _stop_step(self, index: int) -> None:
        """Step `index` of the stop: its signal to the group, then a wait for the exit
        before the next step; SIGKILL after the last (the one place that escalates)."""
        self._timer = None
        if self.state != S.STOPPING or self.pid is None:
            return
        steps = self.program.spec.stop_steps
        if index >= len(steps):
            self._escalate()
            return
        signum, wait = steps[index]
        if not self.rt.killpg(self.pid, signum):
            return
        self._signalled(signum, index + 1, len(steps), wait)
        if wait > 0:
            self._later(wait, lambda: self._stop_step(index + 1))
        else:
            self._stop_step(index + 1)

    def _escalate(self) -> None:
        self._timer = None
        if self.state == S.STOPPING and self.pid is not None:
            steps = self.program.spec.stop_steps
            log.warning("%s did not stop in %ss: SIGKILL", self.name,
                        sum(wait for _, wait in steps))
            if self.rt.killpg(self.pid, signal.SIGKILL):
                self._signalled(signal.SIGKILL, len(steps) + 1, len(steps), 0.0)

    def _signalled(self, signum: int, step: int, steps: int, wait: float) -> None:
        assert self.pid is not None
        if not self.rt.wants(SignalEvent):
            return
        self.rt.publish(SignalEvent(
            program_id=self.program.id, program=self.program.name, instance=self.name,
            port=self.port, pid=self.pid, signal=signal.Signals(signum).name, step=step,
            steps=steps, wait=wait, time=self.rt.clock.time(),
            temporary_id=self.program.temporary_id, source=self))

    # ---- re-exec and adoption ------------------------------------------------------

    def snapshot(self) -> InstanceSnapshot:
        return {
            "port": self.port, "state": self.state.value, "pid": self.pid,
            "started_at": self.started_at,
            "uptime": self.uptime(), "restarts": self.restarts, "backoff": self.backoff,
            "want": self.want, "exit_code": self.exit_code, "spawn_error": self.spawn_error,
            "capture_fds": [c.fd for c in self.captures if c.fd >= 0],
            "restart_after_stop": self._restart_after_stop,
            "retry_at": self.retry_at, "backoff_reason": self.backoff_reason,
            "starts": list(self._starts), "limit_hits": self._limit_hits,
            "streak": self._streak,
            "restart_pending": self._restart_pending, "completed": self.completed,
            "ready_at": self.ready_at, "notify_status": self.notify_status,
            "notify_stopping": self.notify_stopping, "ready_fd": self.ready_fd,
            "log_times": {"stdout": export(self.stdout_log.times if self.stdout_log else None),
                          "stderr": export(self.stderr_log.times if self.stderr_log else None)},
            "log_bytes": {stream: count.total for stream, count in self.log_bytes.items()},
        }

    def adopt(self, snap: InstanceSnapshot, foreign: bool = False) -> None:
        """Take over a live process from a previous pmd: the same pid after re-exec, or
        (foreign) a process a killed pmd started, watched through a pidfd. A fresh slot
        goes through UNKNOWN (pmd did not start what it finds) to the snapshot's state;
        those events carry the reason "adopted"."""
        if self.state != S.STOPPED or self.pid is not None:
            raise RuntimeError(f"{self.name}: only a fresh slot can adopt")
        state = ProgramState(snap["state"])
        pid = snap.get("pid")
        self.restarts = snap.get("restarts", 0)
        self.backoff = snap.get("backoff", 0)
        self.want = snap.get("want", False)
        self.exit_code = snap.get("exit_code")
        self.spawn_error = snap.get("spawn_error")
        self.started_at = snap.get("started_at")
        self._restart_after_stop = snap.get("restart_after_stop", False)
        self._starts.extend(snap.get("starts", []))
        self._limit_hits = snap.get("limit_hits", 0)
        self._streak = snap.get("streak", 0)
        self._restart_pending = snap.get("restart_pending", False)
        self.completed = snap.get("completed")
        self.ready_at = snap.get("ready_at") if state in RUNNING_STATES else None
        self.notify_status = snap.get("notify_status")
        self.notify_stopping = snap.get("notify_stopping", False)
        uptime = snap.get("uptime")
        if uptime is not None:
            self.started_mono = self.rt.clock.monotonic() - uptime
        self.adopted = True
        for stream, total in (snap.get("log_bytes") or {}).items():
            if stream in self.log_bytes:
                self.log_bytes[stream].total = total
        for stream, flat in (snap.get("log_times") or {}).items():
            if stream in ("stdout", "stderr") and flat:  # capture times of logged lines
                self.rt.saved_times.remember(self.log_file(stream), flat)
        fds = list(snap.get("capture_fds", []))
        if foreign and pid is not None and self.program.spec.logs_enabled:
            fds = _reopen_pipes(pid)
        if len(fds) == 2:
            self._ensure_logfiles()
            self.attach_captures(fds[0], fds[1], pid)
        ready_fd = snap.get("ready_fd")
        if ready_fd is not None:  # handed over by the previous image: ours to close
            if pid is not None and state in (S.STARTING, S.RUNNING) \
                    and self.ready_at is None and not foreign:
                os.set_inheritable(ready_fd, False)
                self.ready_fd = ready_fd
            else:
                _close_quietly(ready_fd)
        if pid is not None and state in RUNNING_STATES:
            self.pid = pid
            if foreign and not self.rt.children.watch_foreign(pid, self._exited):
                self.pid = None
                self._adopt_state(S.STARTING)  # gone already: a failed start
                self._exited(None)
                return
            if not foreign:
                self.rt.children.watch(pid, self._exited)
            self._follow_notify()
            self._adopt_state(state)
            readiness = self.program.spec.readiness
            if state == S.RUNNING and readiness is None:
                self.mark_ready("running")  # a no-op when the snapshot says it was
            elif readiness is not None and self.ready_at is None and state != S.STOPPING:
                # still not ready: watch again, for what is left of its timeout
                left = None if readiness.timeout_seconds is None else \
                    max(0.0, readiness.timeout_seconds - (uptime or 0.0))
                self._arm_readiness(timeout=left)
            if state == S.STARTING:
                self._later(self.program.spec.startsecs, self._running)
            elif state == S.STOPPING:
                self._later(self.program.spec.stop_seconds, self._escalate)
            return
        if state == S.BACKOFF and self.want:
            retry_at = snap.get("retry_at")
            delay = self.program.spec.retry_delay(self.backoff) if retry_at is None else \
                max(0.0, retry_at - self.rt.clock.time())
            self.retry_at = retry_at
            self.backoff_reason = snap.get("backoff_reason")
            self._adopt_state(S.BACKOFF)
            self._later(delay, self._delayed_start)
        elif state in (S.EXITED, S.FATAL):
            if state == S.FATAL:
                self.backoff_reason = snap.get("backoff_reason")  # why its starts failed
            self._adopt_state(state)
        if self._restart_pending and self.want and self.state in STOPPED_STATES:
            self._soon(self._delayed_start)  # decided by the previous pmd, not yet done

    def _adopt_state(self, state: ProgramState) -> None:
        waiting = self.retry_at, self.backoff_reason
        if self.state == S.STOPPED:
            self._set_state(S.UNKNOWN, reason="adopted")
        self.retry_at, self.backoff_reason = waiting
        self._set_state(state, self.exit_code, reason="adopted")


def follow_running(events: EventBus, track: Callable[[Instance], None],
                   untrack: Callable[[Instance], None]) -> Callable[[], None]:
    """Subscribe a watcher of running programs (health checks, memory limits): `track` when
    an instance reaches RUNNING, `untrack` when it leaves it. Returns the unsubscribe."""

    def on_event(event: Event) -> None:
        if not isinstance(event, StateEvent) or not isinstance(event.source, Instance):
            return
        if event.to_state == S.RUNNING:
            track(event.source)
        elif event.from_state == S.RUNNING:
            untrack(event.source)

    return events.subscribe(on_event, (StateEvent,), entering=(S.RUNNING,), leaving=(S.RUNNING,))


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _reopen_pipes(pid: int) -> list[int]:
    """A process we did not start (pmd was killed and started again) still writes to the
    pipes the old pmd made; opening /proc/<pid>/fd/1 and 2 gives us read ends of them."""
    fds: list[int] = []
    for target in (1, 2):
        path = f"/proc/{pid}/fd/{target}"
        try:
            if not os.readlink(path).startswith("pipe:"):
                break
            fds.append(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        except OSError:
            break
    if len(fds) != 2:
        for fd in fds:
            os.close(fd)
        return []
    return fds
