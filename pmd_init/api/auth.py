"""Where a request carries an API key, and whether it came over the Unix socket.

Three header forms are accepted: `Authorization: Bearer KEY`, `Authorization: ApiKey KEY`
and `X-API-Key: KEY`. A browser cannot give a WebSocket headers of its own, so /ws also
takes the key as an offered subprotocol, `pmd.key.<KEY in unpadded base64url>` beside
`pmd` (the one the server picks), as Kubernetes' API server does with its bearer tokens:
unlike `?token=KEY`, also taken, it stays out of URLs, which proxies and logs keep.
What a key is worth, and what a Unix socket peer may do, is access.py's business.
"""

from __future__ import annotations

import base64
import binascii

from sanic.request import Request

#: The WebSocket subprotocol that carries the key, and the one the server answers with.
KEY_SUBPROTOCOL = "pmd.key."
WS_SUBPROTOCOL = "pmd"

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
