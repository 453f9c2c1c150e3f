"""Every error becomes JSON here, in one shape for both API families:

    {"success": false, "error": {"code", "message", "field"?, "details"}}

No request ever gets an HTML page or a bare 500 trace.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from sanic import Sanic
from sanic.exceptions import SanicException
from sanic.request import Request
from sanic.response import HTTPResponse, json

from ..supervisor.errors import (
    Conflict,
    Invalid,
    NotFound,
    Refused,
    StorageFailed,
    SupervisorError,
)
from ..supervisor.supervisor import validation_to_invalid

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


STATUS_OF = {NotFound: 404, Conflict: 409, Refused: 409, Invalid: 400, StorageFailed: 507}

SANIC_CODES = {
    400: "BAD_REQUEST", 401: "UNAUTHORIZED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED", 408: "REQUEST_TIMEOUT", 413: "PAYLOAD_TOO_LARGE",
    426: "UPGRADE_REQUIRED", 429: "RATE_LIMITED", 500: "INTERNAL_ERROR", 503: "SERVICE_UNAVAILABLE",
}


def install(app: Sanic) -> None:
    @app.exception(ApiError)
    async def api_error(request: Request, exc: ApiError) -> HTTPResponse:
        return error_response(exc.status, exc.code, exc.message, exc.field, exc.details,
                              exc.headers)

    @app.exception(SupervisorError)
    async def supervisor_error(request: Request, exc: SupervisorError) -> HTTPResponse:
        status = next((s for t, s in STATUS_OF.items() if isinstance(exc, t)), 500)
        return error_response(status, exc.code, exc.message, exc.field, exc.details)

    @app.exception(ValidationError)
    async def validation_error(request: Request, exc: ValidationError) -> HTTPResponse:
        invalid = validation_to_invalid(exc)
        return error_response(400, invalid.code, invalid.message, invalid.field,
                              invalid.details)

    @app.exception(SanicException)
    async def sanic_error(request: Request, exc: SanicException) -> HTTPResponse:
        status = getattr(exc, "status_code", 500) or 500
        code = SANIC_CODES.get(status, "HTTP_ERROR")
        message = str(exc) or code.replace("_", " ").lower()
        if status == 400 and "JSON" in message.upper():
            code = "INVALID_JSON"
        return error_response(status, code, message, headers=getattr(exc, "headers", None))

    @app.exception(Exception)
    async def unexpected(request: Request, exc: Exception) -> HTTPResponse:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "INTERNAL_ERROR", f"internal error: {type(exc).__name__}")
