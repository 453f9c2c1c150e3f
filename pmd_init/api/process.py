"""The PM2-compatible process API (pmdaemon-rest-api.txt): `/`, `/api/processes...` and
`/api/system`. The same programs as the Daemon API, seen as PM2 sees processes.

This module holds the routes: each parses its request (process_requests.py), calls one
method of the service (pmd_init.service) and answers with a view (process_views.py);
refusals become this family's codes in errors.py's PROCESS table.

Identity: a program's `id` is its numeric id, or the temporary id of a quick-start
program; the `{id}` of a route is either of those or the program's name.

Status names, from the supervisor's states: RUNNING is `online`; STARTING and BACKOFF
(waiting to retry a failed start) are `launching`; STOPPING is `stopping`; STOPPED, and
EXITED with an expected exit code, are `stopped`; FATAL, EXITED with an unexpected code,
and UNKNOWN are `errored`.

Errors use the document's codes: PROCESS_NOT_FOUND (404, with available_processes),
PROCESS_ALREADY_EXISTS (409), INVALID_CONFIGURATION (400, for any invalid body or query),
PERMISSION_DENIED (401 without a valid key, 403 for a user pmd may not run as),
OPERATION_FAILED (500) and RATE_LIMITED (429); and, shared with the Daemon API,
STORAGE_FULL / STORAGE_READ_ONLY / STORAGE_FAILED (507) when the change could not be
written to the config or state dir (nothing was changed).
"""

from __future__ import annotations

import os
import platform
import socket
import time
from typing import Any
from urllib.parse import unquote

from sanic import Request
from sanic.response import HTTPResponse, json

from .. import __version__
from ..logs.tail import capture_times, count_lines, last_lines
from ..service import Service
from ..supervisor.program import Program
from .context import JsonBlueprint, context
from .openapi import doc
from .process_requests import (
    CreateProcess,
    MoveRequest,
    ProcessesQuery,
    ProcessLogsQuery,
    bad_request,
    json_body,
    parse_create,
    parse_move,
)
from .process_views import detail_view, duration, iso, process_view, program_pm2_status

bp = JsonBlueprint("process")

LINES_MAX = 10000


def _service(request: Request) -> Service:
    return context(request).service


def find(request: Request, ident: str) -> Program:
    # the router leaves %20 and friends in path parameters
    return _service(request).resolve(unquote(ident))


# ---- routes --------------------------------------------------------------------------

@bp.get("/")
@doc("What this server is, and where its APIs are")
async def root(request: Request) -> HTTPResponse:
    return json({
        "name": "pmd",
        "version": __version__,
        "description": "A container init and process supervisor with a PM2-compatible API",
        "status": "running",
        "endpoints": {
            "processes": "/api/processes",
            "system": "/api/system",
            "status": "/api/status",
            "websocket": "/ws",
            "daemon": "/api/v1/daemon",
            "dashboard": "/ui",
        },
    })


@bp.get("/api/processes")
@doc("Every process, PM2's way (filters: status, name)", query=ProcessesQuery)
async def list_processes(request: Request) -> HTTPResponse:
    service = _service(request)

    def build() -> list[dict[str, Any]]:
        status = request.args.get("status")
        name = request.args.get("name")
        views = []
        for program in [*service.programs(), *service.quick_starts()]:
            if name is not None and program.name != name:
                continue
            if status is not None and program_pm2_status(program) != status.lower():
                continue
            views.append(process_view(program, service.supervisor.sampler))
        return views

    # CPU and memory come from the sampler's scan, itself reused for a second
    body = context(request).views.answer(("processes", request.query_string), build)
    return HTTPResponse(body, content_type="application/json")


@bp.post("/api/processes")
@doc("Create and start a process", body=CreateProcess,
     responses={"201": {"description": "`{success, message, id, process}`"}})
async def create_process(request: Request) -> HTTPResponse:
    service = _service(request)
    spec = parse_create(json_body(request))
    program = await service.add(spec)
    return json({"success": True, "message": "Process started successfully",
                 "id": program.id, "process": detail_view(program, service.supervisor)},
                status=201)


@bp.get("/api/processes/<ident:str>")
@doc("One process: its id, temporary id or name")
async def get_process(request: Request, ident: str) -> HTTPResponse:
    return json(detail_view(find(request, ident), _service(request).supervisor))


@bp.post("/api/processes/<ident:str>/stop")
@doc("Stop a process")
async def stop_process(request: Request, ident: str) -> HTTPResponse:
    await _service(request).stop(find(request, ident))
    return json({"success": True, "message": "Process stopped successfully"})


