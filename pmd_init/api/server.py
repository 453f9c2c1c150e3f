"""The Sanic app and its life cycle on pmd's own loop.

pmd binds its sockets itself (TCP, and a Unix socket created under a umask and chmod 0600)
and drives Sanic's server through create_server(start_serving=False) and the lifecycle calls.
`app.run()` is unusable here (its own loop, SIGINT/SIGTERM ignored, inherited by children)
and `app.stop()` would stop pmd's loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from sanic import Request, Sanic
from sanic.response import HTTPResponse, json

from .. import __version__
from . import auth, errors
from .errors import error_response

if TYPE_CHECKING:
    from ..service import Service
    from ..settings import Settings
    from ..supervisor.supervisor import Supervisor

log = logging.getLogger("pmd.api")

BODY_LIMIT = 1 << 20  # 1 MB JSON bodies (daemon-api-extras.md)


class OrphanCount(Protocol):
    @property
    def orphans_reaped(self) -> int: ...


class Owner(Protocol):
    """What the API needs of the init that serves it (pid1's Init). pid1 starts the API,
    so the API names what it uses here instead of importing pid1."""

    @property
    def settings(self) -> Settings: ...
    @property
    def supervisor(self) -> Supervisor: ...
    @property
    def service(self) -> Service: ...
    @property
    def started_at(self) -> float: ...
    @property
    def config_problem(self) -> str | None: ...
    @property
    def reaper(self) -> OrphanCount: ...

    def request_reexec(self) -> bool: ...


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def create_app(init: Owner, name: str = "pmd") -> Sanic:
    app = Sanic(name, dumps=_dumps, loads=orjson.loads, configure_logging=False)
    app.config.MOTD = False
    app.config.AUTO_EXTEND = False
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.REQUEST_MAX_SIZE = BODY_LIMIT
    app.config.KEEP_ALIVE_TIMEOUT = 30
    # wait=true may take up to 300 s (timeout's upper bound); log streams send keep-alives.
    app.config.RESPONSE_TIMEOUT = 330
    app.config.ACCESS_LOG = False
    app.ctx.init = init
    app.ctx.supervisor = init.supervisor
    app.ctx.service = init.service
    app.ctx.settings = init.settings
    errors.install(app)

    @app.on_request(priority=100)  # type: ignore[call-arg]
    async def authenticate(request: Request) -> HTTPResponse | None:
        reason = auth.check(request, init.settings.api_key)
        if reason is not None:
            # The PM2-compatible family has its document's codes: PERMISSION_DENIED.
            code = "UNAUTHORIZED" if request.path.startswith("/api/v1/") else \
                "PERMISSION_DENIED"
            return error_response(401, code, reason,
                                  headers={"WWW-Authenticate": 'Bearer realm="pmd"'})
        return None

    from . import cors, ratelimit

    cors.install(app, init.settings.cors_origins)
    ratelimit.install(app, init.settings.rate_limit, init.settings.rate_burst)
    register_core_routes(app)
    from . import daemon, openapi, process, ws

    app.blueprint(process.bp)
    app.blueprint(ws.bp)

    app.blueprint(daemon.bp)
    app.blueprint(openapi.bp)
    return app


def register_core_routes(app: Sanic) -> None:
    init: Owner = app.ctx.init

    @app.get("/api/status")
    async def status(request: Request) -> HTTPResponse:
        return json({
            "status": "ok",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "version": __version__,
        })

    @app.get("/api/v1/daemon/health")
    async def health(request: Request) -> HTTPResponse:
        return json({
            "status": "ok",
            "service": "pmd",
            "version": __version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(init.started_at)),
            "memory": {"rss": _rss_bytes()},
            "fds": _open_fds(),
            "pid": os.getpid(),
            "programs": len(init.supervisor.programs),
            "config_problem": init.config_problem,
            "ephemeral_cleaned": init.supervisor.ephemeral_report[-100:],
            "orphans_reaped": init.reaper.orphans_reaped,
            "forward_dropped_bytes": sum(
                f.dropped for f in init.supervisor.forwarders if f is not None),
            "webhooks": init.supervisor.webhooks.counters(),
            "storage": init.supervisor.storage.view(),
        })

    @app.post("/api/v1/daemon/reexec")
    async def reexec(request: Request) -> HTTPResponse:
        if not init.request_reexec():
            raise errors.ApiError(409, "SHUTTING_DOWN", "pmd is shutting down")
        return json({"success": True, "pid": os.getpid(),
                     "message": "pmd re-executes in place; programs keep running"})


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def bind_unix(path: os.PathLike[str] | str) -> socket.socket:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    try:
        os.unlink(path)  # a stale socket from an earlier run
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # never world-connectable, not even for an instant
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class ApiServer:
    def __init__(self, init: Owner, settings: Settings) -> None:
        self.init = init
        self.settings = settings
        self.app = create_app(init)
        self.servers: list[Any] = []
        self.sockets: list[socket.socket] = []
        self.tcp_address: tuple[str, int] | None = None

    async def start(self) -> None:
        s = self.settings
        if s.port >= 0:
            tcp = bind_tcp(s.host, s.port)
            self.sockets.append(tcp)
            self.tcp_address = tcp.getsockname()[:2]
        if s.socket is not None:
            self.sockets.append(bind_unix(s.socket))
        first = True
        for sock in self.sockets:
            server = await self.app.create_server(
                sock=sock, return_asyncio_server=True,
                asyncio_server_kwargs={"start_serving": False},
            )
            assert server is not None  # create_server already awaited it: .server is bound
            if first:
                await server.startup()
                await server.before_start()
            self.servers.append(server)
            first = False
        for server in self.servers:
            await server.start_serving()
        if self.servers:
            await self.servers[0].after_start()
        where = [f"http://{a[0]}:{a[1]}" for a in [self.tcp_address] if a]
        if s.socket is not None:
            where.append(f"unix:{s.socket}")
        log.info("API on %s", ", ".join(where))
        self._write_port_file()

    def _write_port_file(self) -> None:
        """The bound address, for tests and tools that start pmd on port 0."""
        if self.tcp_address is None:
            return
        path = self.settings.state_dir / "api.json"
        try:
            path.write_bytes(orjson.dumps({"host": self.tcp_address[0],
                                           "port": self.tcp_address[1],
                                           "socket": str(self.settings.socket or ""),
                                           "pid": os.getpid()}))
        except OSError:
            pass

    def close(self) -> None:
        """Stop accepting connections (in-flight requests go on)."""
        for server in self.servers:
            if server.server is not None and server.server.is_serving():
                server.server.close()

    async def stop(self, timeout: float = 1.0) -> None:
        if not self.servers:
            return
        try:
            await asyncio.wait_for(self.servers[0].before_stop(), timeout)
        except (TimeoutError, Exception):  # noqa: BLE001 - listeners must not block exit
            pass
        self.close()
        for server in self.servers:
            for conn in list(server.connections):
                conn.close_if_idle()
        waits = [s.wait_closed() for s in self.servers if s.server is not None]
        if waits:
            try:
                await asyncio.wait_for(asyncio.gather(*waits), timeout)
            except TimeoutError:
                for server in self.servers:
                    for conn in list(server.connections):
                        conn.abort()
        try:
            await asyncio.wait_for(self.servers[0].after_stop(), timeout)
        except (TimeoutError, Exception):  # noqa: BLE001
            pass
        for sock in self.sockets:
            sock.close()
        (self.settings.state_dir / "api.json").unlink(missing_ok=True)
        if self.settings.socket is not None:
            try:
                os.unlink(self.settings.socket)
            except OSError:
                pass
        self.servers = []
        self.sockets = []
