"""The Daemon Management API on /api/v1/daemon (daemon-management-api.txt and
daemon-api-extras.md): programs, control, status, logs and quick-start.

Handlers are thin: validate the whole request first (a rejection changes nothing), call one
method of the service (pmd_init.service), serialize. Errors become JSON in errors.py.
Decisions where the spec is silent are written down in docs/daemon-api.md.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sanic import Request
from sanic.response import HTTPResponse, json

from ..logs.tail import tail_lines
from ..model.spec import ProgramSpec
from ..service import Service
from ..supervisor.errors import Invalid, NotFound
from ..supervisor.execs import ExecRun
from ..supervisor.instance import Instance
from ..supervisor.program import Program
from .context import JsonBlueprint, PmdApp, context
from .errors import ApiError
from .jsondata import exact_numbers
from .logstream import LINES_MAX, LogFollower
from .models import (
    AddProgramRequest,
    EditProgramRequest,
    LogsQuery,
    LogStreamQuery,
    ProgramQuery,
    ProgramsQuery,
    QuickStartRequest,
    RestartRequest,
    StartRequest,
    StatusQuery,
    StopRequest,
)
from .openapi import doc
from .views import hms, instance_status, instance_view, iso, program_status, stats_view

bp = JsonBlueprint("daemon", url_prefix="/api/v1/daemon")
M = TypeVar("M", bound=BaseModel)

# ---- request parsing ---------------------------------------------------------------


def validate(model: type[M], data: Any, check_accounts: bool = False,
             strict: bool = False) -> M:
    """`strict` for JSON bodies: a JSON value of another type than the field's is refused
    (pydantic's lax mode took `0` for false and `false` for 0, which the OpenAPI document,
    generated from the same models, says are invalid); query strings are text and stay
    lax."""
    try:
        return model.model_validate(data, strict=strict or None,
                                    context={"check_accounts": check_accounts})
    except ValidationError as exc:
        raise Invalid.from_validation(exc, data) from None


def body(request: Request, model: type[M], check_accounts: bool = False,
         optional: bool = False) -> M:
    """The JSON body as `model`. An `optional` body may be left out and is then `{}` (all
    of whose fields default); elsewhere a missing body is refused like any other that is
    not an object, or an edit without one would succeed and change nothing."""
    if not request.body and optional:
        return validate(model, {}, check_accounts)
    data = request.json if request.body else None  # not JSON: sanic's 400, INVALID_JSON
    if not isinstance(data, dict):
        raise ApiError(400, "INVALID_BODY", "the request body must be a JSON object")
    return validate(model, exact_numbers(data), check_accounts, strict=True)


def query(request: Request, model: type[M]) -> M:
    # blank values kept: `?enabled=` is a bad boolean, not an absent filter
    args = {key: values[-1]
            for key, values in request.get_args(keep_blank_values=True).items()}
    return validate(model, args)


def _service(request: Request) -> Service:
    return context(request).service


def cached(request: Request, key: Hashable, build: Callable[[], Any]) -> HTTPResponse:
    """A listing's answer from the view cache (viewcache.py): the same bytes json() sends."""
    return HTTPResponse(context(request).views.answer(key, build),
                        content_type="application/json")


# ---- views -------------------------------------------------------------------------

def program_view(request: Request, program: Program, include_status: bool = False,
                 include_stats: bool = False) -> dict[str, Any]:
    view = program.spec.to_json()
    if include_status or include_stats:
        view["status"] = program_status(program)
    if include_stats:
        sampler = context(request).supervisor.sampler
        if program.spec.port_range is None:
            stats = stats_view(program.primary, sampler)
            if stats is not None:
                view["stats"] = stats
        else:
            for inst, item in zip(program.instances.values(), view["status"]["instances"],
                                  strict=True):
                stats = stats_view(inst, sampler)
                if stats is not None:
                    item["stats"] = stats
    return view


#: The status fields of a quick-start entry taken from the program's status object.
QUICK_STATUS_KEYS = ("completed", "ready", "ready_at", "notify_status", "notify_stopping",
                     "retry_at", "backoff_reason")


