"""The Sanic app and its life cycle on pmd's own loop.

pmd binds its sockets itself (listeners.py: TCP, and a Unix socket created under a umask
and chmod 0600, or those an earlier pmd handed over across re-exec) and drives Sanic's
server through create_server(start_serving=False) and the lifecycle calls.
`app.run()` is unusable here (its own loop, SIGINT/SIGTERM ignored, inherited by children)
and `app.stop()` would stop pmd's loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson
from sanic import Request, Sanic
from sanic.http.constants import Stage
from sanic.response import HTTPResponse, json

from .. import __version__
from ..model.access import Level
from . import access, errors
from .context import AppContext, Owner, PmdApp
from .listeners import BACKLOG, Listener, open_listeners, set_inheritable
from .openapi import doc
from .tls import ServerTls, TlsError
from .viewcache import ViewCache

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger("pmd.api")

#: The Unix socket's mode without identities for local users, and with them.
SOCKET_PRIVATE, SOCKET_SHARED = 0o600, 0o666
BODY_LIMIT = 1 << 20  # 1 MB JSON bodies (daemon-api-extras.md)
#: Before a re-exec, how long accepted requests may take to finish...
DRAIN_SECONDS = 1.0
#: ...and how long a connection accepted just before may take to send its first request.
FIRST_REQUEST_SECONDS = 0.25


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def create_app(init: Owner, name: str = "pmd") -> PmdApp:
    settings = init.settings
    control = access.AccessControl(lambda: init.identities, settings.api_key,
                                   client_certs=settings.tls_client_ca is not None)
    ctx = AppContext(init=init, supervisor=init.supervisor, service=init.service,
                     settings=settings, views=ViewCache(init.supervisor), access=control)
    app: PmdApp = Sanic(name, ctx=ctx, dumps=_dumps, loads=orjson.loads,
                        configure_logging=False)
    app.config.MOTD = False
    app.config.AUTO_EXTEND = False
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.REQUEST_MAX_SIZE = BODY_LIMIT
    app.config.KEEP_ALIVE_TIMEOUT = 30
    # wait=true may take up to 300 s (timeout's upper bound); log streams send keep-alives.
    app.config.RESPONSE_TIMEOUT = 330
    app.config.ACCESS_LOG = False
    errors.install(app)

    access.install(app, control)
    from . import cors, ratelimit

    cors.install(app, init.settings.cors_origins)
    ratelimit.install(app, init.settings.rate_limit, init.settings.rate_burst)
    register_core_routes(app)
    from . import daemon, execs, metrics, openapi, probes, process, ui, ws

    app.blueprint(process.bp)
    app.blueprint(ws.bp)

    app.blueprint(daemon.bp)
    app.blueprint(execs.bp)
    app.blueprint(openapi.bp)
    app.blueprint(metrics.bp)
    app.blueprint(ui.bp)
    app.blueprint(probes.bp)
    from . import signals

    app.blueprint(signals.bp)
    access.check_table(app)
    return app


def register_core_routes(app: PmdApp) -> None:
    init = app.ctx.init

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
            "socket_problems": sorted(init.supervisor.sockets.problems.values()),
            "ephemeral_cleaned": init.supervisor.ephemeral_report[-100:],
            "orphans_reaped": init.reaper.orphans_reaped,
            "forward_dropped_bytes": sum(
                f.dropped for f in init.supervisor.forwarders if f is not None),
            "webhooks": init.supervisor.webhooks.counters(),
            "log_targets": {
                "targets": init.supervisor.shipping.view()
                if init.supervisor.shipping is not None else {},
                "problems": init.supervisor.log_target_problems},
            "hooks": init.supervisor.hooks.counters(),
            "storage": init.supervisor.storage.view(),
            "identities": {"count": len(init.identities.entries),
                           "problem": init.identities_problem},
            "shutdown": init.shutdown_plan().as_dict(),
            # /ready's verdict, always with a 200 here: a page that shows it must not
            # log a failed request whenever the container is not ready
            "readiness": init.verdicts.readyz(
                names=access.caller_of(request).level >= Level.READ)[1],
        })

    @app.get("/api/v1/daemon/ready")
    @doc("The container's readiness, for orchestrators: 200 when every enabled boot "
         "program is in its ready condition, else 503",
         response="ready; a 503 has the same shape with ready: false. A caller below "
                  "the read level gets only the verdict and the counts")
    async def ready(request: Request) -> HTTPResponse:
        # /readyz's verdict (verdicts.py), names whenever the caller may read them.
        status, view = init.verdicts.readyz(
            names=access.caller_of(request).level >= Level.READ)
        return json(view, status=status)

    @app.get("/api/v1/daemon/whoami")
    @doc("Who pmd takes the caller for (an identity, a local user, the admin key, or "
         "anonymous), its level and the levels it includes",
         response="`{identity, kind, level, levels, transport, uid?, gid?, key?}`")
    async def whoami(request: Request) -> HTTPResponse:
        caller = access.caller_of(request)
        peer = access.peer_of(request)
        view: dict[str, Any] = {
            "identity": caller.identity, "kind": caller.kind, "level": caller.level.label,
            "levels": [lv.label for lv in Level if lv <= caller.level],
            "transport": peer.transport,
        }
        if peer.uid is not None:
            view.update(uid=peer.uid, gid=peer.gid)
        if caller.failure is not None:
            view["key"] = caller.failure  # "invalid" or "blocked"
        return json(view)

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


class ApiServer:
    """The Sanic servers on pmd's listeners. pmd keeps each listening socket and gives
    Sanic a duplicate: asyncio's Server.close() closes the sockets it serves, and the
    original must outlive the servers when it goes along through a re-exec."""

    def __init__(self, init: Owner, settings: Settings,
                 handed_over: Iterable[Listener] = ()) -> None:
        self.init = init
        self.settings = settings
        self.app = create_app(init)
        self.servers: list[Any] = []
        self.listeners: list[Listener] = []
        self.tcp_address: tuple[str, int] | None = None
        self._handed_over = list(handed_over)
        self.tls: ServerTls | None = None

    async def start(self) -> None:
        s = self.settings
        self.listeners = open_listeners(s, self._handed_over)
        kept = sum(1 for x in self.listeners if x in self._handed_over)
        self._handed_over = []
        if s.tls_cert is not None:
            try:
                self.tls = ServerTls(s.tls_cert, s.tls_key, s.tls_client_ca)
            except TlsError as exc:
                # A fresh start checked the files already (pid1); they broke since, and a
                # re-exec must not end the container: no TCP rather than TCP without TLS.
                log.error("%s: the TCP API is off", exc)
                for listener in [x for x in self.listeners if x.kind == "tcp"]:
                    listener.sock.close()
                    self.listeners.remove(listener)
        self._apply_socket_mode()
        if not self.listeners:  # --port -1 and --socket ''
            return
        for listener in self.listeners:
            if listener.kind == "tcp":
                self.tcp_address = listener.sock.getsockname()[:2]
        await self._create_servers()
        await self.servers[0].startup()
        await self.servers[0].before_start()
        for server in self.servers:
            await server.start_serving()
        await self.servers[0].after_start()
        scheme = "https" if self.tls is not None else "http"
        where = [f"{scheme}://{a[0]}:{a[1]}" for a in [self.tcp_address] if a]
        if s.socket is not None:
            where.append(f"unix:{s.socket}")
        log.info("API on %s%s", ", ".join(where),
                 f" ({kept} listening socket(s) kept across re-exec)" if kept else "")
        self._write_port_file()

    async def _create_servers(self) -> None:
        from .ws import Protocol  # /ws's handshake (create_app imports its routes likewise)

        for listener in self.listeners:
            tls = self.tls.context if self.tls is not None and listener.kind == "tcp" else None
            server = await self.app.create_server(
                sock=listener.sock.dup(), backlog=BACKLOG, return_asyncio_server=True,
                ssl=tls,
                protocol=Protocol,
                asyncio_server_kwargs={"start_serving": False},
            )
            assert server is not None  # create_server already awaited it: .server is bound
            self.servers.append(server)

    def reload_access(self) -> None:
        """SIGHUP: the socket's mode follows the identities just read; TLS re-reads its
        files for the next handshakes."""
        self._apply_socket_mode()
        if self.tls is not None:
            self.tls.reload()

    def _apply_socket_mode(self) -> None:
        """0600 (root and pmd's own user) until identities let other local users in: then
        0666, and each caller's uid (SO_PEERCRED) decides what it may do."""
        path = self.settings.socket
        if path is None or not any(x.kind == "unix" for x in self.listeners):
            return
        mode = SOCKET_SHARED if self.init.identities.local_access else SOCKET_PRIVATE
        try:
            os.chmod(path, mode)
        except OSError as exc:
            log.error("cannot set the mode of %s to %o: %s", path, mode, exc)

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

    async def close(self, keep_listening: bool = False) -> None:
        """Stop accepting connections; in-flight requests go on. With `keep_listening`
        (a re-exec) the listening sockets stay open and connections from now on wait in
        their backlog for the next pmd; without (shutdown) they are refused from now on.

        The reader goes first and asyncio's Server.close() only a few loop turns later: a
        socket accepted in this turn becomes a transport in the next, and a transport
        made for a closed Server (3.11) fails an assertion and leaves its socket open
        and unserved (reset at the exec, measured)."""
        for server in self.servers:
            if server.server is not None:
                for sock in server.server.sockets:
                    server.loop.remove_reader(sock.fileno())
        for _ in range(3):
            await asyncio.sleep(0)
        for server in self.servers:
            if server.server is not None:
                server.server.close()  # Sanic's duplicates
        if not keep_listening:
            for listener in self.listeners:
                listener.sock.close()

    async def stop(self, timeout: float = 1.0) -> None:
        """The end: no more connections, finish what was accepted."""
        await self._wind_down(timeout, keep_listening=False)
        self.listeners = []
        (self.settings.state_dir / "api.json").unlink(missing_ok=True)
        if self.settings.socket is not None:
            try:
                os.unlink(self.settings.socket)
            except OSError:
                pass

    async def hand_over(self) -> list[dict[str, Any]]:
        """Before a re-exec: finish what was accepted but keep the listening sockets.
        Returns their descriptions for the re-exec state; the caller makes them
        inheritable for the exec itself."""
        await self._wind_down(DRAIN_SECONDS, keep_listening=True)
        return [listener.describe() for listener in self.listeners]

    async def take_back(self) -> None:
        """The exec failed: serve again, on the same listening sockets."""
        set_inheritable(self.listeners, False)
        if not self.listeners:
            return
        await self._create_servers()
        for server in self.servers:
            await server.start_serving()
        await self.servers[0].after_start()
        log.info("API serving again after the failed re-exec")

    async def _wind_down(self, timeout: float, keep_listening: bool) -> None:
        if not self.servers:
            if not keep_listening:
                for listener in self.listeners:
                    listener.sock.close()
            return
        try:
            await asyncio.wait_for(self.servers[0].before_stop(), timeout)
        except (TimeoutError, Exception):  # noqa: BLE001 - listeners must not block exit
            pass
        await self.close(keep_listening)
        await self._drain(timeout, min(timeout, FIRST_REQUEST_SECONDS))
        try:
            await asyncio.wait_for(self.servers[0].after_stop(), timeout)
        except (TimeoutError, Exception):  # noqa: BLE001
            pass
        self.servers = []

    async def _drain(self, timeout: float, first_request: float) -> None:
        """Close each connection as soon as it is between requests; abort what is left
        after `timeout`. Not asyncio's Server.wait_closed(): on 3.11 it returns at once
        when the server is already closed, whatever is still in flight."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            waited = loop.time() - start
            connections = [c for server in self.servers for c in server.connections]
            if not connections:
                return
            if waited >= timeout:
                for conn in connections:
                    conn.abort()
                return
            for conn in connections:
                if getattr(conn, "websocket", None) is not None:
                    conn.close_if_idle()  # a close frame, 1001 "going away"
                elif _between_requests(conn, waited >= first_request):
                    conn.close()
            await asyncio.sleep(0.005)


def _between_requests(conn: Any, patience_over: bool) -> bool:
    """Closing this connection now loses no request. One that has not sent its first
    request yet may belong to a client that connected just before close(): it gets a
    moment to send it (a local client sends within microseconds)."""
    http = conn.http
    if http is None:  # accepted, its task not started yet
        return patience_over
    if http.stage is not Stage.IDLE or conn.recv_buffer:
        return False
    return patience_over or conn.state.get("requests_count", 0) > 0
