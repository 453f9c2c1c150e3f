"""pmd_init: the init process. Owns the loop, the signals, the reaper, the main command,
the supervisor and the HTTP server, and decides the exit code.

Order matters at start: signal handlers first (a PID 1 without a TERM handler ignores
`docker stop`), then the reaper, then the boot programs, and only then the HTTP stack,
whose import costs a quarter of a second that programs should not wait for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..api.verdicts import Verdicts
from ..settings import Settings, parse_settings
from . import signals
from .early import REEXEC_ENV, EarlyBoot, plan_document, plan_key, program_base_env, raise_nofile
from .logsink import LineFormatter, LoopTurnHandler, info_line
from .maincmd import MainCommand
from .reaper import Reaper
from .signals import SignalQueue

log = logging.getLogger("pmd")

class Init:
    def __init__(self, settings: Settings, base_env: dict[str, str] | None = None,
                 inherited_mask: frozenset[int] = frozenset(),
                 early: EarlyBoot | None = None) -> None:
        self.settings = settings
        #: What the boot plan started before pmd's imports (pid1/early.py), if anything.
        self.early = early if early is not None else EarlyBoot(settings, inherited_mask)
        #: The signal mask pmd's caller gave it, reset at once (see main()).
        self.inherited_mask = inherited_mask
        #: Taken before pmd adds anything of its own to os.environ (see main()).
        self.base_env = program_base_env(dict(os.environ) if base_env is None else base_env)
        self.started_at = time.time()
        self.exit_code = 0
        self.main: MainCommand | None = None
        self.main_exit: int | None = None
        self.config_problem: str | None = None
        self.reload_report: dict[str, Any] | None = None
        self._done: asyncio.Future[str] | None = None
        self._shutting_down = False
        self._force = False
        self.api: Any = None
        #: glibc's malloc_trim once the start is over (heap_trimmer), for what a reload of
        #: programs.json leaves behind too.
        self.trim_heap: Callable[[int], int] | None = None
        self.identity_store: Any = None
        self.supervisor: Any = None
        self.service: Any = None
        #: /livez, /readyz, /startupz, for the API and the probe port alike.
        self.verdicts = Verdicts(self)
        self.probe_port: Any = None
        #: Loop time of the signal that began the shutdown, and the timer of its
        #: shutdown_delay while that runs.
        self._term_at: float | None = None
        self._drain_timer: asyncio.TimerHandle | None = None

    @property
    def identities(self) -> Any:
        """The identities in force (identities.json), for the API's access checks."""
        if self.identity_store is not None:
            return self.identity_store.current
        from ..model.access import Identities

        return Identities()

    @property
    def identities_problem(self) -> str | None:
        return self.identity_store.problem if self.identity_store is not None else None

    # ---- life cycle ----------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self._done = loop.create_future()
        s = self.settings
        ignored = signals.inherited_ignored()
        self.signals = SignalQueue(loop, self._dispatch)
        self.signals.install()
        signals.reset_mask()  # after a re-exec: what arrived meanwhile is delivered now
        self.signals.relay_waited()
        self._set_pdeathsig()
        self.reaper = Reaper(loop, warn_orphans=s.warn_reap)
        self._become_subreaper()
        raise_nofile()
        if s.command:
            self.main = MainCommand(s.command, self.base_env, single_child=s.single_child,
                                    rewrite=s.rewrite, job_control=s.job_control,
                                    ignored=ignored,
                                    mask=self.inherited_mask if s.keep_mask else ())
        if not s.programs:
            return await self._run_bare()
        for folder, what in ((s.state_dir, "state dir (--state-dir)"),
                             (s.log_dir, "log dir (--log-dir)")):
            _prepare_folder(folder, what)

        from ..service import Service
        from ..store.identities import IdentityStore
        from ..store.programs import ProgramStore
        from ..supervisor.events import ReadyEvent, SignalEvent, StateEvent, WaitingEvent
        from ..supervisor.supervisor import Supervisor

        self.identity_store = IdentityStore(s.config_dir)
        self.identity_store.load()
        store = ProgramStore(s.config_dir, s.state_dir)
        # Before anything writes: every write is synchronous, so a temp file now is one
        # that a killed pmd left behind, whatever pid it names (ours too, after a re-exec).
        store.storage.remove_stale_temps()
        state = self._take_reexec_state()
        handed_over: list[Any] = []
        if state is not None:
            from ..api.listeners import take_handed_over

            handed_over = take_handed_over(state.get("listeners"))
        if state is not None and isinstance(state.get("base_env"), dict):
            self.base_env = state["base_env"]  # what programs got before, unchanged
        probe_sock = None
        if s.probe_address is not None:
            # Bound before any program starts: a port that cannot be had ends the start.
            from ..api.listeners import bind_probe

            try:
                probe_sock = bind_probe(s.probe_address,
                                        state.get("probe_fd") if state is not None else None)
            except OSError as exc:
                host, port = s.probe_address
                log.error("probe port %s:%d cannot be bound: %s; not starting",
                          host, port, exc.strerror or exc)
                for listener in handed_over:
                    listener.sock.close()
                for child in self.early.started:
                    child.discard()
                return 1
        targets, target_problems = _log_targets(s.config_dir, self.base_env)
        for problem in target_problems:
            log.error("%s (the other log targets load)", problem)
        self.supervisor = sup = Supervisor(
            loop, self.reaper, store, s.state_dir, s.log_dir, self.base_env,
            forward=s.log_forward, log_roots=s.log_roots, ephemeral_grace=s.ephemeral_grace,
            memory_interval=s.memory_interval, webhook_ca_file=s.webhook_ca_file,
            log_targets=targets)
        sup.log_target_problems = target_problems
        sup.on_fatal_exit = self._program_gone
        self.service = Service(sup)
        # every kind with a line of its own (a health verdict has none)
        sup.events.subscribe(self._log_event, (StateEvent, ReadyEvent, SignalEvent,
                                               WaitingEvent))
        if state is not None:
            store.load()  # which file each program lives in (programs.d), for API edits
            sup.adopt(state["supervisor"])
            self._adopt_main(state.get("main"))
            self.started_at = state.get("started_at", self.started_at)
            log.info("re-executed: %d programs adopted", len(sup.programs) + len(sup.ephemeral))
        else:
            if self.early.key is None and s.boot_plan:
                self.early.key = _plan_key(s)  # of the files as they are before the load
            specs = store.load()
            if store.report.problem:
                log.error("booting from %s: %s", store.report.source, store.report.problem)
            self.config_problem = "; ".join(
                p for p in (store.report.problem, *store.dropins.problems, *target_problems)
                if p) or None
            sup.load(specs)
            if os.getpid() != 1:  # as PID 1 a fresh start is a fresh container
                sup.readopt_survivors()
            sup.reconcile_ephemeral()
            taken = sup.boot(self.early.started)
            self._report_boot_plan(taken)
            # Each was taken over or killed: the argv and environment they were started
            # with (1 KiB a program) are not kept for pmd's lifetime.
            self.early.started = []
            if s.command:
                self._spawn_main()
            if s.boot_plan and self.early.key is not None and self.config_problem is None:
                self._write_boot_plan(self.early.key)
        self.reaper.reap()  # exits that happened while we were starting (or exec'ing)
        self._report_budget()
        if probe_sock is not None:
            self._serve_probes(probe_sock)

        trim: Callable[[int], int] | None = None
        if not s.api or (s.port < 0 and s.socket is None):
            # Nothing of the HTTP stack is imported: no listener was asked for.
            log.info("HTTP API: none (%s)", "--no-api" if not s.api else "no port, no socket")
        elif self._done.done():
            log.info("HTTP API: not started, pmd is already shutting down")
        else:
            # Importing the HTTP stack takes a few hundred milliseconds of CPU. Done on the
            # loop it would hold up every SIGCHLD and restart meanwhile (hundreds of
            # zombies in a burst); in a short-lived thread the loop keeps turning.
            self.api, trim = await _in_thread(
                lambda: (_make_api(self, s, handed_over), heap_trimmer()))
            try:
                await self.api.start()
            except OSError as exc:
                log.error("HTTP API not started: %s", exc)
                self.api = None
        for listener in handed_over:
            # Not served after all (no API, or it failed): refuse clients rather than
            # leave them waiting in a backlog nobody reads. A no-op for those in use.
            if self.api is None or listener not in self.api.listeners:
                listener.sock.close()
        # The start's transient objects (programs.json as read and validated, the HTTP
        # stack's set-up, in the import thread's heap too) leave free pages inside glibc's
        # heaps that nothing may reuse: handed back once the start is over.
        self.trim_heap = trim if trim is not None else heap_trimmer()
        if self.trim_heap is not None:
            self.trim_heap(0)
        mode = await self._done
        if mode == "reexec":
            await self._reexec()  # returns only if exec failed
        return await self._shutdown()

    def _report_boot_plan(self, taken: int) -> None:
        """One line: whether a boot plan started programs before pmd's imports."""
        early = self.early
        if early.plan is not None:
            log.info("boot plan %s: %d of %d programs started before pmd's imports%s",
                     early.plan, taken, len(early.started),
                     "".join(f"; {problem}" for problem in early.problems))
        elif early.notes:
            log.info("boot plan: none used (%s)%s", "; ".join(early.notes),
                     f"; {taken} of {len(early.started)} programs started once the "
                     "configuration validated, before pmd's other imports"
                     if early.validated else "")

    def _write_boot_plan(self, key: str) -> None:
        """The boot plan of this configuration, into the state dir, for the next start
        (unchanged when it holds already)."""
        path = self.settings.state_dir / "boot-plan.json"
        entries = self.supervisor.boot_plan()
        if not entries:  # nothing a plan could start: no file (a state dir can be small)
            return
        document = plan_document(key, entries)
        import orjson

        data = orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
        try:
            if path.read_bytes() == data:
                return
        except OSError:
            pass
        try:
            self.supervisor.storage.write_bytes(path, data, durable=False)
        except Exception as exc:  # noqa: BLE001 - a cache: a start goes on without it
            log.warning("boot plan not written to %s: %s", path, exc)

    async def _run_bare(self) -> int:
        """No programs.json, no API, no state: the main command and the signals only (a
        compatibility start, tini's or dumb-init's command line)."""
        if self.main is not None:
            self._spawn_main()
        if self.settings.compat == "dumb-init":
            # dumb-init's way: the command keeps the directory, the init lets go of it, so
            # that it holds no mount busy. A bare start spawns nothing else that needs it.
            os.chdir("/")
        self.reaper.reap()
        assert self._done is not None
        mode = await self._done
        assert mode == "shutdown"  # nothing can ask for a re-exec without the API
        return await self._shutdown()

    def _set_pdeathsig(self) -> None:
        signum = self.settings.pdeathsig
        if signum is None:
            return
        try:
            import prctl

            prctl.set_pdeathsig(signum)
        except (ImportError, OSError) as exc:
            log.warning("cannot set the parent-death signal (%s)", exc)

    def _become_subreaper(self) -> None:
        if os.getpid() == 1:
            return
        try:
            import prctl

            prctl.set_child_subreaper(True)
        except (ImportError, OSError) as exc:
            log.warning("cannot become a child subreaper (%s): orphans go to PID 1", exc)

    # ---- signals -------------------------------------------------------------------

    def _dispatch(self, signums: list[int]) -> None:
        """Every signal but CHLD is passed on to the main command (through the rewrite
        table); then pmd acts on the few that mean something to it, by name."""
        for signum in signums:
            if signum == signal.SIGCHLD:
                self.reaper.reap()
                continue
            if self.main is not None:
                self.main.forward(signum)
            if not self.settings.own_signals:
                continue
            try:
                name = signal.Signals(signum).name.lower()
            except ValueError:
                continue  # a real-time signal: passed on only
            handler = getattr(self, f"handle_{name}", None)
            if handler is not None:
                handler()

    def handle_sigterm(self) -> None:
        """Graceful shutdown, after `shutdown_delay` when one is set (a second signal
        skips what is left of it); a second TERM/INT/QUIT during shutdown kills at once."""
        if self._term_at is None:
            self._term_at = self.loop.time()
        if self._drain_timer is not None:
            log.info("second signal: the shutdown delay is skipped")
            self.request_shutdown()
            return
        if self._shutting_down:
            self._force_kill()
        elif self.settings.shutdown_delay > 0 and self.supervisor is not None \
                and self._done is not None and not self._done.done():
            self._begin_delay()
            return
        self.request_shutdown()

    handle_sigint = handle_sigterm
    handle_sigquit = handle_sigterm

    def _begin_delay(self) -> None:
        """The orchestrator's endpoints may still send traffic for a while after its TERM
        (they learn of it from /readyz, or from the pod's deletion, asynchronously): say
        not ready at once and keep serving, then stop."""
        delay = self.settings.shutdown_delay
        self.verdicts.stopping_since = time.time()
        log.info("shutdown in %g s: /readyz says 503 from now on, programs keep running "
                 "(a second signal skips the wait)", delay)
        self._drain_timer = self.loop.call_later(delay, self.request_shutdown)

    def handle_sigusr2(self) -> None:
        """A test hook (PMD_TEST_WEDGE): block the loop, as a wedged pmd would be."""
        seconds = self.settings.wedge_seconds
        if seconds > 0:
            log.warning("PMD_TEST_WEDGE: blocking the loop for %g s", seconds)
            time.sleep(seconds)
            log.warning("PMD_TEST_WEDGE: the loop runs again")

    def handle_sighup(self) -> None:
        """Reload programs.json: start added, stop removed, restart changed."""
        from ..store.programs import ConfigError

        if self.supervisor is None:
            return
        self._reload_access()
        try:
            specs = self.supervisor.store.reread()
        except (ConfigError, OSError) as exc:
            self.config_problem = f"reload refused: {exc}"
            log.error("SIGHUP: programs.json not reloaded: %s", exc)
            return
        # programs.d's problems: those files or programs are left out, the rest applies;
        # log_targets.json is read once, at start: its problems stay until a restart
        self.config_problem = "; ".join((*self.supervisor.store.dropins.problems,
                                         *self.supervisor.log_target_problems)) or None
        if self.service is None:
            return

        def applied(task: asyncio.Task[dict[str, list[str]]]) -> None:
            if task.cancelled() or task.exception() is not None:
                return  # the service's tasks log what failed
            self.reload_report = report = task.result()
            log.info("SIGHUP: reloaded programs.json: %s",
                     {k: v for k, v in report.items() if v and k != "kept"})
            if self.trim_heap is not None:  # every program's spec was read and compared
                self.trim_heap(0)

        self.service.apply_config(specs).add_done_callback(applied)

    def _reload_access(self) -> None:
        """identities.json and the TLS files, re-read; what does not load keeps the last
        good one in force."""
        if self.identity_store is not None:
            self.identity_store.load()
        if self.api is not None:
            self.api.reload_access()

    def handle_sigusr1(self) -> None:
        """Reopen every log file (after an outside rotation)."""
        if self.supervisor is None:
            return
        for inst in self.supervisor.instances():
            for logfile in (inst.stdout_log, inst.stderr_log):
                if logfile is not None:
                    logfile.reopen()

    # ---- requests from the API and the supervisor ----------------------------------

    def request_shutdown(self, code: int | None = None) -> None:
        if code is not None and not self._shutting_down:
            self.exit_code = code
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        if self.verdicts.stopping_since is None:
            self.verdicts.stopping_since = time.time()
        self._shutting_down = True
        if self._done is not None and not self._done.done():
            self._done.set_result("shutdown")

    def request_reexec(self) -> bool:
        if (self._shutting_down or self._done is None or self._done.done()
                or self.supervisor is None or self._drain_timer is not None):
            return False
        self._done.set_result("reexec")
        return True

    def _program_gone(self, inst: Any) -> None:
        code = inst.exit_code if inst.exit_code is not None else 1
        log.warning("%s is gone for good (%s) and shuts the container down with code %d",
                    inst.name, inst.state, code)
        self.request_shutdown(code)

    def _log_event(self, event: Any) -> None:
        if log.isEnabledFor(logging.INFO):
            line = event.log_line()
            if line is not None:
                info_line(log, line)

    # ---- the main command ----------------------------------------------------------

    @property
    def main_pid(self) -> int | None:
        return self.main.pid if self.main is not None else None

    def _spawn_main(self) -> None:
        from ..supervisor.spawn import SpawnError

        assert self.main is not None
        try:
            pid = self.main.spawn()
        except SpawnError as exc:
            self.main_exit = _compat_exec_code(self.settings.compat, exc.exit_code)
            _report_exec_failure(self.settings, exc)
            self.request_shutdown(self.settings.remap_exit.get(self.main_exit,
                                                               self.main_exit))
            return
        log.debug("main command %s started with pid %d", self.settings.command[0], pid)
        self.reaper.watch(pid, self._main_exited)

    def _adopt_main(self, main: dict[str, Any] | None) -> None:
        if main and isinstance(main.get("pid"), int) and self.main is not None:
            self.main.adopt(main["pid"])
            self.reaper.watch(main["pid"], self._main_exited)

    def _main_exited(self, status: int | None) -> None:
        from ..supervisor.spawn import describe_exit

        code = describe_exit(status) if status is not None else 1
        self.main_exit = code
        if self.main is not None:
            self.main.exited()
        log.info("main command exited with %d", code)
        mapped = self.settings.remap_exit.get(code, code)
        self.exit_code = mapped
        self.request_shutdown()

    # ---- shutdown ------------------------------------------------------------------

    def shutdown_plan(self) -> Any:
        """The shutdown's worst case against its budget (model/budget.py), for health."""
        from ..model.budget import plan_shutdown

        s = self.settings
        specs = self.supervisor.specs() if self.supervisor is not None else []
        return plan_shutdown(specs, delay=s.shutdown_delay, grace=s.grace,
                             termination_grace=s.termination_grace)

    def _report_budget(self) -> None:
        plan = self.shutdown_plan()
        log.info("shutdown: worst case %g s in %d stop group(s), delay %g s, grace %g s%s",
                 plan.worst_case, len(plan.waves), plan.delay, plan.grace,
                 "" if plan.termination_grace is None
                 else f", termination grace {plan.termination_grace:g} s")
        if plan.problem is not None:
            log.warning("shutdown budget: %s", plan.problem)

    def _serve_probes(self, sock: Any) -> None:
        from ..api.probeport import ProbePort

        names = self.settings.api_key is None

        def answer(path: str, verbose: bool) -> tuple[int, dict[str, Any]]:
            return self.verdicts.answer(path, verbose=verbose, names=names)

        self.probe_port = ProbePort(sock, self.loop, answer)
        self.probe_port.start()
        host, port = self.probe_port.address
        log.info("probe port on http://%s:%d (/livez, /readyz, /startupz)", host, port)

    def _budget_deadline(self) -> float:
        """Loop time by which every program must be stopped: --grace from now, and
        within the orchestrator's budget (counted from its signal, the delay included)
        when pmd knows it."""
        from ..model.budget import EXIT_MARGIN

        loop = self.loop
        s = self.settings
        deadline = loop.time() + s.grace
        if s.termination_grace is not None:
            since = loop.time() if self._term_at is None else self._term_at
            deadline = min(deadline, since + s.termination_grace - EXIT_MARGIN)
        return max(deadline, loop.time())

    async def _shutdown(self) -> int:
        self._shutting_down = True
        loop = self.loop
        began = loop.time()
        deadline = self._budget_deadline()
        killed: list[str] = []
        if self.api is not None:
            await self.api.close()  # refuse new connections; in-flight requests finish below
        if self.service is not None:
            # Operations under way (a reload, a reset) end here; stopping everything follows.
            await self.service.tasks.close()
        if self.supervisor is not None:
            killed = await self.supervisor.shutdown(deadline)
        main = self.main
        if main is not None and main.pid is not None:
            waiter: asyncio.Future[None] = loop.create_future()
            previous = self._main_exited

            def exited(status: int | None) -> None:
                previous(status)
                if not waiter.done():
                    waiter.set_result(None)

            self.reaper.watch(main.pid, exited)
            # asyncio.wait, not wait_for: wait_for cancels the future on its timeout, and
            # the wait after the SIGKILL below would then raise CancelledError.
            if self.settings.own_signals:
                await asyncio.wait({waiter}, timeout=max(0.0, deadline - loop.time()))
            else:
                await waiter  # tini's way: the command decides when it is done
            if not waiter.done():
                log.warning("main command did not exit within the grace period: SIGKILL")
                main.kill()
                killed.append("main command")
                await asyncio.wait({waiter}, timeout=2.0)
        if self.api is not None:
            await self.api.stop(timeout=max(0.1, min(1.0, deadline - loop.time())))
        if self.supervisor is not None:
            self.supervisor.save_ephemeral()
        if self.probe_port is not None:
            self.probe_port.close()
        since = self._term_at if self._term_at is not None else began
        log.info("shutdown took %.2f s (%.2f s of delay, %.2f s stopping); killed: %s",
                 loop.time() - since, began - since, loop.time() - began,
                 ", ".join(killed) or "none")
        log.info("pmd exits with %d", self.exit_code)
        return self.exit_code

    def _force_kill(self) -> None:
        log.warning("second signal: killing everything now")
        if self.supervisor is not None:
            self.supervisor.kill_all()
        if self.main is not None:
            self.main.kill()

    # ---- re-exec -------------------------------------------------------------------

    @property
    def _reexec_path(self) -> Path:
        return self.settings.state_dir / "reexec.json"

    def _take_reexec_state(self) -> dict[str, Any] | None:
        marker = os.environ.pop(REEXEC_ENV, None)
        if not marker:
            return None
        import orjson

        path = Path(marker)
        try:
            state = orjson.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            log.error("re-exec state unreadable (%s): starting fresh", exc)
            return None
        finally:
            path.unlink(missing_ok=True)
        return state if isinstance(state, dict) else None

    async def _reexec(self) -> None:
        """Replace this process image with a new pmd, same pid: children stay ours, their
        log pipes and the API's listening sockets stay open (handed over by number),
        timers resume."""
        log.info("re-executing pmd in place")
        # From here a HUP or TERM waits for the new image (the mask and pending signals
        # survive execve): acted on now, its work (a reload's task) would be cut off by
        # the exec. Exits are still reaped while the operations under way settle.
        signal.pthread_sigmask(signal.SIG_BLOCK, set(signals.HANDLED) - {signal.SIGCHLD})
        listeners: list[dict[str, Any]] = []
        # A reset cut off by the exec would leave the defaults saved and not running; a
        # reload cut off is undone by the new pmd (its replacement is stopped).
        await self.service.tasks.settle(self.settings.grace)
        if self.api is not None:
            # Accepted requests are answered first; the listening sockets go along, so
            # clients arriving from now on wait in the backlog for the next pmd.
            listeners = await self.api.hand_over()
        probe_fd = None
        if self.probe_port is not None:
            # The listening socket goes along, like the API's: a probe meanwhile waits
            # in its backlog for the next pmd instead of being refused.
            self.probe_port.close(keep_socket=True)
            probe_fd = self.probe_port.sock.fileno()
        self.reaper.reap()
        state = {
            "supervisor": self.supervisor.snapshot(),
            "probe_fd": probe_fd,
            "main": {"pid": self.main_pid} if self.main_pid else None,
            "started_at": self.started_at,
            "base_env": self.base_env,
            "listeners": listeners,
        }
        fds = self.supervisor.capture_fds()
        try:
            self.supervisor.storage.write_json(self._reexec_path, state)
            for fd in fds:
                self.loop.remove_reader(fd)
                os.set_inheritable(fd, True)
            for listener in listeners:  # nobody is spawned from here to the exec
                os.set_inheritable(listener["fd"], True)
            if probe_fd is not None:
                os.set_inheritable(probe_fd, True)
            for fd in self.supervisor.readiness_fds():
                os.set_inheritable(fd, True)
            for handler in logging.getLogger("pmd").handlers:
                handler.flush()  # the lines of this loop turn, before the image goes
            for fd in self.supervisor.socket_fds():
                os.set_inheritable(fd, True)
            sys.stdout.flush()
            sys.stderr.flush()
            # Held, not lost and not fatal: between the exec and the new image's handlers
            # (a few hundred ms of imports) a HUP or TERM at its default action would kill
            # pmd. The mask and pending signals survive execve; the new pmd unblocks them
            # once its handlers are in.
            signal.pthread_sigmask(signal.SIG_BLOCK, signals.HANDLED)
            self.signals.restore()
            env = dict(os.environ)
            env[REEXEC_ENV] = str(self._reexec_path)
            argv = list(sys.orig_argv)
            os.execve(sys.executable, [sys.executable, *argv[1:]], env)
        except OSError as exc:
            log.error("re-exec failed: %s; carrying on", exc)
            self.signals.install()
            signals.reset_mask()
            for fd in self.supervisor.socket_fds():
                os.set_inheritable(fd, False)
            self.supervisor.arm_activations()  # hand-over stopped watching the sockets
            for inst in self.supervisor.everything():
                for capture in inst.captures:
                    if capture.fd >= 0:
                        os.set_inheritable(capture.fd, False)
                        self.loop.add_reader(capture.fd, capture._readable)
            if self.api is not None:
                await self.api.take_back()
            if self.probe_port is not None:
                os.set_inheritable(self.probe_port.sock.fileno(), False)
                self._serve_probes(self.probe_port.sock)
            self._done = self.loop.create_future()
            mode = await self._done
            if mode == "reexec":
                await self._reexec()


