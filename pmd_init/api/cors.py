"""CORS for browsers calling the API: configurable origins (default all), the methods of
the route asked about (those of the PM2-compatible document on a path with no route), and
allowed headers that include X-API-Key (a browser cannot send a header a preflight did not
allow). A preflight (OPTIONS) is answered here with 204, before authentication, which it
never carries; its Allow header is the route's methods, as on a 405."""

from __future__ import annotations

from sanic import Request
from sanic.response import BaseHTTPResponse, HTTPResponse, empty

from .context import PmdApp
from .errors import allowed_methods

METHODS = "GET, POST, PUT, DELETE, OPTIONS"
HEADERS = "Content-Type, Authorization, X-API-Key, Last-Event-ID"
EXPOSE = "X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, Retry-After"
MAX_AGE = "600"


def allowed_origin(origins: tuple[str, ...], origin: str | None) -> str | None:
    """The Access-Control-Allow-Origin value for this request, or None."""
    if "*" in origins:
        return "*"
    if origin is not None and origin in origins:
        return origin
    return None


def install(app: PmdApp, origins: tuple[str, ...]) -> None:
    async def preflight(request: Request) -> HTTPResponse | None:
        if request.method != "OPTIONS":
            return None
        methods = ", ".join(allowed_methods(app, request.path)) or METHODS
        headers = {"Access-Control-Allow-Methods": methods,
                   "Access-Control-Allow-Headers": HEADERS,
                   "Access-Control-Max-Age": MAX_AGE,
                   "Allow": methods}
        return empty(status=204, headers=headers)

    async def cors_headers(request: Request, response: BaseHTTPResponse) -> None:
        allow = allowed_origin(origins, request.headers.get("origin"))
        if allow is None:
            return
        response.headers["Access-Control-Allow-Origin"] = allow
        response.headers["Access-Control-Expose-Headers"] = EXPOSE
        if allow != "*":
            response.headers["Vary"] = "Origin"

    app.middleware(preflight, "request", priority=400)
    app.middleware(cors_headers, "response", priority=400)
