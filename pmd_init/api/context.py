"""What every handler may reach, typed: the init that serves the API (`Owner`), and the
app's context (`AppContext`) built from it once, when the app is made.

Sanic types `request.app.ctx` as whatever the app was given; handlers take it through
`context(request)` so that the supervisor and the service are never `Any` to the API.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from sanic import Blueprint, Request, Sanic
from sanic.config import Config

if TYPE_CHECKING:
    from ..model.access import Identities
    from ..model.budget import ShutdownPlan
    from ..service import Service
    from ..settings import Settings
    from ..supervisor.supervisor import Supervisor
    from .access import AccessControl
    from .verdicts import Verdicts
    from .viewcache import ViewCache


class Scraper(Protocol):
    """What `GET /metrics` renders (prometheus.PmdCollector, built on the first scrape)."""

    def scrape(self, openmetrics: bool) -> bytes: ...


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
    @property
    def identities(self) -> Identities: ...
    @property
    def identities_problem(self) -> str | None: ...

    @property
    def verdicts(self) -> Verdicts: ...

    def request_reexec(self) -> bool: ...
    def shutdown_plan(self) -> ShutdownPlan: ...


@dataclass
class AppContext:
    init: Owner
    supervisor: Supervisor
    service: Service
    settings: Settings
    #: The listing routes' answers, kept as bytes until what they show changes.
    views: ViewCache
    #: Who each caller is and the level each route needs (access.py).
    access: AccessControl
    #: The rate limiter's state (ratelimit.py), the OpenAPI document once built
    #: (openapi.py), the metrics collector from the first scrape on (metrics.py), and the
    #: event that ends every log stream at shutdown (daemon.py).
    rate_limiter: object | None = None
    openapi_document: dict[str, Any] | None = None
    metrics_collector: Scraper | None = None
    log_streams_closing: asyncio.Event | None = None
    #: Log streams read their opening tails one at a time (logstream.py).
    opening_tails: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: The dashboard's files, read from the package on first use (ui.py).
    ui_files: dict[str, bytes] = field(default_factory=dict)


PmdApp = Sanic[Config, AppContext]


def app_of(request: Request) -> PmdApp:
    # Handlers take Sanic's plain Request, whose app is typed with a namespace for ctx;
    # every app pmd serves is made by server.create_app with an AppContext.
    return cast(PmdApp, request.app)


def context(request: Request) -> AppContext:
    return app_of(request).ctx


class JsonBlueprint(Blueprint):
    """A blueprint whose routes' errors are JSON, as every error of pmd's is (errors.py
    renders them all): Sanic would otherwise read each handler's source file and parse
    it to guess the format, and keep the files' lines in memory (linecache)."""

    def _determine_error_format(self, handler: Any) -> str:
        return "json"