def _log_targets(config_dir: Path, env: dict[str, str]) -> tuple[list[Any], list[str]]:
    """The log targets of log_targets.json as the supervisor's shippers take them, and
    the problems of those that were refused. Without the file nothing is imported: the
    targets' model costs pydantic a few milliseconds to build, on the way to the boot."""
    from ..store.logtargets import LOG_TARGETS_FILE

    if not (config_dir / LOG_TARGETS_FILE).exists():
        return [], []
    from ..logs.shipping import ShipTarget
    from ..model.logtargets import parse_http_url, parse_syslog_address
    from ..store.logtargets import load_log_targets

    specs, problems = load_log_targets(config_dir, env)
    targets = []
    for name, spec in specs.items():
        where = parse_syslog_address(spec.address) if spec.address is not None else \
            parse_http_url(spec.url or "")
        target = ShipTarget(name=name, kind=spec.type, where=where, labels=spec.labels,
                            headers=spec.headers, batch_lines=spec.batch_lines,
                            batch_seconds=spec.batch_seconds, buffer_lines=spec.buffer_lines,
                            syslog_format=spec.syslog_format)
        targets.append((target, spec.selects))
    return targets, problems


def _make_api(init: Init, settings: Settings, handed_over: list[Any]) -> Any:
    import_sanic()
    from ..api.server import ApiServer

    return ApiServer(init, settings, handed_over)


