"""The supervisor: every program pmd runs, persistent or quick-start, and the operations
the API and signals ask for. It knows nothing of HTTP: it validates meaning (names, ids,
port ranges), persists, then changes the desired state of instances.

Persisting comes first: an operation whose file (programs.json, ephemeral.json) cannot be
written raises StorageFailed and changes nothing, so an answered change is a durable one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from ..model.budget import share
from ..model.expand import EXPANDED_FIELDS, ExpansionError, expand
from ..model.graph import GraphError, Unmet, check_graph, dependents_of, stop_waves
from ..model.hooks import HookSpec
from ..model.sockets import SocketError, socket_definitions
from ..model.spec import ProgramSpec
from ..model.states import RUNNING_STATES, STOPPED_STATES, ProgramState
from ..store.records import EphemeralEntry, PidsEntry, Records
from ..store.storage import StorageError
from .activation import Activation
from .cron import CronRestarts
from .depends import DependencyGate, NotReady, not_ready
from .ephemeral import boot_identity, process_start_ticks, same_process
from .errors import (
    Conflict,
    Disabled,
    Invalid,
    NotFound,
    OperationFailed,
    PortConflict,
    Refused,
    StorageFailed,
    Waiting,
)
from .events import Event, EventBus, HealthEvent, ReadyEvent, SignalEvent, StateEvent
from .expansion import expand_spec
from .fatal import FatalPolicy
from .health import HealthMonitor
from .hooks import HookRunner
from .instance import Instance
from .memory import DEFAULT_INTERVAL as DEFAULT_MEMORY_INTERVAL
from .memory import MemoryWatch
from .plan import boots, plan_entry, spawn_rlimits
from .proctree import ProcessSampler
from .program import Program
from .readiness import Readiness
from .recycle import Recycler
from .runtime import ChildWatcher, Runtime
from .snapshots import InstanceSnapshot, SupervisorSnapshot
from .sockets import SocketSet
from .spawn import Prespawned, SpawnError, build_argv, cannot_run, program_env, resolve_account
from .startup import not_started
from .watch import FileWatch
from .webhooks import DRAIN_SECONDS, WebhookDispatcher

if TYPE_CHECKING:
    from ..logs.shipping import Shippers, ShipTarget
    from ..model.spec import WebhooksSpec
    from ..store.programs import ProgramStore
    from .execs import Execs

log = logging.getLogger("pmd.supervisor")

#: Changing these restarts a running program (the issue's rule), plus what shapes the argv.
#: The exit code of a process SIGKILL ended (128 + 9).
KILLED = 128 + signal.SIGKILL

RESTART_FIELDS = frozenset({
    "command", "user", "directory", "environment", "port_range", "port_param",
    "terminal_shell", "display", "stdout_logfile", "stderr_logfile", "logs_enabled",
    "sockets", "rlimits",
})


def storage_failed(exc: StorageError) -> StorageFailed:
    return StorageFailed(exc.message, exc.code, exc.details())


class Supervisor:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        children: ChildWatcher,
        store: ProgramStore,
        state_dir: Path,
        log_dir: Path,
        base_env: Mapping[str, str],
        forward: bool | str = True,
        log_roots: Iterable[Path] = (),
        ephemeral_grace: float = 600.0,
        memory_interval: float = DEFAULT_MEMORY_INTERVAL,
        webhook_ca_file: Path | None = None,
        log_targets: Sequence[tuple[ShipTarget, Callable[[str], bool]]] = (),
    ) -> None:
        self.loop = loop
        self.store = store
        self.storage = store.storage
        self.state_dir = state_dir
        self.log_dir = log_dir
        self.log_roots = [log_dir, *log_roots]
        self.ephemeral_grace = ephemeral_grace
        self.events = EventBus()
        self.base_env = dict(base_env)
        self.runtime = Runtime.on_loop(loop, children, self.events.publish, log_dir,
                                       self.base_env, forward, wants=self.events.wants)
        self.forwarders = self.runtime.forwarders
        #: The log targets (logs/shipping.py), each with its task; none: no tap anywhere.
        self.shipping: Shippers | None = None
        if log_targets:
            from ..logs.shipping import Shippers  # not imported without targets

            self.shipping = self.runtime.shipping = Shippers(loop, log_targets)
            self.shipping.start()
        #: Targets in log_targets.json that were refused, each naming its target.
        self.log_target_problems: list[str] = []
        #: What readiness sources need of pmd's own (probe tasks, the notify socket);
        #: instances reach it
        #: through their runtime.
        self.readiness = self.runtime.readiness = Readiness(
            loop, children, self.base_env, notify_path=state_dir / "notify.sock")
        #: The listening sockets programs list (sockets.py), held across their restarts.
        self.sockets = self.runtime.sockets = SocketSet(loop)
        self.programs: dict[int, Program] = {}
        self.ephemeral: dict[str, Program] = {}
        self._children = children
        self._execs: Execs | None = None
        self.records = Records(state_dir, store.storage)
        self.ephemeral_report: list[dict[str, object]] = []
        self.on_fatal_exit: Callable[[Instance], None] | None = None
        self._seq = itertools.count(1)
        self._last_ms = 0
        self._purge_timers: dict[str, asyncio.TimerHandle] = {}
        self.started_at = time.time()
        self._pids_timer: asyncio.TimerHandle | None = None
        #: The kernel's boot and PID 1's start, which pids.json and ephemeral.json are
        #: kept for: read once (neither changes while pmd runs).
        self._boot: dict[str, object] | None = None
        #: The start time (/proc/<pid>/stat) of each recorded run, by (pid, started_at):
        #: read once per process.
        self._start_ticks: dict[tuple[int, float | None], int | None] = {}
        self._ephemeral_timer: asyncio.TimerHandle | None = None
        self.events.subscribe(self._pids_changed, (StateEvent,))
        self.events.subscribe(self._follow, (StateEvent,), entering=(
            ProgramState.FATAL, ProgramState.EXITED, ProgramState.STARTING))
        # The watchers subscribe to the events themselves; shutdown closes each of them.
        self.health = HealthMonitor(loop, self.events, children, self.base_env,
                                    restart=Instance.restart)
        #: The one /proc sampler of this pmd: the memory watch and the API's usage figures
        #: share its scan (proctree.py).
        self.sampler = ProcessSampler()
        self.memory = MemoryWatch(loop, self.events, restart=Instance.restart,
                                  sampler=self.sampler, interval=memory_interval)
        #: max_age: each running instance's recycle timer (recycle.py).
        self.recycler = Recycler(loop, self.runtime.clock, self.events,
                                 restart=Instance.restart)
        self.webhooks = WebhookDispatcher(loop, self.events, self._webhooks_for,
                                          ca_file=webhook_ca_file)
        #: Programs' local event hooks (hooks.py); runs are children like programs.
        self.hooks = HookRunner(loop, self.events, children, self.base_env, self._hooks_for)
        #: Programs asked to start whose depends_on does not hold yet.
        self.gate = DependencyGate(loop, self._dependency, self._release,
                                   self.runtime.clock, self.events.publish)
        self.events.subscribe(self.gate.on_event, (StateEvent, HealthEvent, ReadyEvent,
                                                   SignalEvent))
        #: on_fatal (fatal.py).
        self.fatal = FatalPolicy(
            loop, self.events, programs=lambda: list(self.programs.values()),
            launch=self.launch, stop=self.stop,
            stop_container=self._stop_container)
        #: cron_restart (cron.py) and watch (watch.py).
        self.cron = CronRestarts(loop)
        self.watch = FileWatch(loop, self._restart_for_change, self.runtime.base_env,
                               own=(str(log_dir), str(state_dir)))
        #: start_on: connection (activation.py).
        self.activation = Activation(
            loop, self.events, self.sockets, self.launch,
            current=lambda p: p.id is not None and self.programs.get(p.id) is p)
        #: Instances in no program's slot: a reload's replacement until it takes over, and
        #: the instance it replaced while that one stops (reload.py). Shutdown stops them.
        self.extra_instances: set[Instance] = set()

    # ---- lookups -------------------------------------------------------------------

    @property
    def execs(self) -> Execs:
        """Commands run through the exec API, with their streams (execs.py); built, and
        its module imported, on the first exec: the boot does not pay for it."""
        if self._execs is None:
            from .execs import Execs

            self._execs = Execs(self.loop, self._children)
        return self._execs

    def all_programs(self) -> list[Program]:
        return [*self.programs.values(), *self.ephemeral.values()]

    def instances(self) -> list[Instance]:
        return [i for p in self.all_programs() for i in p.instances.values()]

    def get(self, program_id: int) -> Program:
        program = self.programs.get(program_id)
        if program is None:
            raise NotFound(f"program {program_id} not found", field="id")
        return program

    def by_name(self, name: str) -> Program | None:
        for program in self.all_programs():
            if program.name == name:
                return program
        return None

    def get_ephemeral(self, temporary_id: str) -> Program:
        program = self.ephemeral.get(temporary_id)
        if program is None:
            raise NotFound(f"quick-start program '{temporary_id}' not found", field="id")
        return program

    def _dependency(self, name: str) -> Program | None:
        """What a depends_on name means: a program of programs.json (quick-starts are
        not in the graph)."""
        for program in self.programs.values():
            if program.name == name:
                return program
        return None

    def launch(self, program: Program, delay: float | None = None) -> None:
        """Start a program as boot does: once its dependencies hold, after its delay."""
        if self.gate.request(program):
            program.start(delay=program.spec.delay_seconds if delay is None else delay)

    def _release(self, program: Program) -> None:
        if program.spec.enabled and program.id in self.programs:
            program.start(delay=program.spec.delay_seconds)

    def unmet(self, program: Program) -> list[Unmet]:
        """What a program's start waits for now (empty: nothing)."""
        return self.gate.unmet(program)

    def not_ready(self) -> tuple[int, list[NotReady]]:
        """The container's readiness: how many programs count (enabled boot programs,
        not lazy ones), and those of them that are not in their ready condition."""
        counted = [p for p in self.programs.values() if self._boots(p.spec)]
        missing = [r for r in (not_ready(p) for p in counted) if r is not None]
        return len(counted), missing

    def not_started(self) -> tuple[int, list[NotReady]]:
        """Boot's progress, for a startup probe: how many programs count (as for
        `not_ready`), and those of them that have neither started nor settled."""
        counted = [p for p in self.programs.values() if self._boots(p.spec)]
        missing = [r for r in (not_started(p) for p in counted) if r is not None]
        return len(counted), missing

    def specs(self) -> list[ProgramSpec]:
        return [p.spec for p in self.programs.values()]

    def _webhooks_for(self, event: StateEvent | ReadyEvent) -> WebhooksSpec | None:
        program = self.ephemeral.get(event.temporary_id) if event.temporary_id is not None \
            else self.programs.get(event.program_id or 0)
        return program.spec.webhooks if program is not None else None

    def _hooks_for(self, event: StateEvent | ReadyEvent) -> list[HookSpec]:
        program = self.ephemeral.get(event.temporary_id) if event.temporary_id is not None \
            else self.programs.get(event.program_id or 0)
        return program.spec.hooks if program is not None else []

    # ---- boot and reload -----------------------------------------------------------

    def load(self, specs: list[ProgramSpec]) -> None:
        for spec in specs:
            assert spec.id is not None
            self.programs[spec.id] = Program(self.runtime, spec)
        self.sync_sockets()

    def sync_sockets(self) -> None:
        """Hold the sockets the programs define now (binding new ones, closing unused)."""
        try:
            self.sockets.sync((s.name, s.sockets) for s in self.specs())
        except SocketError as exc:  # parse_programs and add/edit refuse this first
            log.error("sockets: %s", exc)

    def boot(self, prespawned: Sequence[Prespawned] = ()) -> int:
        """Start enabled boot programs in ascending priority, each after its own delay; a
        delayed program never holds up the others. `prespawned`: processes a boot plan
        started before the supervisor existed (pid1/early.py); each program's first spawn
        takes its own over when it was started as it would be now, and every one not
        taken over is killed. Returns how many were taken over."""
        early = {p.name: p for p in prespawned}
        handed: list[tuple[Instance, Prespawned]] = []
        for program in self.programs.values():
            found = early.pop(program.name, None)
            if found is not None and None in program.instances and self._boots(program.spec):
                program.instances[None].prespawned = found
                handed.append((program.instances[None], found))
            elif found is not None:
                early[program.name] = found
        for program in sorted(self.programs.values(), key=lambda p: (p.spec.priority, p.id)):
            if self._boots(program.spec):
                self.launch(program)
        taken = 0
        for inst, found in handed:
            if inst.prespawned is not None:  # not spawned now (a delay, a dependency)
                early[found.name] = found
                inst.prespawned = None
            elif inst.popen is found.popen:
                taken += 1
        for left in early.values():
            log.warning("%s: started by the boot plan but not a boot program to start now: "
                        "killed (pid %d)", left.name, left.popen.pid)
            self._children.watch(left.popen.pid, left.exited)
            left.discard(self.runtime.killpg)
        self._specs_changed()
        return taken

    @staticmethod
    def _boots(spec: ProgramSpec) -> bool:
        return boots(spec)

    def boot_plan(self) -> list[dict[str, Any]]:
        """The boot plan's entries (pid1/early.py): the boot programs that can start
        before the supervisor exists, in boot's order, with what their spawn reads."""
        entries = []
        for program in sorted(self.programs.values(), key=lambda p: (p.spec.priority, p.id)):
            if self._boots(program.spec):
                entry = plan_entry(program.spec, spawn_rlimits(program.spec))
                if entry is not None:
                    entries.append(entry)
        return entries

    def _specs_changed(self) -> None:
        """What follows the set of programs: socket watches, schedules, file watches."""
        self.arm_activations()
        programs = list(self.programs.values())
        self.cron.sync(programs)
        self.watch.sync(programs)

    async def _restart_for_change(self, program: Program) -> None:
        """watch: the program, then each running program that depends on it (directly or
        through another) in start order, each once the one before it is ready again."""
        specs = self.specs()
        found: set[str] = set()
        todo = [program.name]
        while todo:
            for name in dependents_of(specs, todo.pop()):
                if name not in found and name != program.name:
                    found.add(name)
                    todo.append(name)
        later = [name for wave in reversed(stop_waves(specs)) for name in
                 sorted(wave, key=lambda n: (self._priority(n), n)) if name in found]
        for step in [program, *(self._dependency(name) for name in later)]:
            if step is None or step.id is None or self.programs.get(step.id) is not step:
                continue
            running = [i for i in step.instances.values() if i.state in RUNNING_STATES]
            for inst in running:
                inst.restart(reason="watch")
            if running:
                await asyncio.gather(*(self._until_ready(i) for i in running))

    def _priority(self, name: str) -> int:
        program = self._dependency(name)
        return program.spec.priority if program is not None else 999

    async def _until_ready(self, inst: Instance, timeout: float = 60.0) -> None:
        """Once this instance's next run is ready (or it went FATAL, or `timeout`)."""
        done: asyncio.Future[None] = self.loop.create_future()

        def on_event(event: Event) -> None:
            if event.source is not inst or done.done():
                return
            if isinstance(event, ReadyEvent) or (
                    isinstance(event, StateEvent) and event.to_state == ProgramState.FATAL):
                done.set_result(None)

        unsubscribe = self.events.subscribe(on_event, (StateEvent, ReadyEvent))
        try:
            await asyncio.wait({done}, timeout=timeout)
        finally:
            unsubscribe()

    def arm_activations(self) -> None:
        """Watch the sockets of every enabled, stopped start_on: connection program (again:
        a socket bound anew has no watch yet)."""
        for program in self.programs.values():
            if program.spec.on_connection:
                self.activation.arm(program)

    def apply(self, new_specs: list[ProgramSpec]) -> dict[str, list[str]]:
        """SIGHUP: the diff by name. Added programs start (if they boot), removed ones stop,
        changed ones restart if running; the rest keep running untouched."""
        old_by_name = {p.name: p for p in self.programs.values()}
        new_by_name = {s.name: s for s in new_specs}
        # New sockets are bound before anything that uses them starts; sockets kept are
        # the same descriptors, so their backlogs carry over.
        try:
            self.sockets.sync((s.name, s.sockets) for s in new_specs)
        except SocketError as exc:
            log.error("sockets: %s", exc)
        report: dict[str, list[str]] = {"added": [], "removed": [], "changed": [], "kept": []}
        used = set(self.programs)  # a removed program's id is not given to a new one
        for name, program in old_by_name.items():
            if name not in new_by_name:
                self._drop(program)
                report["removed"].append(name)
        next_id = max([*used, *(s.id or 0 for s in new_specs)], default=0) + 1
        for name, spec in new_by_name.items():
            existing = old_by_name.get(name)
            if existing is None:
                if spec.id is None or spec.id in used or spec.id in self.programs:
                    spec = spec.model_copy(update={"id": next_id})
                    next_id += 1
                assert spec.id is not None
                added = self.programs[spec.id] = Program(self.runtime, spec)
                if self._boots(spec):
                    self.launch(added)
                report["added"].append(name)
                continue
            spec = spec.model_copy(update={"id": existing.id})
            if spec == existing.spec:
                report["kept"].append(name)
                continue
            self._replace_spec(existing, spec)
            report["changed"].append(name)
        self.gate.poke()  # changed depends_on: what waits may be free now
        self._specs_changed()
        return report

    # ---- persistent programs (the daemon API) --------------------------------------

    def _check_unique(self, spec: ProgramSpec, ignore: Program | None = None) -> None:
        for program in self.all_programs():
            if program is ignore or program.finished_at is not None:
                continue  # a finished quick-start program's name is free again
            if program.name == spec.name:
                raise Conflict(f"a program named '{spec.name}' already exists", field="name")
            if spec.id is not None and program.id == spec.id and not program.is_ephemeral:
                raise Conflict(f"a program with id {spec.id} already exists", field="id")
            if spec.port_range and program.spec.port_range and \
                    spec.port_range.overlaps(program.spec.port_range):
                raise PortConflict(
                    f"port_range {spec.port_range.start}-{spec.port_range.end} overlaps "
                    f"'{program.name}' ({program.spec.port_range.start}-"
                    f"{program.spec.port_range.end})", field="port_range")

    def _save(self, specs: list[ProgramSpec]) -> None:
        # an edit that renames a program: its file (programs.d) goes with it
        renamed = {self.programs[s.id].name: s.name for s in specs
                   if s.id in self.programs and self.programs[s.id].name != s.name}
        try:
            self.store.save(specs, renamed)
        except StorageError as exc:
            raise storage_failed(exc) from None
        except OSError as exc:
            raise OperationFailed(f"could not write programs.json: {exc}") from None

    def check_log_paths(self, spec: ProgramSpec, old: ProgramSpec | None = None) -> None:
        """Log files named through the API must lie inside a log root, through no symlink:
        pmd writes them as root, so the API must not become a way to overwrite any file.
        A path kept unchanged from `old` (written by the admin in programs.json) passes."""
        roots = [os.path.realpath(root) for root in self.log_roots]
        for field in ("stdout_logfile", "stderr_logfile"):
            value = getattr(spec, field)
            if value is None or (old is not None and getattr(old, field) == value):
                continue
            try:  # the path the file will have: pmd's environment is fixed for its life
                value = expand(value, self.base_env)
            except ExpansionError as exc:
                raise Invalid(f"{field}: {exc}", field=field) from None
            if not value.startswith("/"):
                raise Invalid(f"{field}: {value} is not an absolute path", field=field)
            path = os.path.normpath(value)
            parent = os.path.realpath(os.path.dirname(path))
            if not any(parent == root or parent.startswith(root.rstrip("/") + "/")
                       for root in roots):
                raise Invalid(f"{field}: {value} is outside the allowed log folders "
                              f"({', '.join(str(r) for r in self.log_roots)})", field=field,
                              details={"log_roots": [str(r) for r in self.log_roots]})
            if os.path.islink(path) or os.path.isdir(path):
                raise Invalid(f"{field}: {value} is a symlink or a folder", field=field)

    def check_runnable(self, spec: ProgramSpec) -> None:
        """A quick-start creates and starts in one request, so a command that cannot run
        at all (no such file on the program's PATH, not executable, no such directory) is
        the request's fault: refused as a 400 naming the field, before anything exists,
        as supervisord's startProcess refuses NO_FILE and NOT_EXECUTABLE before spawning
        (docs/daemon-api.md). A persistent program may name a command that is installed
        later: its start reports the spawn error instead."""
        try:
            # as the start will see them: ${VAR}s expanded, env files read
            fields = expand_spec(spec, self.runtime.base_env)
        except SpawnError as exc:
            word = str(exc).split(":", 1)[0].split(" ", 1)[0].split(".", 1)[0]
            raise Invalid(str(exc), field=word if word in EXPANDED_FIELDS + (
                "env_file", "environment") else "command",
                details={"spawn_error": str(exc)}) from None
        try:
            account = resolve_account(fields.user)
            argv = build_argv(fields.command, spec.terminal_shell)
        except SpawnError as exc:
            raise Invalid(str(exc), field="command") from None
        env = program_env(self.runtime.base_env, account, fields.environment, spec.display,
                          None)
        cwd = fields.directory
        if cwd is None and account is not None:
            cwd = account.home if os.path.isdir(account.home) else None  # quick-start rule
        problem = cannot_run(argv[0], env, cwd)
        if problem is not None:
            what, error = problem
            field = "terminal_shell" if what == "command" and spec.terminal_shell else what
            raise Invalid(f"{field}: {error}", field=field,
                          details={"spawn_error": str(error)})

    @staticmethod
    def _check_graph(specs: list[ProgramSpec]) -> None:
        try:
            check_graph(specs)
        except GraphError as exc:
            raise Invalid(f"depends_on: {exc}", field="depends_on") from None

    def _check_sockets(self, spec: ProgramSpec, specs: list[ProgramSpec]) -> None:
        """The set's rules (a used name is defined, one name is one address), then the new
        definitions are bound: a port taken is a 400 now, not a spawn failure later."""
        try:
            socket_definitions((s.name, s.sockets) for s in specs)
        except SocketError as exc:
            raise Invalid(str(exc), field=exc.field) from None
        try:
            self.sockets.try_bind(spec.sockets or [])
        except ValueError as exc:
            raise Invalid(f"sockets: {exc}", field="sockets", code="SOCKET_UNAVAILABLE") \
                from None

    def _check_no_dependents(self, program: Program, doing: str) -> None:
        """Removing or renaming a program others depend on would leave them waiting for
        a name that no longer exists: refused, naming them."""
        others = [s for s in self.specs() if s.id != program.id]
        dependents = dependents_of(others, program.name)
        if dependents:
            raise Refused(f"cannot {doing} '{program.name}': {', '.join(dependents)} "
                          "depend on it", field="depends_on", code="HAS_DEPENDENTS",
                          details={"dependents": dependents})

    def add(self, spec: ProgramSpec) -> Program:
        self.check_log_paths(spec)
        self._check_unique(spec)
        if spec.id is None:
            spec = spec.model_copy(update={"id": max(self.programs, default=0) + 1})
        assert spec.id is not None
        self._check_graph([*self.specs(), spec])
        self._check_sockets(spec, [*self.specs(), spec])
        try:
            self._save([*self.specs(), spec])
        except BaseException:
            self.sync_sockets()  # what try_bind held for it is let go
            raise
        program = self.programs[spec.id] = Program(self.runtime, spec)
        if self._boots(spec):
            self.launch(program, delay=0)
        self._specs_changed()
        return program

    def edit(self, program_id: int, changes: dict[str, Any]) -> Program:
        """Merge field by field (environment, port_range and webhooks replace whole)."""
        program = self.get(program_id)
        if "id" in changes and changes["id"] != program_id:
            raise Invalid("id cannot be changed", field="id")
        for required in ("user", "name", "command"):
            if required in changes and changes[required] is None:
                raise Invalid(f"{required}: cannot be removed", field=required)
        merged = program.spec.model_dump(mode="json", exclude_none=True)
        merged.update(changes)
        merged["id"] = program_id
        merged = {k: v for k, v in merged.items() if v is not None}  # null: back to default
        try:
            spec = ProgramSpec.model_validate(merged, context={"check_accounts": True})
        except ValidationError as exc:
            raise Invalid.from_validation(exc, merged) from None
        self.check_log_paths(spec, old=program.spec)
        self._check_unique(spec, ignore=program)
        if spec.name != program.name:
            self._check_no_dependents(program, "rename")
        self._check_graph([spec if s.id == program_id else s for s in self.specs()])
        self._check_sockets(spec, [spec if s.id == program_id else s for s in self.specs()])
        try:
            self._save([spec if s.id == program_id else s for s in self.specs()])
        except BaseException:
            self.sync_sockets()
            raise
        self._replace_spec(program, spec)
        self.sync_sockets()
        if not spec.on_connection or not spec.enabled:
            self.activation.disarm(program)
        self._specs_changed()
        self.gate.poke()  # changed depends_on: what waits may be free now
        return program

    def _replace_spec(self, program: Program, spec: ProgramSpec) -> None:
        old = program.spec
        was_running = program.is_active()
        changed = {k for k in RESTART_FIELDS if getattr(old, k) != getattr(spec, k)}
        if old.name != spec.name or old.ports() != spec.ports():
            # New identity or new instances: stop the old ones, build new ones.
            for inst in program.instances.values():
                inst.stop()
                self._close_logs_later(inst)
            program.spec = spec
            program.make_instances(spec.ports())
            if spec.enabled and was_running:
                program.start()
            return
        program.spec = spec
        moved = bool(changed & {"stdout_logfile", "stderr_logfile"})
        for inst in program.instances.values():
            for logfile in (inst.stdout_log, inst.stderr_log):
                if logfile is None:
                    continue
                if moved:
                    logfile.close()  # the next spawn opens the new paths
                logfile.max_bytes, logfile.backups = spec.log_max_bytes, spec.log_backups
            if moved:
                inst.stdout_log = inst.stderr_log = None
        if not spec.enabled:
            program.stop_all()
        elif changed and was_running:
            for inst in program.instances.values():
                if inst.state in RUNNING_STATES or inst.want:
                    inst.restart()

    def _close_logs_later(self, inst: Instance) -> None:
        def close(_: object = None) -> None:
            for logfile in (inst.stdout_log, inst.stderr_log):
                if logfile is not None:
                    logfile.close()
        inst.wait_state(STOPPED_STATES).add_done_callback(close)

    def _drop(self, program: Program) -> list[asyncio.Future[ProgramState]]:
        self.gate.forget(program)
        futures = program.stop_all()
        for inst in program.instances.values():
            self._close_logs_later(inst)
        if program.id is not None:
            self.programs.pop(program.id, None)
        if program.spec.sockets:
            self.sync_sockets()  # closed when no program names them any more
        self._specs_changed()
        return futures

    def remove(self, program_id: int) -> list[asyncio.Future[ProgramState]]:
        """Saved without it, then stopped: the futures say when its instances are gone."""
        program = self.get(program_id)
        self._check_no_dependents(program, "remove")
        self._save([s for s in self.specs() if s.id != program_id])
        return self._drop(program)

    async def reset(self) -> None:
        """Back to programs.default.json: saved, everything stopped, the defaults booted.
        Cancelled half way it leaves the defaults saved and not running, so its caller
        must let it finish (the service runs it in a task of its own)."""
        try:
            defaults = self.store.read_default()
        except Exception as exc:
            raise OperationFailed(f"programs.default.json is unusable: {exc}") from None
        self._save(defaults)  # first: if the write fails, nothing has been stopped
        futures = []
        for program in list(self.programs.values()):
            futures += self._drop(program)
        if futures:
            await asyncio.wait(futures, timeout=15)
        self.load(defaults)
        self.boot()

    def set_enabled(self, program_id: int, enabled: bool) -> Program:
        program = self.get(program_id)
        if program.spec.enabled == enabled:
            if enabled and self._boots(program.spec) and not program.is_active():
                self.launch(program, delay=0)
            return program
        spec = program.spec.model_copy(update={"enabled": enabled})
        self._save([spec if s.id == program_id else s for s in self.specs()])
        program.spec = spec
        if not enabled:
            self.gate.forget(program)
            self.activation.disarm(program)
            program.stop_all()
        elif self._boots(spec):
            self.launch(program, delay=0)
        self._specs_changed()
        return program

    # ---- control -------------------------------------------------------------------

    def instances_for(self, program: Program, port: int | None) -> list[Instance]:
        if port is None:
            return list(program.instances.values())
        inst = program.instance(port)
        if inst is None:
            raise Invalid(f"port {port} is not in the port range of '{program.name}'",
                          field="port")
        return [inst]

    def _startable(self, program: Program, port: int | None) -> list[Instance]:
        if not program.spec.enabled:
            raise Disabled(program.name)
        return self.instances_for(program, port)

    def start(self, program: Program, port: int | None = None,
              force: bool = False) -> list[Instance]:
        """A start by hand: refused while its dependencies do not hold, unless forced."""
        instances = self._startable(program, port)
        if not force and not program.is_active():
            missing = self.gate.unmet(program)
            if missing:
                raise Waiting(program.name, missing)
        self.gate.forget(program)
        for inst in instances:
            inst.start()
        return instances

    def stop(self, program: Program, port: int | None = None) -> list[asyncio.Future[ProgramState]]:
        if port is None:
            self.gate.forget(program)
        return [inst.stop() for inst in self.instances_for(program, port)]

    def restart(self, program: Program, port: int | None = None) -> list[Instance]:
        instances = self._startable(program, port)
        for inst in instances:
            inst.restart()
        return instances

    def _follow(self, event: Event) -> None:
        """What the supervisor itself does on the event stream: an instance gone for good
        may end a quick-start or the container; a quick-start's new pid is recorded."""
        if not isinstance(event, StateEvent):
            return
        inst = event.source
        if not isinstance(inst, Instance):
            return
        if event.to_state in (ProgramState.FATAL, ProgramState.EXITED) and not inst.want:
            self._gone(inst)
        elif event.to_state == ProgramState.STARTING and inst.pid is not None \
                and inst.program.is_ephemeral and self._ephemeral_timer is None:
            # A crash-looping quick-start has a new pid at every restart: one write per
            # burst, and not fsync'd. Two synced writes per restart on the loop held every
            # request behind the disk (health p50 160 ms with 20 such launches, found by
            # the fault suite). The pid only serves re-adoption after pmd itself was
            # killed, as pids.json does; after a machine crash no process is left.
            self._ephemeral_timer = self.loop.call_later(0.1, self._save_ephemeral_pids)

    # ---- pids.json: re-adoption after pmd itself was killed (subreaper mode) ----------

    def _pids_changed(self, event: Event) -> None:
        # One write per burst of changes, never a timer while idle.
        if isinstance(event, StateEvent) and self._pids_timer is None:
            self._pids_timer = self.loop.call_later(0.1, self.write_pids)

    def boot_identity(self) -> dict[str, object]:
        if self._boot is None:
            self._boot = boot_identity()
        return self._boot

    def write_pids(self) -> None:
        self._pids_timer = None
        known, self._start_ticks = self._start_ticks, {}
        entries: list[PidsEntry] = []
        for p in self.programs.values():
            for i in p.instances.values():
                if not i.pid:
                    continue
                run = (i.pid, i.started_at)
                start = known[run] if run in known else process_start_ticks(i.pid)
                self._start_ticks[run] = start
                entries.append({"program": p.name, "port": i.port, "pid": i.pid,
                                "state": i.state.value, "start": start,
                                "started_at": i.started_at, "restarts": i.restarts})
        try:
            if entries:
                self.records.write_pids(self.boot_identity(), entries)
            else:  # every program stopped (a shutdown): nothing to re-adopt
                self.records.forget_pids()
        except OSError as exc:
            log.warning("could not write %s: %s", self.records.pids_path, exc)

    def readopt_survivors(self) -> int:
        """At a fresh start as a subreaper: programs started by a pmd that was killed are
        still running; watch them (pidfd) and read their pipes instead of starting twins."""
        try:
            record = self.records.read_pids()
        except (OSError, ValueError):
            return 0
        if record is None or record[0] != self.boot_identity():
            return 0
        by_name = {p.name: p for p in self.programs.values()}
        adopted = 0
        for entry in record[1]:
            program = by_name.get(str(entry.get("program")))
            inst = program.instance(entry.get("port")) if program else None
            if program is None or inst is None or inst.pid is not None \
                    or not program.spec.enabled:
                continue
            if not same_process(entry.get("pid"), entry.get("start")):
                continue
            inst.adopt({"state": entry.get("state", "RUNNING"), "pid": entry["pid"],
                        "want": True, "started_at": entry.get("started_at"),
                        "restarts": entry.get("restarts", 0),
                        "uptime": time.time() - (entry.get("started_at") or time.time())},
                       foreign=True)
            adopted += 1
        if adopted:
            log.info("re-adopted %d running program instance(s) of a previous pmd", adopted)
        return adopted

    def _gone(self, inst: Instance) -> None:
        """An instance died for good (FATAL, or exited and will not restart)."""
        if inst.program.is_ephemeral:
            program = self.ephemeral.get(inst.program.temporary_id or "")
            if program is not None and \
                    all(i.state in STOPPED_STATES for i in program.instances.values()):
                self._finish_ephemeral(program)
            return
        if inst.program.spec.shutdown_on_exit and self.on_fatal_exit is not None:
            self.on_fatal_exit(inst)

    def _stop_container(self, inst: Instance) -> None:
        if self.on_fatal_exit is not None and not inst.program.spec.shutdown_on_exit:
            self.on_fatal_exit(inst)  # (shutdown_on_exit has asked already)

    # ---- quick-start (ephemeral) programs ------------------------------------------

    def new_temporary_id(self) -> str:
        """quick_<ms>_<seq>: unique even for launches in the same millisecond."""
        ms = int(time.time() * 1000)
        return f"quick_{ms}_{next(self._seq)}"

    def quick_start(self, spec: ProgramSpec, ttl: int | None = None,
                    temporary_id: str | None = None) -> Program:
        self.check_log_paths(spec)
        self.check_runnable(spec)
        self._check_unique(spec)
        temporary_id = temporary_id or self.new_temporary_id()
        program = Program(self.runtime, spec, temporary_id=temporary_id)
        program.created_at = time.time()
        if ttl:
            program.expires_at = program.created_at + ttl
        # Written before the spawn, with no pid yet: a launch that is answered is one that a
        # pmd restarted after a crash knows of, and one that cannot be written never runs.
        self.ephemeral[temporary_id] = program
        try:
            self.records.write_ephemeral(self.boot_identity(), self.ephemeral_entries())
        except OSError as exc:
            del self.ephemeral[temporary_id]
            if isinstance(exc, StorageError):
                raise storage_failed(exc) from None
            raise OperationFailed(
                f"could not write {self.records.ephemeral_path}: {exc}") from None
        if ttl:
            program._ttl_timer = self.loop.call_later(ttl, self._expire, temporary_id)
        program.start(delay=spec.delay_seconds)
        return program

    def _expire(self, temporary_id: str) -> None:
        program = self.ephemeral.get(temporary_id)
        if program is not None and program.finished_at is None:
            log.info("quick-start %s reached its TTL", temporary_id)
            self.stop_ephemeral(program)

    def stop_ephemeral(self, program: Program) -> list[asyncio.Future[ProgramState]]:
        futures = program.stop_all()
        if all(f.done() for f in futures):
            self._finish_ephemeral(program)
        else:
            gathered = asyncio.gather(*futures, return_exceptions=True)
            gathered.add_done_callback(lambda _: self._finish_ephemeral(program))
        return futures

    def _finish_ephemeral(self, program: Program) -> None:
        if program.finished_at is not None or program.temporary_id is None:
            return
        program.finished_at = time.time()
        if program._ttl_timer is not None:
            program._ttl_timer.cancel()
            program._ttl_timer = None
        for inst in program.instances.values():
            inst.want = False
            # Its log files are read by path during the grace; held open, every finished
            # quick-start kept two descriptors for 10 minutes (found by the fault suite).
            # A write still in flight from its pipes reopens the file; the purge closes it.
            for logfile in (inst.stdout_log, inst.stderr_log):
                if logfile is not None:
                    logfile.close()
        self.save_ephemeral()
        temporary_id = program.temporary_id
        self._purge_timers[temporary_id] = self.loop.call_later(
            self.ephemeral_grace, self._purge_ephemeral, temporary_id)

    def forget_ephemeral(self, program: Program) -> None:
        """Remove a stopped quick-start program at once, not after the grace period (the
        PM2-style DELETE). One still stopping is left to finish and purge on its own."""
        if program.temporary_id is None:
            return
        if any(i.state not in STOPPED_STATES for i in program.instances.values()):
            return
        self._finish_ephemeral(program)
        timer = self._purge_timers.pop(program.temporary_id, None)
        if timer is not None:
            timer.cancel()
        self._purge_ephemeral(program.temporary_id)

    def _purge_ephemeral(self, temporary_id: str) -> None:
        self._purge_timers.pop(temporary_id, None)
        program = self.ephemeral.pop(temporary_id, None)
        if program is None:
            return
        for inst in program.instances.values():
            for logfile in (inst.stdout_log, inst.stderr_log):
                if logfile is not None:
                    logfile.close()
        if not (program.spec.stdout_logfile or program.spec.stderr_logfile) and \
                self.by_name(program.name) is None:  # not if its name was reused meanwhile
            shutil.rmtree(self.log_dir / program.log_folder, ignore_errors=True)

    def ephemeral_entries(self) -> list[EphemeralEntry]:
        entries: list[EphemeralEntry] = []
        for program in self.ephemeral.values():
            if program.finished_at is not None:
                continue
            inst = program.primary
            entries.append({
                "temporary_id": program.temporary_id,
                "spec": program.spec.to_json(),
                "created_at": program.created_at,
                "expires_at": program.expires_at,
                "pid": inst.pid,
                "pid_start": process_start_ticks(inst.pid) if inst.pid else None,
            })
        return entries

    def _save_ephemeral_pids(self) -> None:
        self._ephemeral_timer = None
        self.save_ephemeral(durable=False)

    def flush_ephemeral_pids(self) -> None:
        """A pid change still waiting for its write is written now (shutdown, re-exec)."""
        if self._ephemeral_timer is not None:
            self._ephemeral_timer.cancel()
            self._save_ephemeral_pids()

    def save_ephemeral(self, durable: bool = True) -> None:
        """For changes that are not launches (a pid, a finished program): a failure is
        logged and shown in /health, and the file stays as it was. What it then says wrongly
        is a pid missing or a program that is gone, both cleaned up at the next start."""
        entries = self.ephemeral_entries()
        if not entries and not self.records.ephemeral_path.exists():
            return  # nothing to record, nor recorded: a start reads no file as none
        try:
            self.records.write_ephemeral(self.boot_identity(), entries, durable=durable)
        except OSError as exc:
            log.error("could not write %s: %s", self.records.ephemeral_path, exc)

    def reconcile_ephemeral(self) -> None:
        """At a fresh start (not a re-exec): clean entries from an earlier boot, re-adopt
        programs that are still alive (pmd restarted as a subreaper)."""
        try:
            record = self.records.read_ephemeral()
        except (OSError, ValueError) as exc:
            log.error("ephemeral.json unreadable (%s): starting with none", exc)
            self.ephemeral_report.append({"problem": str(exc)})
            self.save_ephemeral()
            return
        if record is None:
            return
        boot, entries = record
        same_boot = boot == self.boot_identity()
        for entry in entries:
            temporary_id = entry.get("temporary_id")
            reason = None
            if not isinstance(temporary_id, str):
                reason = "unusable entry: no temporary_id"
            elif not same_boot:
                reason = "earlier container boot"
            elif not same_process(entry.get("pid"), entry.get("pid_start")):
                reason = "process gone"
            if reason is None and isinstance(temporary_id, str):
                try:
                    spec = ProgramSpec.model_validate(entry["spec"])
                    self._readopt(temporary_id, spec, entry)
                    continue
                except Exception as exc:  # noqa: BLE001 - any bad entry is just stale
                    reason = f"unusable entry: {exc}"
            self.ephemeral_report.append({"temporary_id": temporary_id, "cleaned": reason,
                                          "time": time.time()})
            log.info("quick-start %s cleaned up: %s", temporary_id, reason)
            if isinstance(entry.get("spec"), dict):
                name = entry["spec"].get("name")
                if name and "/" not in name and not entry["spec"].get("stdout_logfile"):
                    shutil.rmtree(self.log_dir / name, ignore_errors=True)
        self.save_ephemeral()

    def _readopt(self, temporary_id: str, spec: ProgramSpec, entry: dict[str, Any]) -> None:
        program = Program(self.runtime, spec, temporary_id=temporary_id)
        program.created_at = entry.get("created_at")
        program.expires_at = entry.get("expires_at")
        self.ephemeral[temporary_id] = program
        program.primary.adopt({"state": "RUNNING", "pid": entry["pid"], "want": True},
                              foreign=True)
        self._arm_ttl(program)

    def _arm_ttl(self, program: Program) -> None:
        if program.expires_at is not None and program.temporary_id is not None:
            delay = max(0.0, program.expires_at - time.time())
            program._ttl_timer = self.loop.call_later(delay, self._expire, program.temporary_id)

    # ---- shutdown ------------------------------------------------------------------

    async def shutdown(self, deadline: float) -> list[str]:
        """Stop everything in reverse priority order, each priority group concurrently, a
        program's dependents before it, within `deadline` (loop time); then SIGKILL
        whatever is left. Every watcher is closed, its tasks and timers cancelled and
        awaited. Returns the names of the instances that had to be killed.

        When the groups' worst cases (their longest stop each: stop_timeout, or a stop
        step list's waits together) add up past the time left, each group gets a share
        in proportion to its worst case and what is left of it at the end of its share is
        killed, a step list cut short by SIGKILL: every group still gets its stop signal
        before the deadline (model/budget.py)."""
        killed: list[str] = []

        def note_kill(event: Event) -> None:
            if isinstance(event, StateEvent) and event.exit_code == KILLED \
                    and event.to_state in STOPPED_STATES:
                killed.append(event.instance)

        unsubscribe = self.events.subscribe(note_kill, (StateEvent,),
                                            entering=STOPPED_STATES)
        # Watchers first: a probe or a memory sample must not restart what is stopping,
        # and nothing waiting for its dependencies may start now.
        self.gate.close()
        self.memory.close()
        self.recycler.close()
        self.activation.close()
        self.fatal.close()
        self.cron.close()
        await self.watch.close()
        if self._execs is not None:
            await self._execs.close()
        await self.health.close()
        await self.readiness.close()
        programs = self.all_programs()
        everything: list[asyncio.Future[ProgramState]] = [
            inst.stop() for inst in list(self.extra_instances)]
        by_name: dict[str, list[Program]] = {}
        for program in programs:
            by_name.setdefault(program.name, []).append(program)
        # Reverse priority, and dependents before what they depend on (stop_waves).
        waves = stop_waves([p.spec for p in programs])
        worsts = [max((p.spec.stop_seconds for name in wave for p in by_name.get(name, ())),
                      default=0.0) for wave in waves]
        for index, wave in enumerate(waves):
            members = [p for name in wave for p in by_name.get(name, ())]
            group = [f for p in members for f in p.stop_all()]
            everything += group
            pending = [f for f in group if not f.done()]
            remaining = deadline - self.loop.time()
            allowed = share(remaining, worsts[index], sum(worsts[index:]))
            if pending and allowed > 0:
                await asyncio.wait(pending, timeout=allowed)
            if self.loop.time() >= deadline:
                break
            late = [i for p in members for i in p.instances.values() if i.pid is not None]
            if late:  # its share is over: the next group's turn
                log.warning("shutdown budget: SIGKILL %s after %.1f s to let the next "
                            "group stop in time", ", ".join(i.name for i in late), allowed)
                for inst in late:
                    inst.kill_now()
                await asyncio.wait([i.wait_state(STOPPED_STATES) for i in late],
                                   timeout=max(0.05, min(1.0, deadline - self.loop.time())))
        left = [i for i in self.everything() if i.pid is not None]
        if left:
            log.warning("grace period over: SIGKILL %s", ", ".join(i.name for i in left))
            for inst in left:
                inst.kill_now()
            waits = [i.wait_state(STOPPED_STATES) for i in left]
            await asyncio.wait(waits, timeout=2.0)
        unsubscribe()
        # The STOPPING/STOPPED notifications just queued get what is left of the grace.
        left_over = max(0.0, deadline - self.loop.time())
        await self.webhooks.close(drain=min(DRAIN_SECONDS, left_over))
        self.hooks.close()
        if self.shipping is not None:  # the programs' last lines get what is left
            await self.shipping.close(drain=max(0.0, min(DRAIN_SECONDS,
                                                         deadline - self.loop.time())))
        if self._pids_timer is not None:  # the burst of stops is written now, not never
            self._pids_timer.cancel()
            self.write_pids()
        self.flush_ephemeral_pids()
        self.sockets.close()
        return killed

    # ---- re-exec -------------------------------------------------------------------

    def snapshot(self) -> SupervisorSnapshot:
        self.flush_ephemeral_pids()
        by_program: dict[int, list[InstanceSnapshot]] = {}
        for extra in self.extra_instances:
            by_program.setdefault(id(extra.program), []).append(extra.snapshot())
        return {
            "programs": [
                {"key": p.key, "spec": p.spec.to_json(), "temporary_id": p.temporary_id,
                 "created_at": p.created_at, "expires_at": p.expires_at,
                 "finished_at": p.finished_at,
                 "instances": [i.snapshot() for i in p.instances.values()],
                 "extra_instances": by_program.get(id(p), [])}
                for p in self.all_programs()
            ],
            "ephemeral_report": self.ephemeral_report,
            "waiting": [p.key for p in self.gate.waiting()],
            "notify_socket": self.readiness.hand_over(),
            "sockets": self.sockets.hand_over(),
        }

    def adopt(self, raw: object) -> None:
        """After re-exec: the same processes, still our children, under the new pmd."""
        # Built here, not at import: a fresh boot should not pay for the schema.
        snap = TypeAdapter(SupervisorSnapshot).validate_python(raw)
        self.readiness.take_over(snap.get("notify_socket"))
        self.sockets.take_over(snap.get("sockets"))
        programs = snap.get("programs", [])
        self.runtime.children.keep_early({
            pid for p in programs
            for i in [*p.get("instances", []), *p.get("extra_instances", [])]
            if (pid := i.get("pid")) is not None})
        for entry in programs:
            spec = ProgramSpec.model_validate(entry.get("spec"))
            temporary_id = entry.get("temporary_id")
            program = Program(self.runtime, spec, temporary_id=temporary_id)
            program.created_at = entry.get("created_at")
            program.expires_at = entry.get("expires_at")
            program.finished_at = entry.get("finished_at")
            if temporary_id:
                self.ephemeral[temporary_id] = program
                if program.finished_at is None:
                    self._arm_ttl(program)
                else:
                    left = self.ephemeral_grace - (time.time() - program.finished_at)
                    self._purge_timers[temporary_id] = self.loop.call_later(
                        max(0.0, left), self._purge_ephemeral, temporary_id)
            else:
                assert spec.id is not None
                self.programs[spec.id] = program
            for inst_snap in entry.get("instances", []):
                inst = program.instance(inst_snap.get("port"))
                if inst is not None:
                    inst.adopt(inst_snap)
            for inst_snap in entry.get("extra_instances", []):
                self._adopt_extra(program, inst_snap)
        self.ephemeral_report = list(snap.get("ephemeral_report") or [])
        self.sync_sockets()
        self._specs_changed()
        # A boot that waited on dependencies goes on waiting (or starts what now may).
        by_key = {p.key: p for p in self.programs.values()}
        for key in snap.get("waiting") or []:
            waiting = by_key.get(key)
            if waiting is not None and not waiting.is_active():
                self.launch(waiting)

    def _adopt_extra(self, program: Program, snap: InstanceSnapshot) -> None:
        """A reload was under way when pmd re-executed: its replacement never took over (or
        the instance it replaced was still stopping). The reload did not survive the exec,
        so the instance outside the slots is stopped, and shutdown waits for it meanwhile."""
        inst = program.new_instance(snap.get("port"))
        inst.adopt(snap)
        if inst.pid is None:
            return
        self.extra_instances.add(inst)
        inst.stop().add_done_callback(lambda _: self.extra_instances.discard(inst))

    def everything(self) -> list[Instance]:
        """Every instance with a process, or about to have one: the slots' and the extras'."""
        return [*self.instances(), *self.extra_instances]

    def kill_all(self) -> None:
        """A second TERM during shutdown: SIGKILL every group at once."""
        if self._execs is not None:
            self._execs.kill_all()
        for inst in self.everything():
            inst.kill_now()

    def capture_fds(self) -> list[int]:
        return [c.fd for i in self.everything() for c in i.captures if c.fd >= 0]

    def socket_fds(self) -> list[int]:
        """The sockets held for programs: kept open across a re-exec."""
        return self.sockets.fds()

    def readiness_fds(self) -> list[int]:
        """The notification pipes of runs not ready yet (readiness `fd`): kept open across
        a re-exec, like the log pipes."""
        return [i.ready_fd for i in self.everything() if i.ready_fd is not None]

    def describe_event(self, event: StateEvent) -> str:
        return f"{event.instance}: {event.from_state} -> {event.to_state}"
