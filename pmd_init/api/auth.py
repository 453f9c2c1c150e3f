"""Where a request carries an API key, and whether it came over the Unix socket.

Three header forms are accepted: `Authorization: Bearer KEY`, `Authorization: ApiKey KEY`
and `X-API-Key: KEY` (and `?token=KEY` for the WebSocket, which browsers cannot give
headers to). What a key is worth is access.py's business.
"""

from __future__ import annotations

from sanic.request import Request


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
