"""Who is calling, and whether their level is enough for the route (docs/access.md).

`ROUTE_LEVELS` is the one table of the level each route of both API families needs;
create_app refuses to serve a route that is not in it (and the table may name no route
that does not exist), and the OpenAPI document shows it. Who the caller is comes from
what the connection proves (the uid of a Unix socket peer, from SO_PEERCRED; a client
certificate that the client CA verified) and from what the request presents (the admin
key, or an API key of identities.json, compared in constant time by its SHA-256).

Answers: 401 when the route needs more than a caller who proved nothing may do (a key is
missing or wrong), 403 with a code naming the level when the caller is known but below
it, and 429 when one address kept presenting wrong keys: guessing is cut off per address
(each refusal answered at once, nobody else slowed).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sanic import Request, Sanic
from sanic.response import HTTPResponse

from ..model.access import Identities, Identity, Level
from .auth import presented_key
from .errors import error_response

log = logging.getLogger("pmd.api")

L = Level
#: Every route of both families, "METHOD /path" as the router has it, and its level.
ROUTE_LEVELS: dict[str, Level] = {
    # open: who pmd is, whether it is alive and ready, who the caller is, the dashboard's
    # page and files (they carry no data)
    "GET /": L.OPEN,
    "GET /api/v1/daemon/health": L.OPEN,
    "GET /api/v1/daemon/ready": L.OPEN,  # the verdict; the details need read
    "GET /api/v1/daemon/whoami": L.OPEN,
    "GET /livez": L.OPEN,  # the orchestrator's probes carry no key; names need read
    "GET /readyz": L.OPEN,
    "GET /startupz": L.OPEN,
    "GET /ui": L.OPEN,
    "GET /ui/<name:str>": L.OPEN,
    # metrics
    "GET /metrics": L.METRICS,
    # read: lists, status, logs, events, the document
    "GET /api/status": L.READ,
    "GET /api/openapi.json": L.READ,
    "GET /api/system": L.READ,
    "GET /api/processes": L.READ,
    "GET /api/processes/<ident:str>": L.READ,
    "GET /api/processes/<ident:str>/logs": L.READ,
    "GET /ws": L.READ,
    "GET /api/v1/daemon/programs": L.READ,
    "GET /api/v1/daemon/programs/<program_id:int>": L.READ,
    "GET /api/v1/daemon/programs/<program_id:int>/logs": L.READ,
    "GET /api/v1/daemon/programs/<program_id:int>/logs/stream": L.READ,
    "GET /api/v1/daemon/status": L.READ,
    "GET /api/v1/daemon/status/<program_id:int>": L.READ,
    "GET /api/v1/daemon/quick-start": L.READ,
    "GET /api/v1/daemon/quick-start/<temporary_id:str>/status": L.READ,
    "GET /api/v1/daemon/quick-start/<temporary_id:str>/logs": L.READ,
    "GET /api/v1/daemon/quick-start/<temporary_id:str>/logs/stream": L.READ,
    # operate: start, stop, restart and signal programs that exist
    "POST /api/processes/<ident:str>/stop": L.OPERATE,
    "POST /api/processes/<ident:str>/restart": L.OPERATE,
    "POST /api/processes/<ident:str>/reload": L.OPERATE,
    "POST /api/processes/<ident:str>/signal": L.OPERATE,
    "POST /api/v1/daemon/programs/<program_id:int>/start": L.OPERATE,
    "POST /api/v1/daemon/programs/<program_id:int>/stop": L.OPERATE,
    "POST /api/v1/daemon/programs/<program_id:int>/restart": L.OPERATE,
    "POST /api/v1/daemon/programs/<program_id:int>/signal": L.OPERATE,
    "POST /api/v1/daemon/quick-start/<temporary_id:str>/stop": L.OPERATE,
    # admin: what changes the configuration or runs a new command
    "POST /api/processes": L.ADMIN,
    "DELETE /api/processes/<ident:str>": L.ADMIN,
    "POST /api/v1/daemon/programs/add": L.ADMIN,
    "POST /api/v1/daemon/programs/edit/<program_id:int>": L.ADMIN,
    "POST /api/v1/daemon/programs/remove/<program_id:int>": L.ADMIN,
    "POST /api/v1/daemon/programs/reset": L.ADMIN,
    "POST /api/v1/daemon/programs/<program_id:int>/enable": L.ADMIN,
    "POST /api/v1/daemon/programs/<program_id:int>/disable": L.ADMIN,
    "POST /api/v1/daemon/quick-start": L.ADMIN,
    "POST /api/v1/daemon/reexec": L.ADMIN,
    "POST /api/v1/daemon/exec": L.ADMIN,
    "GET /api/v1/daemon/exec/<run_id:str>/ws": L.ADMIN,
}
#: Routes that a TCP caller must prove itself for even where TCP is open (no key, no
#: identities, no client CA): running a command is a shell in the container, so with
#: nothing configured these are served over the Unix socket only (docs/exec.md).
PROOF_REQUIRED = frozenset({"POST /api/v1/daemon/exec",
                            "GET /api/v1/daemon/exec/<run_id:str>/ws"})
#: A path no route matches (a 404 or a 405): what it takes to learn that.
UNROUTED = L.READ

#: Wrong keys one address may present within WINDOW before its keys are refused unread.
FAILURES_MAX = 30
WINDOW = 60.0
PEERS_MAX = 4096

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def route_key(method: str, uri: str) -> str:
    return f"{method} {uri}"


def check_table(app: Sanic[Any, Any]) -> None:
    """Every route has a level and every level a route; raised at app creation, so a
    route added without a level never serves."""
    served = {route_key(m, r.uri) for r in app.router.routes for m in r.methods
              if m not in ("HEAD", "OPTIONS")}
    missing, stale = served - set(ROUTE_LEVELS), set(ROUTE_LEVELS) - served
    if missing or stale:
        raise RuntimeError(f"api/access.py ROUTE_LEVELS: no level for {sorted(missing)}; "
                           f"no route for {sorted(stale)}")


def level_of(request: Request) -> Level:
    route = request.route
    if route is None:
        return UNROUTED
    method = "GET" if request.method == "HEAD" else request.method
    return ROUTE_LEVELS.get(route_key(method, route.uri), UNROUTED)


@dataclass(frozen=True, slots=True)
class Peer:
    """What the connection proves, worked out once per connection."""

    address: str  # for logs and the failure count: an IP, or "uid N" on the socket
    uid: int | None = None
    gid: int | None = None
    pid: int | None = None
    cert_sha256: str | None = None
    cert_cn: str | None = None
    tls: bool = False

    @property
    def transport(self) -> str:
        return "unix" if self.uid is not None or self.address == "unix" else \
            "tls" if self.tls else "tcp"


@dataclass(frozen=True, slots=True)
class Caller:
    level: Level
    kind: str  # "local", "key", "admin-key", "cert", "anonymous", "open"
    identity: str | None = None
    #: Why a presented key did nothing: "invalid", or "blocked" (too many wrong ones).
    failure: str | None = None

    def better(self, other: Caller) -> Caller:
        return other if other.level > self.level else self

    @classmethod
    def of(cls, identity: Identity, kind: str) -> Caller:
        return cls(identity.level, kind, identity.name)


def peer_of(request: Request) -> Peer:
    info = request.conn_info
    cached: Peer | None = getattr(info.ctx, "pmd_peer", None) if info is not None else None
    if cached is not None:
        return cached
    transport = request.transport
    peer = Peer("unknown")
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
            peer = Peer(f"uid {uid}", uid, gid, pid)
        except OSError:
            peer = Peer("unix")
    elif transport is not None:
        peername = transport.get_extra_info("peername")
        address = str(peername[0]) if isinstance(peername, tuple) else "unknown"
        sslobj = transport.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if der:
            peer = Peer(address, cert_sha256=hashlib.sha256(der).hexdigest(),
                        cert_cn=_common_name(sslobj.getpeercert()), tls=True)
        else:
            peer = Peer(address, tls=sslobj is not None)
    if info is not None:
        info.ctx.pmd_peer = peer
    return peer


def _common_name(cert: Any) -> str | None:
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class AccessControl:
    """Identifies callers and counts failures. `identities` is read at each request:
    a SIGHUP swaps what it returns."""

    def __init__(self, identities: Callable[[], Identities], admin_key: str | None,
                 client_certs: bool = False) -> None:
        self.identities = identities
        self.admin_key = admin_key.encode() if admin_key else None
        self.client_certs = client_certs
        self.own_uid = os.getuid()
        #: Refusals by reason: missing, invalid, forbidden, blocked (GET /metrics).
        self.failures: dict[str, int] = {"missing": 0, "invalid": 0, "forbidden": 0,
                                         "blocked": 0}
        self._wrong: dict[str, deque[float]] = {}

    def auth_on(self, identities: Identities) -> bool:
        """Whether TCP callers must prove who they are: a key, an identity or a client
        CA is configured. Without any, TCP is open, as it always was."""
        return self.admin_key is not None or identities.configured or self.client_certs

    def identify(self, request: Request, needed: Level = Level.ADMIN) -> Caller:
        """The caller, looking no further than `needed` requires (a presented key is not
        checked when the connection already proves enough)."""
        peer = peer_of(request)
        identities = self.identities()
        if peer.uid is not None:
            caller = self._local(peer, identities)
        elif peer.address == "unix":  # no credentials from the kernel: as before, trusted
            return Caller(Level.ADMIN, "local")
        elif not self.auth_on(identities):
            return Caller(Level.ADMIN, "open")
        else:
            caller = Caller(Level.OPEN, "anonymous")
            if peer.cert_sha256 is not None:
                found = identities.by_cert(peer.cert_sha256, peer.cert_cn)
                if found is not None:
                    caller = Caller.of(found, "cert")
        if caller.level >= needed:
            return caller
        key = presented_key(request)
        if key is None:
            return caller
        if self._blocked(peer.address):
            return Caller(caller.level, caller.kind, caller.identity, "blocked")
        encoded = key.encode()
        if self.admin_key is not None and hmac.compare_digest(self.admin_key, encoded):
            return Caller(Level.ADMIN, "admin-key")
        found = identities.by_key(key)
        if found is not None:
            return caller.better(Caller.of(found, "key"))
        self._note_wrong(peer.address)
        return Caller(caller.level, caller.kind, caller.identity, "invalid")

    def _local(self, peer: Peer, identities: Identities) -> Caller:
        assert peer.uid is not None and peer.gid is not None
        if peer.uid in (0, self.own_uid):
            return Caller(Level.ADMIN, "local", "root" if peer.uid == 0 else f"uid {peer.uid}")
        found = identities.by_local(peer.uid, peer.gid)
        if found is not None:
            return Caller.of(found, "local")
        if identities.default_level is not None:
            return Caller(identities.default_level, "local", f"uid {peer.uid}")
        return Caller(Level.OPEN, "local", f"uid {peer.uid}")

    # ---- guessing ------------------------------------------------------------------

    def _blocked(self, address: str, now: float | None = None) -> bool:
        wrong = self._wrong.get(address)
        if wrong is None or len(wrong) < FAILURES_MAX:
            return False
        now = time.monotonic() if now is None else now
        return now - wrong[0] < WINDOW

    def _note_wrong(self, address: str) -> None:
        now = time.monotonic()
        wrong = self._wrong.pop(address, None)  # re-inserted last: the dict stays in age order
        if wrong is None:
            wrong = deque(maxlen=FAILURES_MAX)
            if len(self._wrong) >= PEERS_MAX:
                del self._wrong[next(iter(self._wrong))]
        wrong.append(now)
        self._wrong[address] = wrong

    def retry_after(self, address: str) -> int:
        wrong = self._wrong.get(address)
        if not wrong:
            return 1
        return max(1, int(WINDOW - (time.monotonic() - wrong[0])) + 1)

    # ---- the middleware ------------------------------------------------------------

    def check(self, request: Request) -> HTTPResponse | None:
        """None when the request may go on (its caller kept in request.ctx.caller)."""
        request.ctx.access = self
        if request.method == "OPTIONS":  # CORS preflights carry no credentials
            return None
        needed = level_of(request)
        if needed is Level.OPEN:
            return None
        caller = self.identify(request, needed)
        request.ctx.caller = caller
        if caller.kind == "open" and request.route is not None and route_key(
                "GET" if request.method == "HEAD" else request.method,
                request.route.uri) in PROOF_REQUIRED:
            self.failures["forbidden"] += 1
            return error_response(403, "FORBIDDEN" if request.path.startswith("/api/v1/")
                                  else "PERMISSION_DENIED",
                                  f"{request.path} over TCP needs an API key (--api-key) or "
                                  "identities.json; use the Unix socket or set one",
                                  details={"required_level": needed.label})
        if caller.level >= needed:
            return None
        return self._refuse(request, caller, needed)

    def _refuse(self, request: Request, caller: Caller, needed: Level) -> HTTPResponse:
        daemon = request.path.startswith("/api/v1/")
        peer = peer_of(request)
        where = f"{peer.address} on {request.method} {request.path}"
        if caller.failure == "blocked":
            self.failures["blocked"] += 1
            return error_response(
                429, "RATE_LIMITED", f"too many wrong API keys from {peer.address}: try "
                "again later", headers={"Retry-After": str(self.retry_after(peer.address))})
        if caller.failure == "invalid" or caller.kind == "anonymous":
            reason = "invalid" if caller.failure == "invalid" else "missing"
            self.failures[reason] += 1
            if reason == "invalid":
                blocked = self._blocked(peer.address)
                log.warning("authentication failed from %s: wrong API key%s", where,
                            " (its keys are refused for a while)" if blocked else "")
            else:
                log.debug("unauthenticated request from %s", where)
            return error_response(401, "UNAUTHORIZED" if daemon else "PERMISSION_DENIED",
                                  f"{reason} API key",
                                  details={"required_level": needed.label},
                                  headers={"WWW-Authenticate": 'Bearer realm="pmd"'})
        self.failures["forbidden"] += 1
        who = caller.identity or caller.kind
        log.warning("refused %s: %s has level %s, %s needs %s", where, who,
                    caller.level.label, request.path, needed.label)
        code = f"{needed.label.upper()}_REQUIRED" if daemon else "PERMISSION_DENIED"
        return error_response(
            403, code, f"this needs the {needed.label} level; {who} has {caller.level.label}",
            details={"required_level": needed.label, "level": caller.level.label,
                     "identity": caller.identity})


def install(app: Sanic[Any, Any], access: AccessControl) -> None:
    async def authorize(request: Request) -> HTTPResponse | None:
        return access.check(request)

    app.middleware(authorize, "request", priority=100)


def caller_of(request: Request) -> Caller:
    """The caller of this request (worked out again for an open route)."""
    found: Caller | None = getattr(request.ctx, "caller", None)
    if found is None:
        control: AccessControl = request.ctx.access
        found = control.identify(request)
        request.ctx.caller = found
    return found