def quick_view(program: Program) -> dict[str, Any]:
    """A quick-start entry: lower-case status, as that product's quick-start answers."""
    inst = program.primary
    view: dict[str, Any] = {
        "temporary_id": program.temporary_id,
        "name": program.name,
        "command": program.spec.command,
        "user": program.spec.user,
        "status": inst.state.value.lower(),
    }
    if inst.pid is not None:
        view["pid"] = inst.pid
        view["uptime"] = hms(inst.uptime())
    view["created_at"] = iso(program.created_at)
    if program.expires_at is not None:
        view["expires_at"] = iso(program.expires_at)
    if program.finished_at is not None:
        view["finished_at"] = iso(program.finished_at)
    if inst.exit_code is not None:
        view["exit_code"] = inst.exit_code
    if inst.spawn_error:
        view["spawn_error"] = inst.spawn_error
    # what the fields a quick-start shares with programs show (readiness, oneshot,
    # backoff), as a program's status shows them
    status = instance_status(inst)
    view.update({key: status[key] for key in QUICK_STATUS_KEYS if key in status})
    spec = program.spec
    view.update({
        "stdout_logfile": inst.log_file("stdout") if spec.logs_enabled else None,
        "stderr_logfile": inst.log_file("stderr") if spec.logs_enabled else None,
        "logs_enabled": spec.logs_enabled,
        "log_max_bytes": spec.log_max_bytes,
        "log_backups": spec.log_backups,
    })
    return view


EXEC_PREFIX = "exec_"


def exec_status(run: ExecRun) -> str:
    return "exited" if run.finished else "running"


def exec_view(run: ExecRun) -> dict[str, Any]:
    """A detached exec run in the quick-start list: the entry's shape, `kind: exec`."""
    view: dict[str, Any] = {
        "temporary_id": run.id, "kind": "exec", "name": run.spec.argv[0],
        "command": shlex.join(run.spec.argv),
        "user": run.spec.account.name if run.spec.account else None,
        "status": exec_status(run), "created_at": iso(run.created_at),
    }
    if run.pid is not None and not run.finished:
        view["pid"] = run.pid
    if run.finished_at is not None:
        view["finished_at"] = iso(run.finished_at)
        view["exit_code"] = run.exit_code
        if run.signal:
            view["signal"] = run.signal
        if run.reason:
            view["reason"] = run.reason
    return view


def _detached(request: Request, run_id: str) -> ExecRun:
    run = _service(request).exec_run(run_id)
    if not (run.spec.detached and run.attached):
        raise NotFound(f"no quick-start program or detached exec '{run_id}'",
                       field="temporary_id")
    return run


# ---- shared steps --------------------------------------------------------------------

def _logs_answer(program: Program, inst: Instance, q: LogsQuery) -> HTTPResponse:
    if not program.spec.logs_enabled:
        raise ApiError(400, "LOGS_DISABLED",
                       f"logs_enabled: '{program.name}' keeps no log files", field="logs_enabled")
    lines = min(q.lines, LINES_MAX)
    path = inst.log_path(q.type)
    text = "\n".join(tail_lines(path, lines, program.spec.log_backups))
    return json({"success": True, "logs": text, "type": q.type, "lines": lines,
                 "log_file": str(path)})


# ---- programs ----------------------------------------------------------------------

def _filter(q: ProgramsQuery, spec: ProgramSpec) -> bool:
    for name in ("hoody_kit", "lazy_load", "enabled", "boot"):
        wanted = getattr(q, name)
        if wanted is not None and getattr(spec, name) != wanted:
            return False
    ports = spec.port_range
    if q.port is not None and (ports is None or not ports.start <= q.port <= ports.end):
        return False
    # port_to below port_from: an empty range, which no program overlaps (no error: the
    # OpenAPI document cannot say that one query value must not be below another)
    if q.port_from is not None and q.port_to is not None and (
            ports is None or q.port_from > q.port_to or ports.start > q.port_to
            or q.port_from > ports.end):
        return False
    return True


@bp.get("/programs")
@doc("List programs (filters combine)", query=ProgramsQuery,
     response="`{programs: [program]}` (no success key, as the spec shows)")
