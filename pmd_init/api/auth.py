"""API key authentication, compared in constant time.

Three header forms are accepted: `Authorization: Bearer KEY`, `Authorization: ApiKey KEY`
and `X-API-Key: KEY` (and `?token=KEY` for the WebSocket, which browsers cannot give
headers to). Requests over the Unix socket are trusted: the socket is mode 0600, so only
its owner (root, or whoever runs `docker exec`) can connect at all.
"""

from __future__ import annotations

import hmac

from sanic.request import Request

#: Open without a key. /ready tells an anonymous caller only its verdict and counts.
PUBLIC_PATHS = frozenset({"/", "/api/v1/daemon/health", "/api/v1/daemon/ready"})
#: The admin level: running a command is a shell in the container. Over TCP these need
#: the key, and are refused outright when no key is set; the Unix socket is trusted.
ADMIN_PREFIXES = ("/api/v1/daemon/exec",)


def needs_admin(path: str) -> bool:
    return path.startswith(ADMIN_PREFIXES)


def presented_key(request: Request) -> str | None:
    header: str | None = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() in ("bearer", "apikey") and value.strip():
            return value.strip()
    key: str | None = request.headers.get("x-api-key")
    if key:
        return key.strip()
    if request.path == "/ws":
        token: str | None = request.args.get("token")
        if token:
            return token
    return None


def over_unix_socket(request: Request) -> bool:
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    return isinstance(sock, str) or (isinstance(sock, bytes))


def key_matches(expected: str, presented: str | None) -> bool:
    if presented is None:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


def authenticated(request: Request, expected: str | None) -> bool:
    """Whether the request carries what a non-public route needs (no key is set, it came
    over the Unix socket, or it presents the key); public routes use it to decide how
    much they tell."""
    if expected is None or over_unix_socket(request):
        return True
    return key_matches(expected, presented_key(request))


def admin_refusal(request: Request, expected: str | None) -> str | None:
    """Why an admin route is refused although no key is configured (the other routes are
    open then): None when the route is not an admin one, a key is set (`check` decides),
    or the request came over the Unix socket."""
    if expected is not None or not needs_admin(request.path) or request.method == "OPTIONS":
        return None
    if request.route is None:  # no such route or method: its 404 or 405 tells more
        return None
    if over_unix_socket(request):
        return None
    return "exec over TCP needs an API key (--api-key); use the Unix socket or set one"


def check(request: Request, expected: str | None) -> str | None:
    """None when the request may go on, else the reason it may not."""
    if expected is None or request.path in PUBLIC_PATHS or request.method == "OPTIONS":
        return None
    if over_unix_socket(request):
        return None
    presented = presented_key(request)
    if presented is None:
        return "missing API key"
    if not key_matches(expected, presented):
        return "invalid API key"
    return None
