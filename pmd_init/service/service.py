"""The service layer: every operation the two API families share, over the supervisor.

A handler parses its request, calls one method here and serializes what it returns; what
is refused is raised as one of the supervisor's errors (pmd_init.supervisor.errors), which
each family turns into its answer in one table. Nothing here knows of HTTP.

Long operations (reset, reload, remove, delete, disable, stop, and a start that is waited
for) run in tasks this service owns (`OwnedTasks`): the client may go away, the operation
still ends as it would have, and shutdown cancels and awaits what is under way.

Changes of programs.json are serialized: a reset holds the lock from writing the defaults
until they are booted, so an add or edit in between is neither lost from the file nor
left out of the running set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shlex
import stat
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ..model.spec import ProgramSpec
from ..model.states import STOPPED_STATES, ProgramState
from ..supervisor.errors import (
    AlreadyRunning,
    Disabled,
    Invalid,
    NotFound,
    OperationFailed,
    Refused,
    StartFailed,
    WaitTimeout,
)
from ..supervisor.execs import ExecRun, ExecSpec
from ..supervisor.reload import ReloadReport, reload_program
from ..supervisor.spawn import Account, SpawnError, program_env, resolve_account
from ..supervisor.waits import until_running
from .tasks import OwnedTasks

if TYPE_CHECKING:
    from ..supervisor.instance import Instance
    from ..supervisor.program import Program
    from ..supervisor.supervisor import Supervisor

S = ProgramState

#: How long a stop is waited for beyond the program's own stop timeout (SIGKILL, reap).
STOP_SLACK = 2.0


class Service:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.tasks = OwnedTasks()
        self._config = asyncio.Lock()
        #: Programs with a reload under way: the lock later reloads of it wait on, in
        #: order, and how many reloads hold or wait for it.
        self._reloading: dict[Program, tuple[asyncio.Lock, int]] = {}

    # ---- finding programs ----------------------------------------------------------

    def program(self, program_id: int) -> Program:
        """A persistent program by its numeric id."""
        return self.supervisor.get(program_id)

    def quick(self, temporary_id: str) -> Program:
        """A quick-start program by its temporary id (finished ones for their grace)."""
        return self.supervisor.get_ephemeral(temporary_id)

    def resolve(self, ident: str) -> Program:
        """Any program by numeric id, temporary id or name, in that order."""
        sup = self.supervisor
        program: Program | None = None
        if ident.isascii() and ident.isdigit() and len(ident) <= 18:  # not "²", not 10**5000
            program = sup.programs.get(int(ident))
        if program is None:
            program = sup.ephemeral.get(ident)
        if program is None:
            program = sup.by_name(ident)
        if program is None:
            raise NotFound(f"Process with ID '{ident}' not found",
                           details={"requested_id": ident,
                                    "available_processes": [p.name for p in
                                                            sup.all_programs()]})
        return program

    def instance(self, program: Program, port: int | None, what: str) -> Instance:
        """The instance a request means: a port-range program must name its port."""
        if port is None:
            ports = program.spec.port_range
            if ports is not None:
                raise Invalid(f"port: '{program.name}' has a port range ({ports.start}-"
                              f"{ports.end}); name the port to {what}", field="port")
            return program.primary
        inst = program.instance(port)
        if inst is None:
            raise Invalid(f"port: {port} is not in the port range of '{program.name}'",
                          field="port")
        return inst

    def programs(self) -> list[Program]:
        """The persistent programs, by id."""
        return sorted(self.supervisor.programs.values(), key=lambda p: p.id or 0)

    def quick_starts(self) -> list[Program]:
        """The quick-start programs, oldest first."""
        return sorted(self.supervisor.ephemeral.values(), key=lambda p: p.created_at or 0)

    # ---- programs.json -------------------------------------------------------------

    async def add(self, spec: ProgramSpec) -> Program:
        async with self._config:
            return self.supervisor.add(spec)

    async def edit(self, program_id: int, changes: dict[str, Any]) -> Program:
        async with self._config:
            return self.supervisor.edit(program_id, changes)

    async def remove(self, program_id: int) -> None:
        """Saved without it, then stopped; answers once its processes are gone."""
        self.program(program_id)
        await self.tasks.run(self._remove(program_id), f"remove {program_id}")

    async def _remove(self, program_id: int) -> None:
        async with self._config:
            program = self.program(program_id)
            futures = self.supervisor.remove(program_id)
        await _settle(futures, program.spec.stop_seconds + 5)

    def apply_config(self, specs: list[ProgramSpec]) -> asyncio.Task[dict[str, list[str]]]:
        """SIGHUP's reload of programs.json, in turn with the API's changes of it (a reset
        under way ends first); an owned task, since a signal has no one to await it."""
        return self.tasks.spawn(self._apply_config(specs), "reload programs.json")

    async def _apply_config(self, specs: list[ProgramSpec]) -> dict[str, list[str]]:
        async with self._config:
            return self.supervisor.apply(specs)

    async def reset(self) -> int:
        """Back to programs.default.json, booted; the number of programs after it."""
        return await self.tasks.run(self._reset(), "reset")

    async def _reset(self) -> int:
        async with self._config:
            await self.supervisor.reset()
            return len(self.supervisor.programs)

    async def set_enabled(self, program_id: int, enabled: bool) -> Program:
        """Enable (a boot program starts) or disable (answers once it has stopped)."""
        self.program(program_id)
        return await self.tasks.run(self._set_enabled(program_id, enabled),
                                    f"{'enable' if enabled else 'disable'} {program_id}")

    async def _set_enabled(self, program_id: int, enabled: bool) -> Program:
        async with self._config:
            program = self.supervisor.set_enabled(program_id, enabled)
        if not enabled:
            await _settle([i.wait_state(STOPPED_STATES) for i in program.instances.values()],
                          program.spec.stop_seconds + STOP_SLACK)
        return program

    async def change_ports(self, program: Program, first: int, last: int) -> bool:
        """Move a program to a port (`PORT` in its environment) or a port range, for good,
        and have it running there. False when those are already its ports."""
        if program.is_ephemeral:
            raise Invalid("port: the port of a quick-start program cannot be changed",
                          field="port")
        if not program.spec.enabled:
            raise Disabled(program.name)
        spec = program.spec
        changes: dict[str, Any]
        if first == last and spec.port_range is None:
            if spec.environment.get("PORT") == str(first):
                return False
            changes = {"environment": {**spec.environment, "PORT": str(first)}}
        else:
            if spec.port_range is not None and \
                    (spec.port_range.start, spec.port_range.end) == (first, last):
                return False
            env = {k: v for k, v in spec.environment.items() if k != "PORT"}
            changes = {"port_range": {"start": first, "end": last}, "environment": env}
        assert program.id is not None
        async with self._config:
            self.supervisor.edit(program.id, changes)  # restarts it if it was running
            if not program.is_active():
                self.supervisor.restart(program)
        return True

    # ---- control -------------------------------------------------------------------

    async def start(self, program: Program, port: int | None = None, *, wait: bool = False,
                    timeout: float = 30.0, if_not_running: bool = False,
                    force: bool = False) -> tuple[Instance, bool]:
        """Start one instance; with `wait`, answer once it is RUNNING. The second value
        says it was running already (only with `if_not_running`, else a refusal). Its
        dependencies must hold, unless `force`."""
        inst = self.instance(program, port, "start")
        if inst.state in (S.STARTING, S.RUNNING):
            if if_not_running:
                return inst, True
            raise AlreadyRunning(f"'{inst.name}' is already {inst.state.value}; use "
                                 "if_not_running: true, or restart", inst,
                                 field="if_not_running")
        self.supervisor.start(program, inst.port, force=force)
        if wait:
            await self.tasks.run(self._until_started([inst], timeout), f"start {inst.name}")
        return inst, False

    async def restart(self, program: Program, port: int | None = None, *,
                      move_to: tuple[int, int] | None = None, wait: bool = False,
                      timeout: float = 30.0) -> list[Instance]:
        """Restart the program, or one port of it; `move_to` moves it to new ports first
        (then it restarts there)."""
        if move_to is not None and await self.change_ports(program, *move_to):
            instances = list(program.instances.values())
        else:
            instances = self.supervisor.restart(program, port)
        if wait:
            await self.tasks.run(self._until_started(instances, timeout),
                                 f"restart {program.name}")
        return instances

    async def stop(self, program: Program, port: int | None = None) -> list[str]:
        """Stop the program or one port of it (a quick-start program is then finished);
        answers once stopped, with the names of the instances that were running."""
        sup = self.supervisor
        instances = sup.instances_for(program, None if program.is_ephemeral else port)
        was_running = [i.name for i in instances if i.state not in STOPPED_STATES or i.want]
        if program.is_ephemeral:
            futures = sup.stop_ephemeral(program)
        else:
            futures = sup.stop(program, port)
        await self.tasks.run(_settle(futures, program.spec.stop_seconds + STOP_SLACK),
                             f"stop {program.name}")
        return was_running

    def signal(self, program: Program, signum: int, port: int | None = None,
               main_pid: bool = False) -> list[Instance]:
        """Send `signum` to each running instance's process group (or its main pid only);
        the instances signalled. Not running anywhere: Refused (NOT_RUNNING)."""
        running = [i for i in self.supervisor.instances_for(program, port)
                   if i.pid is not None]
        if not running:
            where = f"port {port} of '{program.name}'" if port is not None else \
                f"'{program.name}'"
            raise Refused(f"{where} is not running: no process to signal",
                          code="NOT_RUNNING")
        return [i for i in running if i.signal(signum, group=not main_pid)]

    async def stop_quick(self, program: Program) -> bool:
        """Stop a quick-start program; True when it had finished already."""
        if program.finished_at is not None:
            return True
        await self.stop(program)
        return False

    async def delete(self, program: Program) -> None:
        """Remove a program: a persistent one from programs.json, a quick-start one at
        once instead of after its grace period. Answers once its processes are gone."""
        if not program.is_ephemeral:
            assert program.id is not None
            await self.remove(program.id)
            return
        await self.tasks.run(self._forget(program), f"delete {program.name}")

    async def _forget(self, program: Program) -> None:
        await _settle(self.supervisor.stop_ephemeral(program),
                      program.spec.stop_seconds + STOP_SLACK)
        self.supervisor.forget_ephemeral(program)

    async def reload(self, program: Program,
                     move_to: tuple[int, int] | None = None) -> ReloadReport:
        """Zero-downtime for a port range, a restart otherwise (reload.py); `move_to`
        moves the program to new ports, which is a restart. A reload whose replacement
        fails is an OperationFailed whose details are the report."""
        if move_to is not None and await self.change_ports(program, *move_to):
            return ReloadReport(mode="restart")  # new listeners: nothing to hand over
        # A reload asked while another of the same program runs waits for it, in order
        # (circus's lesson: concurrent commands queue, they do not fail as "busy").
        lock, users = self._reloading.get(program, (asyncio.Lock(), 0))
        self._reloading[program] = (lock, users + 1)
        try:
            task = self.tasks.spawn(self._reload(program, lock), f"reload {program.name}")
        except BaseException:
            self._release_reload(program)
            raise
        report = await asyncio.shield(task)
        if not report.ok:
            raise OperationFailed(
                f"reload of '{program.name}' failed on port {report.failed_port}: "
                f"{report.reason}; the old instance keeps serving", details=report.as_dict())
        return report

    async def _reload(self, program: Program, lock: asyncio.Lock) -> ReloadReport:
        try:
            async with lock:
                return await reload_program(self.supervisor, program)
        finally:
            self._release_reload(program)

    def _release_reload(self, program: Program) -> None:
        lock, users = self._reloading[program]
        if users <= 1:
            del self._reloading[program]
        else:
            self._reloading[program] = (lock, users - 1)

    # ---- quick-start ---------------------------------------------------------------

    async def quick_start(self, fields: dict[str, Any], ttl: int | None = None, *,
                          wait: bool = False, timeout: float = 30.0) -> Program:
        """Start a temporary program from the fields of a ProgramSpec; `name` defaults to
        `quick_<command word>_<ms>_<seq>`, which shares the temporary id's unique part."""
        sup = self.supervisor
        temporary_id = sup.new_temporary_id()
        fields = dict(fields)
        fields.setdefault("name", quick_name(str(fields.get("command", "")), temporary_id))
        try:
            spec = ProgramSpec.model_validate(fields, context={"check_accounts": True})
        except ValidationError as exc:
            raise Invalid.from_validation(exc, fields) from None
        program = sup.quick_start(spec, ttl=ttl, temporary_id=temporary_id)
        if wait:
            await self.tasks.run(
                self._until_started([program.primary], timeout, temporary_id=temporary_id),
                f"quick-start {temporary_id}")
        return program

    # ---- waiting -------------------------------------------------------------------

    async def _until_started(self, instances: Iterable[Instance], timeout: float,
                             **details: object) -> None:
        for inst in instances:
            try:
                state = await until_running(inst, timeout, retries=True)
            except TimeoutError:
                raise WaitTimeout(
                    f"timeout: '{inst.name}' did not reach RUNNING within {timeout:g} s "
                    f"(now {inst.state.value}); it keeps trying", field="timeout",
                    details={"status": inst.state.value}) from None
            if state != S.RUNNING:
                reason = inst.spawn_error or (f"exit code {inst.exit_code}"
                                              if inst.exit_code is not None else state.value)
                raise StartFailed(f"'{inst.name}' did not start: {reason}", inst, details={
                    "status": state.value, "exit_code": inst.exit_code,
                    "spawn_error": inst.spawn_error, **details})


    # ---- exec ----------------------------------------------------------------------

    def exec_create(self, argv: list[str], *, environment: dict[str, str],
                    user: str | None, directory: str | None,
                    terminal: tuple[int, int] | None, stdin: bool, timeout: float | None,
                    detached: bool) -> ExecRun:
        """A run waiting for its client. A user that does not exist or a directory that
        cannot be entered is refused here, before anything runs."""
        try:
            account = resolve_account(user)
        except SpawnError as exc:
            raise Invalid(f"user: {exc}", field="user") from None
        if directory is not None:
            problem = _unenterable(directory, account)
            if problem:
                raise Invalid(f"directory: {problem}", field="directory")
        env = program_env(self.supervisor.base_env, account, environment, None, None)
        spec = ExecSpec(argv=tuple(argv), env=env,
                        cwd=directory or (account.home if account else None),
                        account=account, terminal=terminal, stdin=stdin, timeout=timeout,
                        detached=detached)
        if spec.cwd is not None and not os.path.isdir(spec.cwd):
            spec = dataclasses.replace(spec, cwd="/")  # a home that is not there: as login
        return self.supervisor.execs.create(spec)

    def exec_run(self, run_id: str) -> ExecRun:
        return self.supervisor.execs.get(run_id)

    def exec_attach(self, run: ExecRun) -> None:
        if not self.supervisor.execs.attach(run):
            raise Refused(f"exec run '{run.id}' already has its client", field="id")

    def exec_release(self, run: ExecRun) -> None:
        self.supervisor.execs.release(run)

    def exec_detached(self) -> list[ExecRun]:
        return self.supervisor.execs.detached()

    def exec_stop(self, run: ExecRun) -> bool:
        """Stop a detached run (TERM, KILL after 5 s); True when it had ended already."""
        if run.finished:
            return True
        run.terminate(5.0)
        return False


