"""The PM2-compatible process API (pmdaemon-rest-api.txt): `/`, `/api/processes...` and
`/api/system`. The same supervisor as the Daemon API, seen as PM2 sees processes.

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

import asyncio
import os
import platform
import shlex
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from .. import __version__
from ..logs.tail import capture_times, count_lines, last_lines
from ..model.spec import USER_RE, HealthCheckSpec, PortRange, ProgramSpec, current_user
from ..model.states import ProgramState
from ..supervisor.errors import (
    Conflict,
    Invalid,
    NotFound,
    Refused,
    StorageFailed,
    SupervisorError,
)
from ..supervisor.health import UNHEALTHY, UNKNOWN
from ..supervisor.instance import Instance, Slot
from ..supervisor.proctree import SAMPLER
from ..supervisor.program import Program
from ..supervisor.reload import reload_program
from ..supervisor.supervisor import Supervisor, validation_to_invalid
from .errors import ApiError

bp = Blueprint("process")
S = ProgramState

LINES_MAX = 10000


# ---- status and formatting ---------------------------------------------------------

def pm2_status(state: ProgramState, expected_exit: bool = True) -> str:
    if state == S.RUNNING:
        return "online"
    if state in (S.STARTING, S.BACKOFF):
        return "launching"
    if state == S.STOPPING:
        return "stopping"
    if state == S.STOPPED or (state == S.EXITED and expected_exit):
        return "stopped"
    return "errored"


def instance_pm2_status(inst: Instance) -> str:
    return pm2_status(inst.state, inst.program.spec.expects_exit(inst.exit_code))


def program_pm2_status(program: Program) -> str:
    statuses = [instance_pm2_status(i) for i in program.instances.values()]
    for candidate in ("online", "launching", "stopping", "errored"):
        if candidate in statuses:
            return candidate
    return "stopped"


def duration(seconds: float | None, with_seconds: bool = True) -> str:
    """2h 15m 30s (process uptime) or 5d 12h 30m (system uptime)."""
    total = int(seconds or 0)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m")]
    if with_seconds:
        parts.append((secs, "s"))
    shown = [f"{n}{unit}" for n, unit in parts if n]
    if not shown:
        return "0s" if with_seconds else "0m"
    return " ".join(shown)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def process_id(program: Slot) -> int | str | None:
    return program.temporary_id if program.is_ephemeral else program.id


def port_text(spec: ProgramSpec) -> str | None:
    if spec.port_range is not None:
        r = spec.port_range
        return str(r.start) if r.start == r.end else f"{r.start}-{r.end}"
    return spec.environment.get("PORT")


def health_summary(program: Program) -> str:
    """unhealthy if any instance is, healthy if all running ones are, else unknown."""
    if program.spec.health_check is None:
        return UNKNOWN
    statuses = [i.health_status for i in program.instances.values()
                if i.state == S.RUNNING]
    if not statuses:
        return UNKNOWN
    if UNHEALTHY in statuses:
        return UNHEALTHY
    if all(s == "healthy" for s in statuses):
        return "healthy"
    return UNKNOWN


# ---- views ---------------------------------------------------------------------------

def process_view(program: Program) -> dict[str, Any]:
    """One process of GET /api/processes."""
    instances = list(program.instances.values())
    running = [i for i in instances if i.pid is not None]
    cpu, memory = 0.0, 0
    for inst in running:
        sample = SAMPLER.usage(inst.pid)  # type: ignore[arg-type]
        cpu += sample[0]
        memory += sample[1]
    uptimes = [u for u in (i.uptime() for i in instances) if u is not None]
    view: dict[str, Any] = {
        "id": process_id(program),
        "name": program.name,
        "status": program_pm2_status(program),
        "pid": running[0].pid if running else None,
        "port": port_text(program.spec),
        "cpu_usage": round(cpu, 1),
        "memory_usage": memory,
        "uptime": duration(max(uptimes) if uptimes else 0),
        "restarts": sum(i.restarts for i in instances),
        "health_status": health_summary(program),
    }
    if program.spec.port_range is not None:
        view["instances"] = [pm2_instance_view(i) for i in instances]
    return view


def pm2_instance_view(inst: Instance) -> dict[str, Any]:
    """One port's entry in `instances` of a port-range process."""
    cpu, memory = SAMPLER.usage(inst.pid) if inst.pid is not None else (0.0, 0)
    return {
        "port": inst.port,
        "status": instance_pm2_status(inst),
        "pid": inst.pid,
        "cpu_usage": round(cpu, 1),
        "memory_usage": memory,
        "uptime": duration(inst.uptime()),
        "restarts": inst.restarts,
        "health_status": inst.health_status if inst.state == S.RUNNING else UNKNOWN,
    }