async def list_programs(request: Request) -> HTTPResponse:
    q = query(request, ProgramsQuery)
    if (q.port_from is None) != (q.port_to is None):
        missing = "port_to" if q.port_to is None else "port_from"
        raise Invalid(f"{missing}: port_from and port_to must be used together", field=missing)
    def build() -> dict[str, Any]:
        return {"programs": [program_view(request, p, q.include_status, q.include_stats)
                             for p in _service(request).programs() if _filter(q, p.spec)]}

    if q.include_stats:  # sampled from /proc: not kept
        return json(build())
    return cached(request, ("programs", request.query_string), build)


@bp.get("/programs/<program_id:int>")
@doc("One program's configuration", query=ProgramQuery, response="`{success, program}`")
async def get_program(request: Request, program_id: int) -> HTTPResponse:
    program = _service(request).program(program_id)
    q = query(request, ProgramQuery)
    return json({"success": True,
                 "program": program_view(request, program, q.include_status, q.include_stats)})


@bp.post("/programs/add")
@doc("Add a program", body=AddProgramRequest, response="`{success, id, program}`")
async def add_program(request: Request) -> HTTPResponse:
    req = body(request, AddProgramRequest, check_accounts=True)
    spec = ProgramSpec.model_validate(req.model_dump(exclude_unset=True, exclude={"hoody_kit"}))
    program = await _service(request).add(spec)
    return json({"success": True, "id": program.id, "program": program_view(request, program)})


@bp.post("/programs/edit/<program_id:int>")
@doc("Change some fields of a program; a running one restarts when what it runs changed",
     body=EditProgramRequest, response="`{success, program}`")
async def edit_program(request: Request, program_id: int) -> HTTPResponse:
    service = _service(request)
    service.program(program_id)  # an unknown id is a 404 whatever the body
    req = body(request, EditProgramRequest)
    changes = req.model_dump(mode="json", exclude_unset=True, exclude={"hoody_kit"})
    program = await service.edit(program_id, changes)
    return json({"success": True, "program": program_view(request, program)})


@bp.post("/programs/remove/<program_id:int>")
@doc("Remove a program (stopped first)", response="`{success, id}`")
async def remove_program(request: Request, program_id: int) -> HTTPResponse:
    await _service(request).remove(program_id)
    return json({"success": True, "id": program_id})


@bp.post("/programs/reset")
@doc("Back to programs.default.json: stop all, re-apply the default boot programs",
     response="`{success, count}`")
async def reset_programs(request: Request) -> HTTPResponse:
    count = await _service(request).reset()
    return json({"success": True, "count": count})


# ---- control -----------------------------------------------------------------------

@bp.post("/programs/<program_id:int>/start")
@doc("Start a program (a port-range program: one port)", body=StartRequest, body_optional=True,
     response="`{success, already_running, instance: {port, instance_name, status, pid, "
              "uptime}}`")
async def start_program(request: Request, program_id: int) -> HTTPResponse:
    service = _service(request)
    program = service.program(program_id)
    req = body(request, StartRequest, optional=True)
    inst, already = await service.start(program, req.port, wait=req.wait, timeout=req.timeout,
                                        if_not_running=req.if_not_running, force=req.force)
    return json({"success": True, "already_running": already,
                 "instance": instance_view(inst)})


@bp.post("/programs/<program_id:int>/restart")
@doc("Restart a program, or one port of it (pmd's addition)", body=RestartRequest,
     body_optional=True,
     response="`{success, instances: [instance]}`")
async def restart_program(request: Request, program_id: int) -> HTTPResponse:
    service = _service(request)
    program = service.program(program_id)
    req = body(request, RestartRequest, optional=True)
    instances = await service.restart(program, req.port, wait=req.wait, timeout=req.timeout)
    return json({"success": True, "instances": [instance_view(i) for i in instances]})


@bp.post("/programs/<program_id:int>/stop")
@doc("Stop a program, one port of it, or all its ports; answers once stopped",
     body=StopRequest, body_optional=True,
     response="`{success, stopped: [instance_name], status}`")
async def stop_program(request: Request, program_id: int) -> HTTPResponse:
    service = _service(request)
    program = service.program(program_id)
    req = body(request, StopRequest, optional=True)
    if req.all and req.port is not None:
        raise Invalid("all: give either port or all, not both", field="all")
    stopped = await service.stop(program, req.port)
    return json({"success": True, "stopped": stopped, "status": program_status(program)})