def _unenterable(directory: str, account: Account | None) -> str | None:
    """Why `account` (pmd's own user when None) could not make `directory` its working
    directory, read from its mode bits as the kernel would; None when it can."""
    try:
        st = os.stat(directory)
    except OSError as exc:
        return f"'{directory}': {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"'{directory}' is not a directory"
    uid = account.uid if account is not None else os.geteuid()
    groups = account.groups if account is not None else (os.getegid(), *os.getgroups())
    if uid == 0:
        return None
    if st.st_uid == uid:
        bit = stat.S_IXUSR
    elif st.st_gid in groups:
        bit = stat.S_IXGRP
    else:
        bit = stat.S_IXOTH
    if not st.st_mode & bit:
        who = account.name if account is not None else "pmd's user"
        return f"'{directory}' cannot be entered by {who}"
    return None


def quick_name(command: str, temporary_id: str) -> str:
    return f"quick_{command_word(command)}_{temporary_id.removeprefix('quick_')}"


def command_word(command: str) -> str:
    """The program's file name, as far as it is safe in a program name."""
    try:
        first = shlex.split(command)[0]
    except (ValueError, IndexError):
        first = command.split()[0] if command.split() else "program"
    word = re.sub(r"[^A-Za-z0-9_-]", "", os.path.basename(first))
    return word[:32] or "program"


async def _settle(futures: Iterable[asyncio.Future[ProgramState]], timeout: float) -> None:
    pending = [f for f in futures if not f.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