def heap_trimmer() -> Callable[[int], int] | None:
    """glibc's malloc_trim, which returns the free pages of every malloc heap to the
    kernel (docs/performance.md, "Memory"); None with a C library that has none (musl)."""
    import ctypes  # 0.2 MiB, less than a trim gives back

    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def import_sanic() -> None:
    """Sanic without uvloop: sanic imports uvloop whenever it is installed (its 1.1 MiB
    of RSS stay for good), and pmd runs the standard asyncio loop. A None in sys.modules
    makes that import fail, and sanic goes on without it; the entry goes right after."""
    if "sanic" in sys.modules or "uvloop" in sys.modules:
        return
    sys.modules["uvloop"] = None  # type: ignore[assignment]
    try:
        import sanic  # noqa: F401
    finally:
        del sys.modules["uvloop"]


async def _in_thread(work: Any) -> Any:
    """Run `work` in a thread of its own that ends with it (no idle pool left behind)."""
    import threading

    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the loop as is
            loop.call_soon_threadsafe(_settle, done, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, result, None)

    thread = threading.Thread(target=run, name="pmd-import", daemon=True)
    # A CPU-bound thread holds the GIL for the whole switch interval (5 ms): shorten it
    # meanwhile so the loop is never kept waiting long.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    thread.start()
    try:
        return await done
    finally:
        thread.join()
        sys.setswitchinterval(interval)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _prepare_folder(folder: Path, what: str) -> None:
    """Create one of pmd's folders if need be, and say clearly when pmd cannot write there
    (a read-only root file system, an arbitrary uid): pmd goes on, without what it would
    have written there (program log files, its state), and health's storage says so."""
    who = f"uid {os.getuid()} gid {os.getgid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.error("the %s %s cannot be created by %s (%s): mount a writable volume there "
                  "(an emptyDir, a tmpfs) or point pmd elsewhere", what, folder, who,
                  exc.strerror or exc)
        return
    if not os.access(folder, os.W_OK | os.X_OK):
        log.error("the %s %s is not writable by %s: mount a writable volume there (an "
                  "emptyDir, a tmpfs), or give it to this uid or to group %d with g+w",
                  what, folder, who, os.getgid())