async def _set_enabled(request: Request, program_id: int, enabled: bool) -> HTTPResponse:
    program = await _service(request).set_enabled(program_id, enabled)
    return json({"success": True, "id": program_id, "enabled": program.spec.enabled,
                 "status": program_status(program)})


@bp.post("/programs/<program_id:int>/enable")
@doc("Enable a program (a boot program starts)", response="`{success, id, enabled, status}`")
async def enable_program(request: Request, program_id: int) -> HTTPResponse:
    return await _set_enabled(request, program_id, True)


@bp.post("/programs/<program_id:int>/disable")
@doc("Disable a program: stop it, keep its configuration",
     response="`{success, id, enabled, status}`")
async def disable_program(request: Request, program_id: int) -> HTTPResponse:
    return await _set_enabled(request, program_id, False)


# ---- status ------------------------------------------------------------------------

@bp.get("/status")
@doc("The status of every program", response="`{success, statuses: [{id, name, enabled, "
                                              "status}]}`")
async def statuses(request: Request) -> HTTPResponse:
    def build() -> dict[str, Any]:
        return {
            "success": True,
            "statuses": [
                {"id": p.id, "name": p.name, "enabled": p.spec.enabled,
                 "status": program_status(p)}
                for p in _service(request).programs()
            ],
        }

    return cached(request, "status", build)


@bp.get("/status/<program_id:int>")
@doc("One program's status (port-range form for a port-range program)", query=StatusQuery,
     response="`{success, status, stats?}`")
async def status_one(request: Request, program_id: int) -> HTTPResponse:
    service = _service(request)
    program = service.program(program_id)
    q = query(request, StatusQuery)
    if q.port is not None:
        inst = service.instance(program, q.port, "query")
        answer: dict[str, Any] = {"success": True,
                                  "status": {"id": program.id, **instance_status(inst)}}
        if q.include_stats:
            stats = stats_view(inst, service.supervisor.sampler)
            if stats is not None:
                answer["stats"] = stats
        return json(answer)
    view = program_view(request, program, True, q.include_stats)
    answer = {"success": True, "status": view["status"]}
    if "stats" in view:
        answer["stats"] = view["stats"]
    return json(answer)


# ---- logs --------------------------------------------------------------------------

@bp.get("/programs/<program_id:int>/logs")
@doc("The last lines of a program's stdout or stderr (continued into rotated files)",
     query=LogsQuery, response="`{success, logs, type, lines, log_file}`")
async def program_logs(request: Request, program_id: int) -> HTTPResponse:
    service = _service(request)
    program = service.program(program_id)
    q = query(request, LogsQuery)
    return _logs_answer(program, service.instance(program, q.port, "read"), q)


def _closing(request: Request) -> asyncio.Event:
    ctx = context(request)
    if ctx.log_streams_closing is None:
        ctx.log_streams_closing = asyncio.Event()
    return ctx.log_streams_closing


@bp.before_server_stop
async def _end_log_streams(app: PmdApp) -> None:
    """Streams end at shutdown and re-exec instead of holding the server open."""
    if app.ctx.log_streams_closing is not None:
        app.ctx.log_streams_closing.set()


@bp.after_server_start
async def _open_log_streams(app: PmdApp) -> None:
    """Streams may run again: the server starts, or serves on after a failed re-exec."""
    if app.ctx.log_streams_closing is not None:
        app.ctx.log_streams_closing.clear()


@bp.get("/programs/<program_id:int>/logs/stream")
@doc("Follow a program's log as Server-Sent Events; `id` is a byte cursor, a `reset` event "
     "says the file was rotated", query=LogStreamQuery,
     response="text/event-stream", content_type="text/event-stream")
async def program_log_stream(request: Request, program_id: int) -> None:
    service = _service(request)
    program = service.program(program_id)
    programs = service.supervisor.programs

    def find() -> Program | None:
        return programs.get(program_id)

    await _follow(request, program, find)