def script_and_args(command: str) -> tuple[str, list[str]]:
    try:
        argv = shlex.split(command)
    except ValueError:
        return command, []
    return (argv[0], argv[1:]) if argv else (command, [])


def detail_view(program: Program, sup: Supervisor) -> dict[str, Any]:
    """GET /api/processes/{id}: the list view plus config, health_check and logs."""
    spec = program.spec
    view = process_view(program)
    view.pop("health_status")
    script, args = script_and_args(spec.command)
    env = dict(spec.environment)
    view["config"] = {
        "script": script,
        "args": args,
        "instances": len(program.instances),
        "max_memory_restart": spec.max_memory_restart,
        "port": port_text(spec),
        "env": env,
        "cwd": spec.directory,
        "user": spec.user,
        "autorestart": {"true": True, "false": False}.get(spec.autorestart, spec.autorestart),
    }
    view["health_check"] = health_view(program, sup)
    view["health_status"] = health_summary(program)
    primary = program.primary
    view["logs"] = {"out_file": str(primary.log_path("stdout")),
                    "error_file": str(primary.log_path("stderr"))}
    if program.is_ephemeral:
        view["quick_start"] = {"temporary_id": program.temporary_id,
                               "created_at": iso(program.created_at),
                               "expires_at": iso(program.expires_at),
                               "finished_at": iso(program.finished_at)}
    return view


def health_view(program: Program, sup: Supervisor) -> dict[str, Any]:
    check = program.spec.health_check
    if check is None:
        return {"enabled": False, "check_type": None, "url": None, "status": UNKNOWN,
                "last_check": None, "response_time": None}
    states = [s for s in (sup.health.state_of(i) for i in program.instances.values())
              if s is not None]
    latest = max(states, key=lambda s: s.last_check or 0, default=None)
    view: dict[str, Any] = {
        "enabled": True,
        "check_type": check.type,
        "url": check.url,
        "status": health_summary(program),
        "last_check": iso(latest.last_check) if latest else None,
        "response_time": round(latest.response_time) if latest and
        latest.response_time is not None else None,
        "interval": check.interval,
        "timeout": check.timeout,
        "retries": check.retries,
        "restart_on_unhealthy": check.restart_on_unhealthy,
    }
    if check.type == "tcp":
        view["port"] = check.port
    if check.type == "script":
        view["command"] = check.command
    if latest is not None and latest.last_error:
        view["last_error"] = latest.last_error
    return view


# ---- lookup and errors ---------------------------------------------------------------

def _sup(request: Request) -> Supervisor:
    return request.app.ctx.supervisor


def find(sup: Supervisor, ident: str) -> Program:
    ident = unquote(ident)  # the router leaves %20 and friends in path parameters
    program: Program | None = None
    if ident.isascii() and ident.isdigit() and len(ident) <= 18:  # not "²", not 10**5000
        program = sup.programs.get(int(ident))
    if program is None:
        program = sup.ephemeral.get(ident)
    if program is None:
        program = sup.by_name(ident)
    if program is None:
        raise ApiError(404, "PROCESS_NOT_FOUND", f"Process with ID '{ident}' not found",
                       details={"requested_id": ident,
                                "available_processes": [p.name for p in sup.all_programs()]})
    return program


