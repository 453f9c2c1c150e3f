"""GET /ui: the dashboard, a page served from files in the package (api/static/).

The page is plain HTML, CSS and JavaScript, nothing to build and nothing fetched from
elsewhere: the Content-Security-Policy lets it load only its own files and talk only to
this server. It reads what every client reads (the Daemon API's status, programs, logs
stream, health and readiness, and /ws) and acts through the same routes, so it holds no
state of its own in pmd and needs no route of its own beyond its files.

The page and its files are public: they carry no data. The data needs the read level
(access.py), and the page asks for a key when this client's connection does not already
give it that level (a `pmd-auth` meta tag: "key", or "none" when no key or identity is
configured, over the Unix socket as a local user of read or above, or with a client
certificate of read or above). The
page keeps the key in sessionStorage and sends it as a header; on /ws, where a browser
cannot set headers, as a WebSocket subprotocol (auth.py), never in a URL.
"""

from __future__ import annotations

from importlib import resources

from sanic import Request
from sanic.response import HTTPResponse

from ..model.access import Level
from . import access
from .context import JsonBlueprint, context
from .errors import ApiError
from .openapi import doc

bp = JsonBlueprint("ui")

#: The files of the page: name -> content type. Nothing else under /ui is served.
ASSETS = {
    "ui.js": "text/javascript; charset=utf-8",
    "ui.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}

#: Its own files, this server's API and /ws (CSP 3: 'self' covers ws: on the same host);
#: nothing inline, no frames, no forms posted anywhere.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The files change with pmd's version; a page after an upgrade must not mix them.
    "Cache-Control": "no-cache",
}

AUTH_MARK = b"__PMD_AUTH__"


def _read(name: str) -> bytes:
    return resources.files(__package__ or "pmd_init.api").joinpath("static", name).read_bytes()


def _file(request: Request, name: str) -> bytes:
    """A file of the page, read once per server (they are a few KiB each)."""
    files = context(request).ui_files
    data = files.get(name)
    if data is None:
        data = files[name] = _read(name)
    return data


@bp.get("/ui")
@doc("The dashboard: a page that shows every program live and acts on them (docs/ui.md)",
     response="the page", content_type="text/html")
async def page(request: Request) -> HTTPResponse:
    # a caller whose connection (or a key it sent) already gives it the read level
    needs_key = access.caller_of(request).level < Level.READ
    body = _file(request, "index.html").replace(AUTH_MARK, b"key" if needs_key else b"none")
    return HTTPResponse(body, content_type="text/html; charset=utf-8", headers=HEADERS)


@bp.get("/ui/<name:str>")
@doc("One file of the dashboard (its script, style sheet and icon)",
     response="the file", content_type="text/plain")
async def asset(request: Request, name: str) -> HTTPResponse:
    content_type = ASSETS.get(name)
    if content_type is None:
        raise ApiError(404, "NOT_FOUND", f"name: the dashboard has no file '{name}'",
                       field="name")
    return HTTPResponse(_file(request, name), content_type=content_type, headers=HEADERS)
