"""Who may call the process API: the three API key forms, unauthenticated requests, the
trusted Unix socket, /ws with a header or ?token=, the rate limit headers and the 429, and
CORS preflights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect, unix_connect

from pmd_init.api.ratelimit import RateLimiter
from tests.api.process_helpers import ENV, pm2_error
from tests.harness import Pmd

KEY = "your-secret-api-key"


@pytest.fixture(scope="module")
def pmd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pmd]:
    base: Path = tmp_path_factory.mktemp("pm2-key")
    with Pmd(base, [], env=ENV, api_key=KEY) as running:
        yield running


@pytest.fixture(scope="module")
def bare(pmd: Pmd) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=pmd.url, timeout=10) as client:
        yield client


ROUTES = [("GET", "/api/processes"), ("GET", "/api/processes/x"), ("GET", "/api/system"),
          ("GET", "/api/status"), ("POST", "/api/processes"),
          ("POST", "/api/processes/x/stop"), ("POST", "/api/processes/x/restart"),
          ("POST", "/api/processes/x/reload"), ("DELETE", "/api/processes/x"),
          ("GET", "/api/processes/x/logs")]


def test_every_route_but_root_needs_the_key(bare):
    assert bare.get("/").status_code == 200
    for method, path in ROUTES:
        response = bare.request(method, path)
        error = pm2_error(response, 401, "PERMISSION_DENIED")
        assert error["message"] == "missing API key"
        assert response.headers["www-authenticate"].startswith("Bearer")
        wrong = bare.request(method, path, headers={"X-API-Key": "wrong"})
        assert pm2_error(wrong, 401, "PERMISSION_DENIED")["message"] == "invalid API key"


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"},
                                     {"X-API-Key": KEY},
                                     {"Authorization": f"ApiKey {KEY}"}],
                         ids=["bearer", "x-api-key", "apikey"])
def test_the_three_key_forms(bare, headers):
    response = bare.get("/api/processes", headers=headers)
    assert response.status_code == 200 and response.json() == []
    assert bare.get("/api/system", headers=headers).status_code == 200
    wrong = {k: v.replace(KEY, "nope") for k, v in headers.items()}
    pm2_error(bare.get("/api/processes", headers=wrong), 401, "PERMISSION_DENIED")


def test_the_unix_socket_is_trusted(pmd):
    assert pmd.uds.get("/api/processes").status_code == 200


def test_websocket_needs_the_key_too(pmd):
    ws_url = f"ws://127.0.0.1:{pmd.port}/ws"
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url, open_timeout=5)
    assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus):
        connect(ws_url + "?token=wrong", open_timeout=5)
    with connect(ws_url + f"?token={KEY}", open_timeout=5) as ws:
        assert '"snapshot"' in ws.recv(timeout=5)
    with connect(ws_url, additional_headers={"X-API-Key": KEY}, open_timeout=5) as ws:
        assert '"snapshot"' in ws.recv(timeout=5)
    with unix_connect(str(pmd.socket), "ws://localhost/ws", open_timeout=5) as ws:
        assert '"snapshot"' in ws.recv(timeout=5)


# ---- rate limiting ----------------------------------------------------------------------

def test_rate_limit_headers_and_429(tmp_path):
    env = {**ENV, "PMD_RATE_LIMIT": "100", "PMD_RATE_BURST": "5"}
    with Pmd(tmp_path, [], env=env) as pmd, httpx.Client(base_url=pmd.url) as http:
        remaining = []
        for _ in range(5):
            response = http.get("/api/processes")
            assert response.status_code == 200
            assert response.headers["x-ratelimit-limit"] == "100"
            assert int(response.headers["x-ratelimit-reset"]) > 0
            remaining.append(int(response.headers["x-ratelimit-remaining"]))
        assert remaining == [4, 3, 2, 1, 0]
        limited = http.get("/api/system")
        error = pm2_error(limited, 429, "RATE_LIMITED")
        assert error["details"]["burst"] == 5
        retry = int(limited.headers["retry-after"])
        assert 1 <= retry <= 10
        assert limited.headers["x-ratelimit-remaining"] == "0"
        # every response carries the headers, errors and unknown routes too
        assert "x-ratelimit-limit" in http.get("/nowhere").headers
        # the Unix socket is neither limited nor counted, nor is the Daemon API
        for _ in range(10):
            response = pmd.uds.get("/api/processes")
            assert response.status_code == 200 and "x-ratelimit-limit" not in response.headers
        assert http.get("/api/v1/daemon/health").status_code == 200
        # flags work like the environment
    with Pmd(tmp_path / "flags", [], env=ENV, args=["--rate-limit", "3", "--rate-burst", "0"]
             ) as pmd, httpx.Client(base_url=pmd.url) as http:
        codes = [http.get("/").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]


def test_rate_limiter_windows():
    limiter = RateLimiter(limit=100, burst=20)
    t = 1000.0
    for i in range(20):
        decision = limiter.check("a", now=t + i * 0.01)
        assert decision.allowed and decision.remaining == 19 - i
    blocked = limiter.check("a", now=t + 1)
    assert not blocked.allowed and blocked.retry_after == 9  # the burst window frees at t+10
    assert limiter.check("b", now=t + 1).allowed  # per client
    assert limiter.check("a", now=t + 10.5).allowed
    # the minute limit: 100 spread out
    limiter = RateLimiter(limit=100, burst=20)
    for i in range(100):
        assert limiter.check("c", now=t + i * 0.55).allowed
    late = limiter.check("c", now=t + 55.0)
    assert not late.allowed and late.remaining == 0 and late.retry_after == 5
    assert limiter.check("c", now=t + 60.01).allowed
    assert RateLimiter(limit=0, burst=0).enabled is False


# ---- CORS ------------------------------------------------------------------------------

def test_cors_preflight_and_headers(bare):
    preflight = bare.options("/api/processes", headers={
        "Origin": "https://dashboard.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "X-API-Key, Content-Type"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    methods = {m.strip() for m in preflight.headers["access-control-allow-methods"].split(",")}
    assert methods == {"GET", "POST", "OPTIONS"}  # the route's own (Allow says the same)
    assert preflight.headers["allow"] == preflight.headers["access-control-allow-methods"]
    allowed = {h.strip().lower() for h in
               preflight.headers["access-control-allow-headers"].split(",")}
    assert {"content-type", "authorization", "x-api-key"} <= allowed
    simple = bare.get("/api/processes", headers={"Origin": "https://dashboard.example",
                                                 "X-API-Key": KEY})
    assert simple.headers["access-control-allow-origin"] == "*"
    assert "x-ratelimit-remaining" in simple.headers["access-control-expose-headers"].lower()
    denied = bare.get("/api/processes", headers={"Origin": "https://dashboard.example"})
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "*"


def test_cors_origins_can_be_restricted(tmp_path):
    env = {**ENV, "PMD_CORS_ORIGINS": "https://ok.example,https://also.example"}
    with Pmd(tmp_path, [], env=env) as pmd, httpx.Client(base_url=pmd.url) as http:
        good = http.get("/api/status", headers={"Origin": "https://also.example"})
        assert good.headers["access-control-allow-origin"] == "https://also.example"
        assert good.headers["vary"] == "Origin"
        bad = http.get("/api/status", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in bad.headers
        preflight = http.options("/api/processes", headers={
            "Origin": "https://ok.example", "Access-Control-Request-Method": "DELETE"})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://ok.example"
