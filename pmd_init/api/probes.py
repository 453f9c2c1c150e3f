"""`/livez`, `/readyz` and `/startupz` on the API's listeners (verdicts.py has their
meanings; the probe port serves the same three from a thread of its own). Public: an
orchestrator's probes carry no key. Names of programs only to a caller who may see them
(the read level, access.py) and asks with `?verbose`."""

from __future__ import annotations

from sanic import Request
from sanic.response import HTTPResponse, json

from ..model.access import Level
from . import access
from .context import JsonBlueprint, context
from .openapi import doc

bp = JsonBlueprint("probes")

_VERBOSE = [{"name": "verbose", "in": "query", "required": False,
             "schema": {"type": "string"},
             "description": "present (any value): the programs' names and reasons too, for "
                            "a caller with the read level"}]


def _answers(verdict: str, meaning: str) -> dict[str, object]:
    return {"200": {"description": f"{verdict}: true. {meaning}",
                    "content": {"application/json": {}}},
            "503": {"description": f"{verdict}: false, with the same fields",
                    "content": {"application/json": {}}}}


def _respond(request: Request) -> HTTPResponse:
    ctx = context(request)
    names = access.caller_of(request).level >= Level.READ
    verbose = "verbose" in request.get_args(keep_blank_values=True)  # `?verbose` alone
    status, body = ctx.init.verdicts.answer(request.path, verbose=verbose, names=names)
    return json(body, status=status, headers={"Cache-Control": "no-store"})


@bp.get("/livez")
@doc("Liveness: pmd's loop answers. Never a program's state", responses=_answers(
    "live", "A probe that gets no answer in time (a wedged loop) fails too"))
async def livez(request: Request) -> HTTPResponse:
    return _respond(request)


@bp.get("/readyz")
@doc("Readiness: the verdict of /api/v1/daemon/ready, and 503 from the start of a "
     "shutdown", parameters=_VERBOSE, responses=_answers(
         "ready", "Every enabled boot program is ready; counts in programs"))
async def readyz(request: Request) -> HTTPResponse:
    return _respond(request)


@bp.get("/startupz")
@doc("Start-up: every enabled boot program has started or settled (stays 200 once so)",
     parameters=_VERBOSE, responses=_answers("started", "Boot has finished"))
async def startupz(request: Request) -> HTTPResponse:
    return _respond(request)