def log_level(settings: Settings, stderr_is_tty: bool) -> str:
    """pmd's log level: asked for (PMD_LOG_LEVEL, a compat -v), else INFO; but WARNING when
    a main command shares pmd's terminal (its screen is not pmd's log) and for a
    compatibility start (tini and dumb-init say nothing unless asked)."""
    if settings.log_level:
        return settings.log_level
    if settings.compat is not None or (settings.command and stderr_is_tty):
        return "WARNING"
    return "INFO"


def _setup_logging(settings: Settings) -> None:
    # What a record would collect and pmd's line never shows: the caller's file and line
    # (a frame walk), the thread's name, the process's ids (logging's own switches).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = LoopTurnHandler(sys.stderr)
    handler.setFormatter(LineFormatter())
    root = logging.getLogger("pmd")
    root.addHandler(handler)
    root.setLevel(log_level(settings, _isatty(2)))
    root.propagate = False


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _compat_exec_code(compat: str | None, code: int) -> int:
    """dumb-init exits 2 for any command it cannot run; tini and pmd say 127 or 126."""
    return 2 if compat == "dumb-init" else code


def _report_exec_failure(settings: Settings, exc: Exception) -> None:
    """One line on stderr, whatever the log level: the container's only clue."""
    errno = getattr(exc, "errno", None)
    reason = os.strerror(errno) if errno else str(exc)
    if settings.compat is None:
        log.error("main command: %s", exc)
        return
    # The originals' own lines, under pmd's name for the tool.
    if settings.compat == "tini":
        line = f"[FATAL pmd-tini ({os.getpid()})] exec {settings.command[0]} failed: {reason}"
    else:
        line = f"[pmd-{settings.compat}] {settings.command[0]}: {reason}"
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    # First of all: a mask inherited from the caller would hold back TERM until it is
    # reset. Not after a re-exec: the previous image blocked the signals it handles so that
    # they wait for this one's handlers (Init.run unblocks them), and that mask is pmd's
    # own, not a caller's.
    inherited_mask: frozenset[int] = frozenset()
    if REEXEC_ENV not in os.environ:
        inherited_mask = signals.reset_mask()
    else:  # kept through the exec; said again, since every thread must inherit it
        signals.block_waited()
    args = sys.argv[1:] if argv is None else argv
    if args and (args[0] == "--compat" or args[0].startswith("--compat=")):
        from .compat import parse_compat

        run(parse_compat(args), inherited_mask)
        return
    settings = parse_settings(args)
    if settings.tls_cert is not None and not os.environ.get(REEXEC_ENV):
        check_tls(settings)
    start_with(EarlyBoot(settings, inherited_mask))


