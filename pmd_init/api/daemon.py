"""The Daemon Management API on /api/v1/daemon (daemon-management-api.txt and
daemon-api-extras.md): programs, control, status, logs and quick-start."""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from ..supervisor.supervisor import Supervisor
from .errors import ApiError
from .views import instance_status, program_status

bp = Blueprint("daemon", url_prefix="/api/v1/daemon")


def _sup(request: Request) -> Supervisor:
    return request.app.ctx.supervisor


def _int_query(request: Request, name: str) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, "VALIDATION_ERROR", f"{name}: must be an integer", field=name) \
            from None


@bp.get("/status")
async def statuses(request: Request) -> HTTPResponse:
    sup = _sup(request)
    return json({
        "success": True,
        "statuses": [
            {"id": p.id, "name": p.name, "enabled": p.spec.enabled,
             "status": program_status(p)}
            for p in sorted(sup.programs.values(), key=lambda p: p.id or 0)
        ],
    })


@bp.get("/status/<program_id:int>")
async def status_one(request: Request, program_id: int) -> HTTPResponse:
    program = _sup(request).get(program_id)
    port = _int_query(request, "port")
    if port is not None:
        inst = program.instance(port)
        if inst is None:
            raise ApiError(400, "VALIDATION_ERROR",
                           f"port: {port} is not in the port range of '{program.name}'",
                           field="port")
        return json({"success": True, "status": {"id": program.id, **instance_status(inst)}})
    return json({"success": True, "status": program_status(program)})
