"""Every error becomes JSON here, in one shape for both API families:

    {"success": false, "error": {"code", "message", "field"?, "details"}}

The supervisor and the service raise their own errors (pmd_init.supervisor.errors), which
know nothing of HTTP; each family turns them into a status and a code through its one
table below, chosen by the path (`/api/v1/...` is the Daemon API, the rest the PM2-style
process API, as for authentication). A handler raises ApiError only for what is about
HTTP itself (a body that is not an object, a query that does not parse). No request ever
gets an HTML page or a bare 500 trace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sanic import Sanic
from sanic.exceptions import MethodNotAllowed, SanicException
from sanic.request import Request
from sanic.response import HTTPResponse, json

from ..supervisor.errors import (
    AlreadyRunning,
    Conflict,
    Disabled,
    Invalid,
    NotFound,
    Refused,
    StartFailed,
    StorageFailed,
    SupervisorError,
    WaitTimeout,
)
from .views import instance_view

log = logging.getLogger("pmd.api")


class ApiError(Exception):
    """Raised by handlers: an HTTP status, a machine-readable code and a message."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.details = details or {}
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, field: str | None = None,
                   details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> HTTPResponse:
    error: dict[str, Any] = {"code": code, "message": message, "details": details or {}}
    if field:
        error["field"] = field
    return json({"success": False, "error": error}, status=status, headers=headers)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    #: The family's code; None keeps the error's own (VALIDATION_ERROR, STORAGE_FULL...).
    code: str | None = None
    #: More details from the error, in this family's views.
    details: Callable[[Any], dict[str, Any]] | None = None


def _instance(exc: AlreadyRunning | StartFailed) -> dict[str, Any]:
    return {"instance": instance_view(exc.instance)}


#: The Daemon Management API (docs/daemon-api.md, Errors): the errors' own codes.
DAEMON: dict[type[SupervisorError], Answer] = {
    NotFound: Answer(404),  # NOT_FOUND
    Conflict: Answer(409),  # ALREADY_EXISTS
    Invalid: Answer(400),  # VALIDATION_ERROR, UNKNOWN_FIELD, MISSING_FIELD
    AlreadyRunning: Answer(400, details=_instance),  # as supervisorctl's "already started"
    Disabled: Answer(409),  # PROGRAM_DISABLED
    Refused: Answer(409),
    StartFailed: Answer(500, details=_instance),
    WaitTimeout: Answer(504),
    StorageFailed: Answer(507),  # STORAGE_FULL, STORAGE_READ_ONLY, STORAGE_FAILED
    SupervisorError: Answer(500),  # OPERATION_FAILED
}

#: The PM2-style process API (docs/process-api.md, Errors): its document's codes.
PROCESS: dict[type[SupervisorError], Answer] = {
    NotFound: Answer(404, "PROCESS_NOT_FOUND"),
    Conflict: Answer(409, "PROCESS_ALREADY_EXISTS"),
    Invalid: Answer(400, "INVALID_CONFIGURATION"),
    Refused: Answer(409, "OPERATION_FAILED"),  # a disabled program, a reload under way
    StorageFailed: Answer(507),  # the Daemon API's codes: nothing was done
    SupervisorError: Answer(500, "OPERATION_FAILED"),
}


def table_for(request: Request) -> dict[type[SupervisorError], Answer]:
    return DAEMON if request.path.startswith("/api/v1/") else PROCESS


def answer(table: dict[type[SupervisorError], Answer], exc: SupervisorError) -> HTTPResponse:
    found = next(table[t] for t in type(exc).__mro__ if t in table)
    details = dict(exc.details)
    if found.details is not None:
        details.update(found.details(exc))
    return error_response(found.status, found.code or exc.code, exc.message, exc.field,
                          details)


SANIC_CODES = {
    400: "BAD_REQUEST", 401: "UNAUTHORIZED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED", 408: "REQUEST_TIMEOUT", 413: "PAYLOAD_TOO_LARGE",
    426: "UPGRADE_REQUIRED", 429: "RATE_LIMITED", 500: "INTERNAL_ERROR", 503: "SERVICE_UNAVAILABLE",
}


#: The methods pmd's routes use; OPTIONS is answered on every route (cors.py's preflight).
ROUTE_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(app: Sanic[Any, Any], path: str) -> list[str]:
    """The methods `path` has a route for, plus OPTIONS; [] when no route matches it.

    Sanic's router reports them with a 405 only for static paths: on a path with
    parameters its generated matcher raises a bare NoMethod, and the 405 goes out
    without the Allow header RFC 9110 requires (found by schemathesis)."""
    found = []
    for method in ROUTE_METHODS:
        try:
            app.router.resolve(path, method=method)
        except Exception:  # noqa: BLE001 - sanic_routing's NotFound / NoMethod: not this one
            continue
        found.append(method)
    return [*found, "OPTIONS"] if found else []


def install(app: Sanic[Any, Any]) -> None:
    @app.exception(ApiError)
    async def api_error(request: Request, exc: ApiError) -> HTTPResponse:
        return error_response(exc.status, exc.code, exc.message, exc.field, exc.details,
                              exc.headers)

    @app.exception(SupervisorError)
    async def supervisor_error(request: Request, exc: SupervisorError) -> HTTPResponse:
        return answer(table_for(request), exc)

    @app.exception(ValidationError)
    async def validation_error(request: Request, exc: ValidationError) -> HTTPResponse:
        # Handlers validate with the data at hand (Invalid.from_validation); this is the
        # net for a model validated anywhere else.
        return answer(table_for(request), Invalid.from_validation(exc))

    @app.exception(SanicException)
    async def sanic_error(request: Request, exc: SanicException) -> HTTPResponse:
        status = getattr(exc, "status_code", 500) or 500
        code = SANIC_CODES.get(status, "HTTP_ERROR")
        message = str(exc) or code.replace("_", " ").lower()
        if status == 400 and "JSON" in message.upper():
            code = "INVALID_JSON"
        headers = dict(getattr(exc, "headers", None) or {})
        if isinstance(exc, MethodNotAllowed):
            allow = allowed_methods(app, request.path)
            if allow:
                headers["Allow"] = ", ".join(allow)
        return error_response(status, code, message, headers=headers)

    @app.exception(Exception)
    async def unexpected(request: Request, exc: Exception) -> HTTPResponse:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "INTERNAL_ERROR", f"internal error: {type(exc).__name__}")
