"""API key authentication, compared in constant time.

Three header forms are accepted: `Authorization: Bearer KEY`, `Authorization: ApiKey KEY`
and `X-API-Key: KEY`. A browser cannot give a WebSocket headers of its own, so /ws also
takes the key as an offered subprotocol, `pmd.key.<KEY in unpadded base64url>` beside
`pmd` (the one the server picks), as Kubernetes' API server does with its bearer tokens:
unlike `?token=KEY`, also taken, it stays out of URLs, which proxies and logs keep.
Requests over the Unix socket are trusted: the socket is mode 0600, so only its owner
(root, or whoever runs `docker exec`) can connect at all.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from sanic.request import Request

#: Open without a key. /ready, /readyz and /startupz tell an anonymous caller only their
#: verdict and counts (the orchestrator's probes carry no key).
PUBLIC_PATHS = frozenset({"/", "/api/v1/daemon/health", "/api/v1/daemon/ready", "/ui",
                          "/livez", "/readyz", "/startupz"})
#: The dashboard's files (api/ui.py): public like its page, they carry no data.
PUBLIC_PREFIX = "/ui/"
#: The WebSocket subprotocol that carries the key, and the one the server answers with.
KEY_SUBPROTOCOL = "pmd.key."
WS_SUBPROTOCOL = "pmd"

#: The admin level: running a command is a shell in the container. Over TCP these need
#: the key, and are refused outright when no key is set; the Unix socket is trusted.
ADMIN_PREFIXES = ("/api/v1/daemon/exec",)


def needs_admin(path: str) -> bool:
    return path.startswith(ADMIN_PREFIXES)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIX)


def subprotocol_key(header: str | None) -> str | None:
    """The key offered as a `pmd.key.` subprotocol, or None. One that does not decode is
    returned as it is, so that it is refused as an invalid key, not as a missing one."""
    for item in (header or "").split(","):
        item = item.strip()
        if item.startswith(KEY_SUBPROTOCOL):
            encoded = item[len(KEY_SUBPROTOCOL):]
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (binascii.Error, ValueError):
                return encoded
    return None


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
        offered = subprotocol_key(request.headers.get("sec-websocket-protocol"))
        if offered:
            return offered
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


def authenticated_without_key(request: Request, expected: str | None) -> bool:
    """Whether this client needs no key at all: none is set, or it came over the socket."""
    return expected is None or over_unix_socket(request)


def check(request: Request, expected: str | None) -> str | None:
    """None when the request may go on, else the reason it may not."""
    if expected is None or is_public(request.path) or request.method == "OPTIONS":
        return None
    if over_unix_socket(request):
        return None
    presented = presented_key(request)
    if presented is None:
        return "missing API key"
    if not key_matches(expected, presented):
        return "invalid API key"
    return None
