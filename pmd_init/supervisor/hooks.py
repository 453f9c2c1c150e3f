"""Local event hooks: a program's `hooks` run a command on its state changes and READY
(supervisord's event listeners, s6's finish scripts), fed by the event stream.

Each run is `/bin/sh -c COMMAND` in a session of its own, with the event as JSON on stdin
(the webhook payload's shape) and in `PMD_EVENT_*` variables. Nothing of it can hold the
supervisor up: a run is spawned and watched through the reaper like a program, its stdin
is written at once (an event is far smaller than a pipe's buffer), and:

- a program's hooks run one at a time, in the order of its events: a hook sees EXITED
  after the RUNNING before it;
- at most MAX_RUNNING runs at once over all programs, and MAX_QUEUED waiting; an event
  past that is dropped and counted, never queued without bound;
- a run past its `timeout_seconds` has its process group killed;
- every result is counted (`ok`, `failed`, `timeout`, `dropped`, `error` when it could
  not start) and each failure logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..model.hooks import HookSpec
from .events import Event, EventBus, ReadyEvent, StateEvent
from .runtime import Child, ChildWatcher
from .spawn import SpawnError, SpawnRequest, describe_exit, killpg, spawn
from .webhooks import matches, payload, ready_payload, reported

log = logging.getLogger("pmd.hooks")

MAX_RUNNING = 4
MAX_QUEUED = 256
RESULTS = ("ok", "failed", "timeout", "dropped", "error")


@dataclass(frozen=True, slots=True)
class HookRun:
    lane: str  # the program: its runs go one at a time, in order
    hook: HookSpec
    body: bytes
    env: dict[str, str]


class HookRunner:
    def __init__(self, loop: asyncio.AbstractEventLoop, events: EventBus,
                 children: ChildWatcher, base_env: Mapping[str, str],
                 hooks_for: Callable[[StateEvent | ReadyEvent], list[HookSpec]],
                 spawner: Callable[[SpawnRequest], Child] = spawn) -> None:
        self.loop = loop
        self.children = children
        self.base_env = base_env
        self.hooks_for = hooks_for
        self.spawner = spawner
        self.hostname = socket.gethostname()
        self.results = dict.fromkeys(RESULTS, 0)
        self._lanes: dict[str, deque[HookRun]] = {}
        self._busy: set[str] = set()  # lanes with a run under way
        self._running: dict[int, asyncio.TimerHandle] = {}  # pid -> its timeout
        self._killed: set[int] = set()  # runs past their timeout, until they are reaped
        self._queued = 0
        self._closed = False
        self._unsubscribe = events.subscribe(self.on_event, (StateEvent, ReadyEvent))

    def counters(self) -> dict[str, int]:
        return {**self.results, "running": len(self._running), "queued": self._queued}

    def on_event(self, any_event: Event) -> None:
        if self._closed or not isinstance(any_event, StateEvent | ReadyEvent) \
                or not self.hooks_for(any_event):  # most programs have none: done
            return
        found = reported(any_event)
        if found is None:
            return
        name, event = found
        hooks = [h for h in self.hooks_for(event) if matches(h.events, name)]
        if not hooks:
            return
        body = payload(event, self.hostname) if isinstance(event, StateEvent) \
            else {**ready_payload(event, self.hostname), "event": "READY"}
        env = {**self.base_env, "PMD_EVENT": name,
               **{f"PMD_EVENT_{key.upper()}": "" if value is None else str(value)
                  for key, value in body.items()}}
        data = json.dumps(body).encode() + b"\n"
        lane = event.temporary_id or event.program
        for hook in hooks:
            if self._queued >= MAX_QUEUED:
                self.results["dropped"] += 1
                log.warning("%s: hook %r dropped: %d runs are waiting", lane, hook.command,
                            self._queued)
                continue
            self._lanes.setdefault(lane, deque()).append(HookRun(lane, hook, data, env))
            self._queued += 1
        self._next()

    def _next(self) -> None:
        """Start what may start: a lane's first run, while fewer than MAX_RUNNING run."""
        for lane in list(self._lanes):
            if len(self._running) >= MAX_RUNNING:
                return
            if lane in self._busy:
                continue
            runs = self._lanes[lane]
            run = runs.popleft()
            if not runs:
                del self._lanes[lane]
            self._queued -= 1
            self._start(run)

    def _start(self, run: HookRun) -> None:
        read, write = os.pipe2(os.O_CLOEXEC)
        try:
            child = self.spawner(SpawnRequest(
                argv=["/bin/sh", "-c", run.hook.command], env=run.env, stdin_fd=read,
                stdout=subprocess.DEVNULL, stderr=None))
        except SpawnError as exc:
            os.close(read)
            os.close(write)
            self.results["error"] += 1
            log.warning("%s: hook %r could not start: %s", run.lane, run.hook.command, exc)
            return
        os.close(read)
        try:  # smaller than the pipe's buffer: never blocks; a hook that exited is EPIPE
            os.write(write, run.body)
        except OSError:
            pass
        finally:
            os.close(write)
        pid = child.pid
        self._busy.add(run.lane)
        self._running[pid] = self.loop.call_later(run.hook.timeout_seconds,
                                                  self._timed_out, pid, run)

        def exited(status: int | None) -> None:
            child.returncode = os.waitstatus_to_exitcode(status) if status is not None else -1
            self._finished(pid, run, None if status is None else describe_exit(status))

        self.children.watch(pid, exited)

    def _timed_out(self, pid: int, run: HookRun) -> None:
        log.warning("%s: hook %r ran past %g s: killed", run.lane, run.hook.command,
                    run.hook.timeout_seconds)
        self._killed.add(pid)
        self.results["timeout"] += 1
        killpg(pid, signal.SIGKILL)

    def _finished(self, pid: int, run: HookRun, code: int | None) -> None:
        timer = self._running.pop(pid, None)
        if timer is not None:
            timer.cancel()
        if pid in self._killed:
            self._killed.discard(pid)
        else:
            if code == 0:
                self.results["ok"] += 1
            else:
                self.results["failed"] += 1
                log.warning("%s: hook %r failed: exit %s", run.lane, run.hook.command, code)
        self._busy.discard(run.lane)
        if not self._closed:
            self._next()

    def close(self) -> None:
        """Shutdown: nothing new starts, waiting runs are dropped, running ones killed."""
        self._closed = True
        self._unsubscribe()
        self._lanes.clear()
        self._queued = 0
        for pid, timer in list(self._running.items()):
            timer.cancel()
            killpg(pid, signal.SIGKILL)