@contextmanager
def pm2_errors() -> Iterator[None]:
    """Supervisor refusals, in this API's codes."""
    try:
        yield
    except ValidationError as exc:
        invalid = validation_to_invalid(exc)
        raise ApiError(400, "INVALID_CONFIGURATION", invalid.message, invalid.field,
                       invalid.details) from None
    except Conflict as exc:
        raise ApiError(409, "PROCESS_ALREADY_EXISTS", exc.message, exc.field,
                       exc.details) from None
    except Invalid as exc:
        raise ApiError(400, "INVALID_CONFIGURATION", exc.message, exc.field,
                       exc.details) from None
    except NotFound as exc:
        raise ApiError(404, "PROCESS_NOT_FOUND", exc.message, exc.field, exc.details) \
            from None
    except Refused as exc:  # valid request, but not in this state (a disabled program)
        raise ApiError(409, "OPERATION_FAILED", exc.message, exc.field, exc.details) \
            from None
    except StorageFailed as exc:  # nothing was done: the same code as the daemon family's
        raise ApiError(507, exc.code, exc.message, exc.field, exc.details) from None
    except SupervisorError as exc:
        raise ApiError(500, "OPERATION_FAILED", exc.message, exc.field, exc.details) \
            from None


def bad_request(message: str, field: str | None = None) -> ApiError:
    return ApiError(400, "INVALID_CONFIGURATION", message, field)


def json_body(request: Request) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        body = request.json
    except Exception:  # noqa: BLE001 - sanic raises its own BadRequest
        raise bad_request("the request body is not valid JSON") from None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


# ---- requests ------------------------------------------------------------------------

MEMORY_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
                "G": 1 << 30, "GB": 1 << 30}


def parse_memory(value: int | str) -> int:
    """512M, 1G, 300K (PM2's spelling) or a number of bytes."""
    if isinstance(value, int):
        return value
    text = value.strip().upper()
    digits = text.rstrip("KMGB")
    unit = text[len(digits):]
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 20 or \
            unit not in MEMORY_UNITS:
        raise ValueError("must be bytes, or a number with K, M or G (512M)")
    return int(digits) * MEMORY_UNITS[unit]


def parse_port(text: str | int) -> tuple[int, int]:
    """"3000" or "4000-4003" (the document's spelling)."""
    raw = str(text).strip()
    start, sep, end = (part.strip() for part in raw.partition("-"))
    parts = [start, end] if sep else [start]
    if not all(p.isascii() and p.isdigit() and len(p) <= 5 for p in parts):
        raise ValueError('must be a port ("3000") or a range ("4000-4003")')
    first = int(start)
    last = int(end) if sep else first
    if not (1 <= first <= 65535 and 1 <= last <= 65535) or last < first:
        raise ValueError('must be a port ("3000") or a range ("4000-4003") within 1-65535')
    return first, last


