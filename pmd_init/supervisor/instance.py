"""One process slot: a program, or one port of a port-range program.

Every state change goes through `_set_state`, which checks the transition against
states.TRANSITIONS and publishes a StateEvent. The desired state (`want`) is set by the API
and by signals; the machine acts on it. Timers (startsecs, backoff, stop timeout, boot
delay) are the only clocks: nothing polls.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..logs.capture import Capture, LogFile
from ..logs.times import export, remember
from ..model.states import RUNNING_STATES, STOPPED_STATES, ProgramState, check_transition
from .events import StateEvent
from .spawn import (
    SpawnError,
    SpawnRequest,
    build_argv,
    describe_exit,
    killpg,
    program_env,
    resolve_account,
    spawn,
)

if TYPE_CHECKING:
    from .program import Program
    from .supervisor import Supervisor

log = logging.getLogger("pmd.supervisor")
S = ProgramState


class Instance:
    __slots__ = (
        "program", "port", "state", "pid", "popen", "started_at", "started_mono",
        "stopped_at", "exit_code", "spawn_error", "backoff", "restarts", "want",
        "_timer", "_waiters", "stdout_log", "stderr_log", "captures", "_restart_after_stop",
        "state_since", "health_status", "adopted", "__weakref__",
    )

    def __init__(self, program: Program, port: int | None) -> None:
        self.program = program
        self.port = port
        self.state = S.STOPPED
        self.state_since = time.time()
        self.pid: int | None = None
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        self.started_mono: float | None = None
        self.stopped_at: float | None = None
        self.exit_code: int | None = None
        self.spawn_error: str | None = None
        self.backoff = 0
        self.restarts = 0
        self.want = False
        self._timer: asyncio.TimerHandle | None = None
        self._waiters: list[tuple[frozenset[ProgramState], asyncio.Future[ProgramState]]] = []
        self.stdout_log: LogFile | None = None
        self.stderr_log: LogFile | None = None
        self.captures: list[Capture] = []
        self._restart_after_stop = False
        self.health_status = "unknown"
        self.adopted = False

    # ---- identity ------------------------------------------------------------------

    @property
    def sup(self) -> Supervisor:
        return self.program.supervisor

    @property
    def name(self) -> str:
        if self.port is None:
            return self.program.name
        return f"{self.program.name}:{self.port}"

    def uptime(self) -> float | None:
        if self.started_mono is None or self.state not in RUNNING_STATES:
            return None
        return max(0.0, time.monotonic() - self.started_mono)

    # ---- the machine ---------------------------------------------------------------

    def _set_state(self, new: ProgramState, exit_code: int | None = None) -> None:
        old = self.state
        check_transition(old, new)
        self.state = new
        self.state_since = time.time()
        self.sup.events.publish(StateEvent(
            program_id=self.program.id, program=self.program.name, instance=self.name,
            port=self.port, from_state=old, to_state=new, pid=self.pid,
            exit_code=exit_code, time=self.state_since,
            temporary_id=self.program.temporary_id,
        ))
        if self._waiters:
            keep = []
            for states, future in self._waiters:
                if new in states:
                    if not future.done():
                        future.set_result(new)
                elif not future.done():
                    keep.append((states, future))
            self._waiters = keep

    def wait_state(self, states: Iterable[ProgramState]) -> asyncio.Future[ProgramState]:
        """A future that resolves with the first state in `states` (now, or later)."""
        wanted = frozenset(states)
        future: asyncio.Future[ProgramState] = self.sup.loop.create_future()
        if self.state in wanted:
            future.set_result(self.state)
        else:
            self._waiters.append((wanted, future))
        return future

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _later(self, delay: float, callback: object) -> None:
        self._cancel_timer()
        self._timer = self.sup.loop.call_later(delay, callback)  # type: ignore[arg-type]

    # ---- commands (desired state) --------------------------------------------------

    def start(self, delay: float = 0) -> None:
        """Want it running. A stopped, exited, fatal or backing-off instance spawns now
        (or after `delay`); a stopping one starts again once it has stopped."""
        self.want = True
        if self.state == S.STOPPING:
            self._restart_after_stop = True
            return
        if self.state in (S.STARTING, S.RUNNING):
            return
        self.backoff = 0
        if delay > 0:
            self._later(delay, self._delayed_start)
        else:
            self._spawn()

    def _delayed_start(self) -> None:
        self._timer = None
        if self.want and self.state in STOPPED_STATES | {S.BACKOFF}:
            self._spawn()

    def stop(self) -> asyncio.Future[ProgramState]:
        """Want it stopped: stop signal to the group, SIGKILL after stop_timeout."""
        self.want = False
        self._restart_after_stop = False
        if self.state in (S.STARTING, S.RUNNING):
            self._begin_stop()
        elif self.state == S.BACKOFF:
            self._cancel_timer()
            self._set_state(S.STOPPED)
        elif self.state in STOPPED_STATES:
            self._cancel_timer()  # a pending boot delay
        return self.wait_state(STOPPED_STATES)

    def restart(self) -> None:
        if self.state in (S.STARTING, S.RUNNING):
            self.want = True
            self._restart_after_stop = True
            self._begin_stop()
        else:
            self.start()

    def kill_now(self) -> None:
        """Shutdown's last resort: SIGKILL the group, whatever the state."""
        self.want = False
        self._restart_after_stop = False
        if self.pid is not None:
            killpg(self.pid, signal.SIGKILL)

    def signal(self, signum: int) -> bool:
        return self.pid is not None and killpg(self.pid, signum)

    # ---- transitions driven by the OS ----------------------------------------------

    def _spawn(self) -> None:
        self._cancel_timer()
        spec = self.program.spec
        self.spawn_error = None
        self.exit_code = None
        self._set_state(S.STARTING)
        try:
            popen = self._exec()
        except SpawnError as exc:
            self.spawn_error = str(exc)
            log.error("%s: spawn error: %s", self.name, exc)
            self._to_backoff()
            return
        self.popen = popen
        self.pid = popen.pid
        self.started_at = time.time()
        self.started_mono = time.monotonic()
        self.sup.reaper.watch(popen.pid, self._exited)
        self.sup.note_spawn(self)
        if spec.startsecs <= 0:
            self._running()
        else:
            self._later(spec.startsecs, self._running)

    def _exec(self) -> subprocess.Popen[bytes]:
        spec = self.program.spec
        account = resolve_account(spec.user)
        argv = build_argv(spec.command, spec.terminal_shell)
        if self.port is not None:
            argv += [spec.effective_port_param, str(self.port)]
        env = program_env(self.sup.base_env, account, spec.environment, spec.display, self.port)
        cwd = spec.directory
        if cwd is None and account is not None and self.program.temporary_id is not None:
            cwd = account.home if os.path.isdir(account.home) else None  # quick-start rule
        out_w = err_w = None
        pipes: list[tuple[int, int]] = []
        if spec.logs_enabled:
            pipes = [Capture.make_pipe(), Capture.make_pipe()]
            out_w, err_w = pipes[0][1], pipes[1][1]
        try:
            popen = spawn(SpawnRequest(
                argv=argv, env=env, cwd=cwd, account=account,
                stdout=out_w if out_w is not None else subprocess.DEVNULL,
                stderr=err_w if err_w is not None else subprocess.DEVNULL,
            ))
        except BaseException:
            for r, w in pipes:
                os.close(r)
                os.close(w)
            raise
        if pipes:
            os.close(pipes[0][1])
            os.close(pipes[1][1])
            self._ensure_logfiles()
            self.attach_captures(pipes[0][0], pipes[1][0])
        return popen

    def _ensure_logfiles(self) -> None:
        spec = self.program.spec
        if self.stdout_log is None:
            self.stdout_log = LogFile(self.log_path("stdout"), spec.log_max_bytes, spec.log_backups)
        if self.stderr_log is None:
            self.stderr_log = LogFile(self.log_path("stderr"), spec.log_max_bytes, spec.log_backups)
        self.stdout_log.ensure_open()
        self.stderr_log.ensure_open()

    def attach_captures(self, out_fd: int, err_fd: int) -> None:
        forward_out, forward_err = self.sup.forwarders
        prefix = f"[{self.name}] ".encode()
        for fd, logfile, forward in ((out_fd, self.stdout_log, forward_out),
                                     (err_fd, self.stderr_log, forward_err)):
            self.captures.append(Capture(self.sup.loop, fd, logfile, forward, prefix,
                                         on_eof=self._capture_closed))

    def _capture_closed(self, capture: Capture) -> None:
        if capture in self.captures:
            self.captures.remove(capture)

    def log_path(self, stream: str) -> Path:
        spec = self.program.spec
        custom = spec.stdout_logfile if stream == "stdout" else spec.stderr_logfile
        if custom:
            path = Path(custom)
            if self.port is not None:
                path = path.with_name(f"{path.stem}.{self.port}{path.suffix}")
            return path
        base = self.sup.log_dir / self.program.log_folder
        if self.port is not None:
            base = base / str(self.port)
        return base / f"{stream}.log"

    def _running(self) -> None:
        self._timer = None
        if self.state != S.STARTING:
            return
        self.backoff = 0
        self._set_state(S.RUNNING)
        self.sup.note_running(self)

    def _to_backoff(self) -> None:
        spec = self.program.spec
        self.backoff += 1
        self._set_state(S.BACKOFF, self.exit_code)
        if self.backoff > spec.startretries or not self.want:
            if self.want:
                self._set_state(S.FATAL, self.exit_code)
                self.want = False
                self.sup.note_gone(self)
            else:
                self._set_state(S.STOPPED)
            return
        # supervisord's backoff: 1 s, 2 s, 3 s ... after each failed start
        self._later(float(self.backoff), self._delayed_start)

    def _exited(self, status: int | None) -> None:
        """The reaper saw our pid exit (status None: exit of an adopted non-child)."""
        self._cancel_timer()
        code = describe_exit(status) if status is not None else None
        if self.popen is not None and status is not None:
            self.popen.returncode = os.waitstatus_to_exitcode(status)
        pid = self.pid
        self.exit_code = code
        self.stopped_at = time.time()
        spec = self.program.spec
        if self.state == S.STOPPING:
            if pid is not None:
                killpg(pid, signal.SIGKILL)  # stragglers of the group
            self.pid = None
            self.popen = None
            self._set_state(S.STOPPED, code)
            if self._restart_after_stop and self.want:
                self._restart_after_stop = False
                self.restarts += 1
                self._spawn()
            return
        self.pid = None
        self.popen = None
        if self.state == S.STARTING:  # died before startsecs: a failed start
            self._to_backoff()
            return
        if self.state != S.RUNNING:
            return
        self._set_state(S.EXITED, code)
        expected = code is not None and code < 128 and spec.expects_exit(code)
        if self.want and (spec.autorestart == "true"
                          or (spec.autorestart == "unexpected" and not expected)):
            # Restart from the exit event itself: no tick, no delay after a good run.
            self.restarts += 1
            self._spawn()
            return
        self.want = False
        self.sup.note_gone(self)

    def _begin_stop(self) -> None:
        spec = self.program.spec
        self._cancel_timer()
        self._set_state(S.STOPPING)
        if self.pid is None or not killpg(self.pid, spec.stop_signum):
            return
        if spec.stop_timeout > 0:
            self._later(spec.stop_timeout, self._escalate)
        else:
            self._escalate()

    def _escalate(self) -> None:
        self._timer = None
        if self.state == S.STOPPING and self.pid is not None:
            log.warning("%s did not stop in %ss: SIGKILL", self.name,
                        self.program.spec.stop_timeout)
            killpg(self.pid, signal.SIGKILL)

    # ---- re-exec and adoption ------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        return {
            "port": self.port, "state": self.state.value, "pid": self.pid,
            "started_at": self.started_at,
            "uptime": self.uptime(), "restarts": self.restarts, "backoff": self.backoff,
            "want": self.want, "exit_code": self.exit_code, "spawn_error": self.spawn_error,
            "capture_fds": [c.fd for c in self.captures if c.fd >= 0],
            "restart_after_stop": self._restart_after_stop,
            "log_times": {"stdout": export(self.stdout_log.times if self.stdout_log else None),
                          "stderr": export(self.stderr_log.times if self.stderr_log else None)},
        }

    def adopt(self, snap: dict[str, object], foreign: bool = False) -> None:
        """Take over a live process from a previous pmd (same pid after re-exec)."""
        state = ProgramState(str(snap["state"]))
        pid = snap.get("pid")
        self.restarts = int(snap.get("restarts") or 0)  # type: ignore[call-overload]
        self.backoff = int(snap.get("backoff") or 0)  # type: ignore[call-overload]
        self.want = bool(snap.get("want"))
        self.exit_code = snap.get("exit_code")  # type: ignore[assignment]
        self.spawn_error = snap.get("spawn_error")  # type: ignore[assignment]
        self.started_at = snap.get("started_at")  # type: ignore[assignment]
        self._restart_after_stop = bool(snap.get("restart_after_stop"))
        uptime = snap.get("uptime")
        if isinstance(uptime, (int, float)):
            self.started_mono = time.monotonic() - uptime
        self.adopted = True
        log_times = snap.get("log_times")
        if isinstance(log_times, dict):  # capture times of the lines already logged
            for stream, flat in log_times.items():
                if stream in ("stdout", "stderr") and flat:
                    remember(str(self.log_path(stream)), flat)
        fds = [int(fd) for fd in snap.get("capture_fds") or []]  # type: ignore[attr-defined]
        if foreign and isinstance(pid, int) and self.program.spec.logs_enabled:
            fds = _reopen_pipes(pid)
        if len(fds) == 2:
            self._ensure_logfiles()
            self.attach_captures(fds[0], fds[1])
        if isinstance(pid, int) and state in RUNNING_STATES:
            self.pid = pid
            self.state = state
            watch = self.sup.reaper.watch_foreign if foreign else self.sup.reaper.watch
            if foreign and not watch(pid, self._exited):
                self.pid = None
                self.state = S.STARTING  # so that _exited's path is a failed start
                self._exited(None)
                return
            if not foreign:
                watch(pid, self._exited)
            if state == S.STARTING:
                self._later(self.program.spec.startsecs, self._running)
            elif state == S.RUNNING:
                self.sup.note_running(self)
            elif state == S.STOPPING:
                self._later(self.program.spec.stop_timeout, self._escalate)
            return
        self.state = state if state in STOPPED_STATES else S.STOPPED
        if state == S.BACKOFF and self.want:
            self.state = S.BACKOFF
            self._later(float(max(self.backoff, 1)), self._delayed_start)


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