@bp.post("/api/processes/<ident:str>/restart")
@doc("Restart a process, to other ports with `port`", body=MoveRequest, body_optional=True)
async def restart_process(request: Request, ident: str) -> HTTPResponse:
    program = find(request, ident)
    move_to = parse_move(json_body(request))
    await _service(request).restart(program, move_to=move_to)
    return json({"success": True, "message": "Process restarted successfully"})


@bp.post("/api/processes/<ident:str>/reload")
@doc("Reload a process without downtime (new instances first)", body=MoveRequest,
     body_optional=True)
async def reload_process(request: Request, ident: str) -> HTTPResponse:
    program = find(request, ident)
    move_to = parse_move(json_body(request))
    report = await _service(request).reload(program, move_to=move_to)
    return json({"success": True, "message": "Process reloaded successfully",
                 **report.as_dict()})


@bp.delete("/api/processes/<ident:str>")
@doc("Stop and remove a process")
async def delete_process(request: Request, ident: str) -> HTTPResponse:
    await _service(request).delete(find(request, ident))
    return json({"success": True, "message": "Process deleted successfully"})


@bp.get("/api/processes/<ident:str>/logs")
@doc("The last lines of a process's logs, by capture time", query=ProcessLogsQuery)
async def process_logs(request: Request, ident: str) -> HTTPResponse:
    program = find(request, ident)
    raw = request.args.get("lines", "20")
    try:
        lines = int(raw)
    except ValueError:
        raise bad_request("lines: must be an integer", "lines") from None
    if not 1 <= lines <= LINES_MAX:
        raise bad_request(f"lines: must be 1-{LINES_MAX}", "lines")
    kind = request.args.get("type", "all")
    if kind not in ("out", "error", "all"):
        raise bad_request("type: must be out, error or all", "type")
    streams = [("out", "stdout"), ("error", "stderr")]
    if kind != "all":
        streams = [s for s in streams if s[0] == kind]
    entries: list[tuple[float, int, dict[str, Any]]] = []
    total = 0
    seq = 0
    saved = context(request).supervisor.runtime.saved_times
    for inst in program.instances.values():
        for label, stream in streams:
            logfile = inst.stdout_log if stream == "stdout" else inst.stderr_log
            path = logfile.path if logfile is not None else inst.log_path(stream)
            found = last_lines(path, lines, program.spec.log_backups,
                               capture_times(logfile, path, saved))
            total += count_lines(path)
            for line in found:
                entry: dict[str, Any] = {"timestamp": iso(line.time), "type": label,
                                         "message": line.text}
                if inst.port is not None:
                    entry["port"] = inst.port
                entries.append((line.time if line.time is not None else float("-inf"), seq,
                                entry))
                seq += 1
    entries.sort(key=lambda e: (e[0], e[1]))
    return json({"logs": [e[2] for e in entries[-lines:]], "total_lines": total})


@bp.get("/api/system")
@doc("The host: cpu, memory, disk, and counts of processes by status")
async def system(request: Request) -> HTTPResponse:
    import psutil

    sup = _service(request).supervisor
    programs = sup.all_programs()
    memory = psutil.virtual_memory()
    try:
        disk = psutil.disk_usage("/")
        disk_view = {"total": disk.total, "used": disk.used, "free": disk.free,
                     "usage_percent": round(disk.percent, 1)}
    except OSError:
        disk_view = {"total": 0, "used": 0, "free": 0, "usage_percent": 0.0}
    try:
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        uptime = time.time() - psutil.boot_time()
    counts = {"total": 0, "online": 0, "stopped": 0, "errored": 0}
    for program in programs:
        counts["total"] += 1
        status = program_pm2_status(program)
        if status in counts:
            counts[status] += 1
    used = memory.total - memory.available
    return json({
        "hostname": socket.gethostname(),
        "platform": platform.system().lower(),
        "arch": platform.machine(),
        "uptime": duration(uptime, with_seconds=False),
        "cpu": {"cores": os.cpu_count() or 1, "usage": round(sup.sampler.system_cpu(), 1),
                "load_average": [round(x, 2) for x in os.getloadavg()]},
        "memory": {"total": memory.total, "used": used, "free": memory.available,
                   "usage_percent": round(used / memory.total * 100, 1) if memory.total
                   else 0.0},
        "disk": disk_view,
        "processes": counts,
    })