def start_with(early: EarlyBoot) -> None:
    """pmd's start once its settings are parsed and its boot plan, if any, has started
    its programs (pid1/entry.py, the `pmd_init` entry, comes here)."""
    settings = early.settings
    if settings.write_boot_plan:
        sys.exit(write_boot_plan(settings))
    if settings.webhook_allow_local:
        from ..model.webhook_rules import ALLOW_LOCAL_ENV

        # the one switch the webhook rules read, in validation and delivery alike
        # (model/webhook_rules.py says why it is not passed down)
        os.environ[ALLOW_LOCAL_ENV] = "1"
    run(settings, early.inherited_mask, early)


def _plan_key(settings: Settings) -> str | None:
    try:
        return plan_key(settings, os.environ.get("PMD_WEBHOOK_ALLOW_LOOPBACK", ""))
    except OSError:
        return None


def write_boot_plan(settings: Settings) -> int:
    """`pmd_init --write-boot-plan`: the boot plan of the config dir's programs, into the
    config dir (an image's build step); 0, or 2 when the configuration has a problem."""
    from ..store.programs import ConfigError, ProgramStore
    from ..store.storage import Storage, StorageError
    from ..supervisor.plan import boots, plan_entries

    key = _plan_key(settings)  # of the files as they are before they are read
    store = ProgramStore(settings.config_dir, settings.state_dir)
    try:
        specs = store.read_only()
    except (ConfigError, OSError) as exc:
        print(f"pmd_init: no boot plan written: {exc}", file=sys.stderr, flush=True)
        return 2
    if key is None or store.dropins.problems:
        print("pmd_init: no boot plan written: "
              f"{'; '.join(store.dropins.problems) or 'the configuration is unreadable'}",
              file=sys.stderr, flush=True)
        return 2
    booting = sum(1 for spec in specs if boots(spec))
    entries = plan_entries(specs)
    path = settings.config_dir / "boot-plan.json"
    import orjson

    data = orjson.dumps(plan_document(key, entries), option=orjson.OPT_INDENT_2) + b"\n"
    try:
        Storage(settings.config_dir, settings.state_dir).write_bytes(path, data)
    except StorageError as exc:
        print(f"pmd_init: no boot plan written: {exc}", file=sys.stderr, flush=True)
        return 2
    print(f"pmd_init: {path}: {len(entries)} of {booting} boot programs start "
          "before pmd's imports", flush=True)
    return 0