class CreateProcess(BaseModel):
    """POST /api/processes: the document's curl example, plus the knobs PM2 users expect."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=128)]
    script: Annotated[str, Field(min_length=1, max_length=65536)]
    args: list[str] = Field(default_factory=list)
    port: str | int | None = None
    env: dict[str, str] = Field(default_factory=dict)
    instances: Annotated[int, Field(ge=1, le=1024)] | None = None
    cwd: str | None = None
    user: str | None = None
    autorestart: bool = True
    max_memory_restart: int | str | None = None
    health_check: HealthCheckSpec | None = None
    max_restarts: Annotated[int, Field(ge=0, le=1000)] | None = None
    min_uptime: Annotated[float, Field(ge=0, le=3600)] | None = None
    kill_timeout: Annotated[float, Field(ge=0, le=3600)] | None = None
    description: Annotated[str, Field(max_length=500)] | None = None

    @field_validator("env", mode="before")
    @classmethod
    def _env_text(cls, value: Any) -> Any:
        if isinstance(value, dict):  # {"PORT": 3000} is common: numbers become text
            return {k: str(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                    else v for k, v in value.items()}
        return value

    def command(self) -> str:
        if not self.args and any(c.isspace() for c in self.script):
            return self.script  # a whole command line, as `pmd start "node server.js"`
        return shlex.join([self.script, *self.args])

    def to_spec(self) -> ProgramSpec:
        env = dict(self.env)
        port_range = None
        if self.port is not None:
            try:
                first, last = parse_port(self.port)
            except ValueError as exc:
                raise ApiError(400, "INVALID_CONFIGURATION", f"port: {exc}", "port") from None
            if first == last and (self.instances or 1) == 1:
                env["PORT"] = str(first)  # one port: the PORT variable, argv untouched
            else:
                port_range = PortRange(start=first, end=last)
        count = 1 if port_range is None else port_range.end - port_range.start + 1
        if self.instances is not None and self.instances != count:
            raise bad_request(f"instances: {self.instances} instances need a port range of "
                              f"{self.instances} ports (one port each)", "instances")
        memory = None
        if self.max_memory_restart is not None:
            try:
                memory = parse_memory(self.max_memory_restart)
            except ValueError as exc:
                raise bad_request(f"max_memory_restart: {exc}", "max_memory_restart") \
                    from None
        user = self.user or default_user()
        if user is not None and os.geteuid() != 0 and user != current_user():
            raise ApiError(403, "PERMISSION_DENIED",
                           f"pmd does not run as root: it cannot start programs as '{user}'",
                           "user")
        fields: dict[str, Any] = {
            "name": self.name, "command": self.command(), "user": user,
            "directory": self.cwd, "environment": env, "port_range": port_range,
            "autorestart": "true" if self.autorestart else "false",
            "max_memory_restart": memory, "health_check": self.health_check,
            "description": self.description, "boot": True, "enabled": True,
        }
        if self.max_restarts is not None:
            fields["startretries"] = self.max_restarts
        if self.min_uptime is not None:
            fields["startsecs"] = self.min_uptime
        if self.kill_timeout is not None:
            fields["stop_timeout"] = self.kill_timeout
        fields = {k: v for k, v in fields.items() if v is not None}
        return ProgramSpec.model_validate(fields, context={"check_accounts": True})


def default_user() -> str | None:
    """pmd's own user, by name, when it has one a program spec can name."""
    name = current_user()
    return name if USER_RE.match(name) else None


# ---- routes --------------------------------------------------------------------------

@bp.get("/")
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
        },
    })


@bp.get("/api/processes")
async def list_processes(request: Request) -> HTTPResponse:
    sup = _sup(request)
    status = request.args.get("status")
    name = request.args.get("name")
    programs = sorted(sup.programs.values(), key=lambda p: p.id or 0)
    programs += sorted(sup.ephemeral.values(), key=lambda p: p.created_at or 0)
    views = []
    for program in programs:
        if name is not None and program.name != name:
            continue
        if status is not None and program_pm2_status(program) != status.lower():
            continue
        views.append(process_view(program))
    return json(views)


@bp.post("/api/processes")
async def create_process(request: Request) -> HTTPResponse:
    sup = _sup(request)
    body = json_body(request)
    with pm2_errors():
        spec = CreateProcess.model_validate(body).to_spec()
        program = sup.add(spec)
    return json({"success": True, "message": "Process started successfully",
                 "id": program.id, "process": detail_view(program, sup)}, status=201)


@bp.get("/api/processes/<ident:str>")
async def get_process(request: Request, ident: str) -> HTTPResponse:
    sup = _sup(request)
    return json(detail_view(find(sup, ident), sup))


async def _wait(futures: list[asyncio.Future[ProgramState]], timeout: float) -> None:
    pending = [f for f in futures if not f.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)


@bp.post("/api/processes/<ident:str>/stop")
async def stop_process(request: Request, ident: str) -> HTTPResponse:
    sup = _sup(request)
    program = find(sup, ident)
    with pm2_errors():
        if program.is_ephemeral:
            futures = sup.stop_ephemeral(program)
        else:
            futures = sup.stop(program)
    await _wait(futures, program.spec.stop_timeout + 2)
    return json({"success": True, "message": "Process stopped successfully"})


