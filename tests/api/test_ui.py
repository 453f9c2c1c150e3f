"""GET /ui over HTTP, without a browser: what it serves, to whom it says a key is needed,
its Content-Security-Policy, and the WebSocket subprotocol that carries the key for a
browser (tests/api/test_ui_browser.py drives the page itself)."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Iterator

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.harness import Pmd

KEY = "ui-key/+=?~"  # characters a token may not have: the subprotocol encodes them


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pmd]:
    with Pmd(tmp_path_factory.mktemp("ui"), [], api_key=KEY) as running:
        yield running


def _auth_mark(html: str) -> str:
    match = re.search(r'<meta name="pmd-auth" content="([a-z]+)">', html)
    assert match, html[:500]
    return match.group(1)


def test_the_page_asks_for_the_key_over_tcp_and_not_over_the_socket(keyed: Pmd) -> None:
    anonymous = keyed.http
    anonymous.headers.pop("X-API-Key")
    over_tcp = anonymous.get("/ui")
    assert over_tcp.status_code == 200
    assert over_tcp.headers["content-type"] == "text/html; charset=utf-8"
    assert _auth_mark(over_tcp.text) == "key"
    over_socket = keyed.uds.get("/ui")
    assert _auth_mark(over_socket.text) == "none"


def test_the_page_and_its_files_are_small_public_and_locked_down(keyed: Pmd) -> None:
    anonymous = keyed.http
    anonymous.headers.pop("X-API-Key")
    page = anonymous.get("/ui")
    total = len(page.content)
    for src in re.findall(r'(?:src|href)="(/ui/[^"]+)"', page.text):
        asset = anonymous.get(src)
        assert asset.status_code == 200, src
        total += len(asset.content)
        assert asset.headers["x-content-type-options"] == "nosniff"
    assert total < 100_000
    csp = page.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    for name in ("script-src", "style-src", "connect-src", "img-src"):
        assert directives[name] == "'self'", name  # nothing inline, nothing from elsewhere
    assert directives["frame-ancestors"] == "'none'"
    # nothing in the files names another host
    for src in ("/ui", "/ui/ui.js", "/ui/ui.css"):
        assert not re.search(r"https?://", anonymous.get(src).text.replace(
            "http://www.w3.org/2000/svg", "")), src


def test_an_unknown_file_is_a_404_that_names_it(keyed: Pmd) -> None:
    anonymous = keyed.http
    anonymous.headers.pop("X-API-Key")
    for name in ("nope.js", "..%2Fui.py", "index.html"):
        answer = anonymous.get(f"/ui/{name}")
        assert answer.status_code == 404, name
        assert answer.json()["error"]["code"] == "NOT_FOUND"
        assert answer.json()["error"]["field"] == "name"


def test_the_data_stays_behind_the_key(keyed: Pmd) -> None:
    anonymous = keyed.http
    anonymous.headers.pop("X-API-Key")
    assert anonymous.get("/api/v1/daemon/status").status_code == 401
    assert keyed.http.get("/api/v1/daemon/status").status_code == 200


def _subprotocol(key: str) -> str:
    return "pmd.key." + base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


async def _first_message(url: str, subprotocols: list[str] | None,
                         headers: dict[str, str] | None = None) -> tuple[str | None, str]:
    async with websockets.connect(url, subprotocols=subprotocols,  # type: ignore[arg-type]
                                  additional_headers=headers, open_timeout=10) as ws:
        message = await asyncio.wait_for(ws.recv(), 10)
        return ws.subprotocol, str(message)


def test_ws_takes_the_key_as_a_subprotocol(keyed: Pmd) -> None:
    url = f"ws://127.0.0.1:{keyed.port}/ws"
    chosen, message = asyncio.run(_first_message(url, ["pmd", _subprotocol(KEY)]))
    assert chosen == "pmd"  # a browser fails the handshake unless one offered is chosen
    assert '"type":"snapshot"' in message
    for wrong in ("other-key", "not base64 !"):
        offered = ["pmd", _subprotocol(wrong) if " " not in wrong else "pmd.key.%%%"]
        with pytest.raises(InvalidStatus) as refused:
            asyncio.run(_first_message(url, offered))
        assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as missing:
        asyncio.run(_first_message(url, ["pmd"]))
    assert missing.value.response.status_code == 401


def test_ws_clients_that_offer_no_pmd_subprotocol_connect_as_before(keyed: Pmd) -> None:
    url = f"ws://127.0.0.1:{keyed.port}/ws"
    key = {"X-API-Key": KEY}
    for offered in (None, ["graphql-ws"]):
        chosen, message = asyncio.run(_first_message(url, offered, key))
        assert chosen is None and '"type":"snapshot"' in message