def check_tls(settings: Settings) -> None:
    """A TLS file that does not load stops a fresh start with one line, before any
    program runs (after a re-exec the API goes on without TCP instead: see ApiServer)."""
    from ..api.tls import TlsError, build_context

    assert settings.tls_cert is not None
    try:
        build_context(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    except TlsError as exc:
        print(f"pmd_init: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def tini() -> None:
    """The `pmd-tini` console script: tini's command line."""
    main(["--compat", "tini", *sys.argv[1:]])


def dumb_init() -> None:
    """The `pmd-dumb-init` console script: dumb-init's command line."""
    main(["--compat", "dumb-init", *sys.argv[1:]])


def run(settings: Settings, inherited_mask: frozenset[int] = frozenset(),
        early: EarlyBoot | None = None) -> None:
    _setup_logging(settings)
    base_env = dict(os.environ if early is None or early.environ is None else early.environ)
    # pydantic scans every installed distribution's entry points for plugins on the first
    # model it builds (~15 ms here, before any program may start); pmd uses none. Programs
    # get the environment from before this (and a re-exec hands that same one over).
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:
        import prctl

        prctl.set_name("pmd_init")
    except (ImportError, OSError):
        pass
    code = asyncio.run(Init(settings, base_env, inherited_mask, early).run())
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)
