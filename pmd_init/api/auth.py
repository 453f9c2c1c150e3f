"""API key authentication, compared in constant time.

Three header forms are accepted: `Authorization: Bearer KEY`, `Authorization: ApiKey KEY`
and `X-API-Key: KEY` (and `?token=KEY` for the WebSocket, which browsers cannot give
headers to). Requests over the Unix socket are trusted: the socket is mode 0600, so only
its owner (root, or whoever runs `docker exec`) can connect at all.
"""

from __future__ import annotations

import hmac

from sanic.request import Request

#: Open without a key. /ready, /readyz and /startupz tell an anonymous caller only their
#: verdict and counts (the orchestrator's probes carry no key).
PUBLIC_PATHS = frozenset({"/", "/api/v1/daemon/health", "/api/v1/daemon/ready",
                          "/livez", "/readyz", "/startupz"})


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