def _port_override(sup: Supervisor, program: Program, body: dict[str, Any]) -> bool:
    """A restart or reload with {"port": ...}: the program's ports change for good."""
    if "port" not in body or body["port"] is None:
        return False
    try:
        first, last = parse_port(body["port"])
    except ValueError as exc:
        raise bad_request(f"port: {exc}", "port") from None
    if program.is_ephemeral:
        raise bad_request("the port of a quick-start program cannot be changed", "port")
    spec = program.spec
    changes: dict[str, Any]
    if first == last and spec.port_range is None:
        env = dict(spec.environment)
        if env.get("PORT") == str(first):
            return False
        env["PORT"] = str(first)
        changes = {"environment": env}
    else:
        if spec.port_range is not None and (spec.port_range.start, spec.port_range.end) \
                == (first, last):
            return False
        env = {k: v for k, v in spec.environment.items() if k != "PORT"}
        changes = {"port_range": {"start": first, "end": last}, "environment": env}
    with pm2_errors():
        sup.edit(program.id, changes)  # type: ignore[arg-type]
        if not program.is_active():
            sup.restart(program)
    return True


@bp.post("/api/processes/<ident:str>/restart")
async def restart_process(request: Request, ident: str) -> HTTPResponse:
    sup = _sup(request)
    program = find(sup, ident)
    body = json_body(request)
    if not _port_override(sup, program, body):
        with pm2_errors():
            sup.restart(program)
    return json({"success": True, "message": "Process restarted successfully"})


@bp.post("/api/processes/<ident:str>/reload")
async def reload_process(request: Request, ident: str) -> HTTPResponse:
    sup = _sup(request)
    program = find(sup, ident)
    body = json_body(request)
    if _port_override(sup, program, body):
        # New ports are new listeners: nothing to hand over, the program restarts on them.
        return json({"success": True, "message": "Process reloaded successfully",
                     "mode": "restart"})
    with pm2_errors():
        report = await reload_program(sup, program)
    if not report.ok:
        raise ApiError(500, "OPERATION_FAILED",
                       f"reload of '{program.name}' failed on port {report.failed_port}: "
                       f"{report.reason}; the old instance keeps serving",
                       details=report.as_dict())
    return json({"success": True, "message": "Process reloaded successfully",
                 **report.as_dict()})


@bp.delete("/api/processes/<ident:str>")
async def delete_process(request: Request, ident: str) -> HTTPResponse:
    sup = _sup(request)
    program = find(sup, ident)
    with pm2_errors():
        if program.is_ephemeral:
            await _wait(sup.stop_ephemeral(program), program.spec.stop_timeout + 2)
            sup.forget_ephemeral(program)
        else:
            await sup.remove(program.id)  # type: ignore[arg-type]
    return json({"success": True, "message": "Process deleted successfully"})


@bp.get("/api/processes/<ident:str>/logs")
async def process_logs(request: Request, ident: str) -> HTTPResponse:
    program = find(_sup(request), ident)
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
    for inst in program.instances.values():
        for label, stream in streams:
            logfile = inst.stdout_log if stream == "stdout" else inst.stderr_log
            path = logfile.path if logfile is not None else inst.log_path(stream)
            found = last_lines(path, lines, program.spec.log_backups,
                               capture_times(logfile, path))
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
async def system(request: Request) -> HTTPResponse:
    import psutil

    sup = _sup(request)
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
    for program in sup.all_programs():
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
        "cpu": {"cores": os.cpu_count() or 1, "usage": round(SAMPLER.system_cpu(), 1),
                "load_average": [round(x, 2) for x in os.getloadavg()]},
        "memory": {"total": memory.total, "used": used, "free": memory.available,
                   "usage_percent": round(used / memory.total * 100, 1) if memory.total
                   else 0.0},
        "disk": disk_view,
        "processes": counts,
    })