async def _follow(request: Request, program: Program,
                  find: Callable[[], Program | None]) -> None:
    """A log stream of `program` (one port of it with `port`); `find` gives the program
    again at each wake-up, None once it is gone (the stream then ends)."""
    service = _service(request)
    q = query(request, LogStreamQuery)
    inst = service.instance(program, q.port, "follow")
    if not program.spec.logs_enabled:
        raise ApiError(400, "LOGS_DISABLED",
                       f"logs_enabled: '{program.name}' keeps no log files", field="logs_enabled")
    offset = q.offset
    if offset is None:
        header = request.headers.get("last-event-id")
        if header:
            try:
                offset = int(header)
            except ValueError:
                raise Invalid("Last-Event-ID: must be a byte offset",
                              field="Last-Event-ID") from None
            if offset < 0:
                raise Invalid("Last-Event-ID: must not be negative", field="Last-Event-ID")
    port = inst.port

    def resolve() -> Instance | None:
        current = find()
        return current.instance(port) if current is not None else None

    follower = LogFollower(request, resolve, q.type, _closing(request))
    await follower.run(inst.log_path(q.type), program.spec.log_backups, offset, q.lines)


# ---- quick-start -------------------------------------------------------------------

@bp.get("/quick-start")
@doc("Quick-start programs: running ones, and finished ones for their grace period",
     response="`{success, count, ephemeral_programs: [entry]}`")
async def quick_list(request: Request) -> HTTPResponse:
    service = _service(request)
    entries = [quick_view(p) for p in service.quick_starts()]
    entries += [exec_view(run) for run in service.exec_detached()]
    return json({"success": True, "count": len(entries), "ephemeral_programs": entries})


@bp.post("/quick-start")
@doc("Start a temporary program (never saved to programs.json)", body=QuickStartRequest,
     response="`{success, temporary_id, name, status, pid?, uptime?, created_at, expires_at?}`")
async def quick_start(request: Request) -> HTTPResponse:
    req = body(request, QuickStartRequest)
    fields = {k: v for k, v in req.model_dump(exclude_unset=True).items()
              if k not in ("ttl", "wait", "timeout") and v is not None}
    program = await _service(request).quick_start(fields, req.ttl, wait=req.wait,
                                                  timeout=req.timeout)
    return json({"success": True, **quick_view(program)})


@bp.get("/quick-start/<temporary_id:str>/status")
@doc("A quick-start program's status", response="`{success, temporary_id, name, status, ...}`")
async def quick_status(request: Request, temporary_id: str) -> HTTPResponse:
    if temporary_id.startswith(EXEC_PREFIX):
        return json({"success": True, **exec_view(_detached(request, temporary_id))})
    return json({"success": True, **quick_view(_service(request).quick(temporary_id))})


@bp.get("/quick-start/<temporary_id:str>/logs")
@doc("The last lines of a quick-start program's log", query=LogsQuery,
     response="`{success, logs, type, lines, log_file}`")
async def quick_logs(request: Request, temporary_id: str) -> HTTPResponse:
    program = _service(request).quick(temporary_id)
    q = query(request, LogsQuery)
    return _logs_answer(program, program.primary, q)


@bp.get("/quick-start/<temporary_id:str>/logs/stream")
@doc("Follow a quick-start program's log as Server-Sent Events, as a program's stream",
     query=LogStreamQuery, response="text/event-stream", content_type="text/event-stream")
async def quick_log_stream(request: Request, temporary_id: str) -> None:
    service = _service(request)
    program = service.quick(temporary_id)
    ephemeral = service.supervisor.ephemeral

    def find() -> Program | None:
        return ephemeral.get(temporary_id)

    await _follow(request, program, find)


@bp.post("/quick-start/<temporary_id:str>/stop")
@doc("Stop a quick-start program and remove it (it cannot be restarted)",
     response="`{success, temporary_id, cleaned_up, message}`")
async def quick_stop(request: Request, temporary_id: str) -> HTTPResponse:
    service = _service(request)
    if temporary_id.startswith(EXEC_PREFIX):
        run = _detached(request, temporary_id)
        ended = service.exec_stop(run)
        return json({"success": True, "temporary_id": temporary_id, "cleaned_up": ended,
                     "message": "Command had already ended" if ended else
                     "Command sent SIGTERM (SIGKILL in 5 s)", "status": exec_status(run)})
    program = service.quick(temporary_id)
    if await service.stop_quick(program):
        message = "Program had already stopped; configuration removed"
    else:
        message = "Program stopped and configuration removed"
    return json({"success": True, "temporary_id": temporary_id, "cleaned_up": True,
                 "message": message, "status": program.primary.state.value.lower()})
