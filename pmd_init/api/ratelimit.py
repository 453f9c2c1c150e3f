"""Rate limiting of the PM2-compatible API, per client address: `limit` requests a minute
and a burst of `burst` requests in 10 seconds (sliding windows, exact: each client keeps
the times of its counted requests, at most `limit` of them).

Every response of that API family carries X-RateLimit-Limit (the per-minute limit),
X-RateLimit-Remaining (what is left of the tighter of the two windows) and
X-RateLimit-Reset (Unix time at which one more request is allowed, when none is left; at
which the oldest counted request stops counting, otherwise). Past a limit the answer is 429
with Retry-After. Requests over the Unix socket are never limited or counted, nor are CORS
preflights. The Daemon API on /api/v1 follows its own document and is not limited here.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

from sanic import Request
from sanic.response import BaseHTTPResponse, HTTPResponse

from .auth import over_unix_socket
from .context import PmdApp
from .errors import error_response

WINDOW = 60.0
BURST_WINDOW = 10.0
MAX_CLIENTS = 4096


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: float  # Unix time
    retry_after: int

    def headers(self) -> dict[str, str]:
        return {"X-RateLimit-Limit": str(self.limit),
                "X-RateLimit-Remaining": str(self.remaining),
                "X-RateLimit-Reset": str(math.ceil(self.reset))}


class RateLimiter:
    def __init__(self, limit: int = 100, burst: int = 20) -> None:
        self.limit = limit
        self.burst = burst
        self._hits: dict[str, deque[float]] = {}
        self._count = 0

    @property
    def enabled(self) -> bool:
        return self.limit > 0 or self.burst > 0

    def check(self, client: str, count: bool = True, now: float | None = None) -> Decision:
        """Decide for one request (and count it when allowed and `count`)."""
        now = time.monotonic() if now is None else now
        hits = self._hits.get(client)
        if hits is None:
            if count:
                self._sweep(now)
            hits = deque()
            if count:
                self._hits[client] = hits
        while hits and hits[0] <= now - WINDOW:
            hits.popleft()
        in_burst = 0
        for t in reversed(hits):
            if t <= now - BURST_WINDOW:
                break
            in_burst += 1
        minute_left = self.limit - len(hits) if self.limit > 0 else math.inf
        burst_left = self.burst - in_burst if self.burst > 0 else math.inf
        allowed = minute_left > 0 and burst_left > 0
        if allowed and count:
            hits.append(now)
            minute_left -= 1
            burst_left -= 1
        remaining = min(minute_left, burst_left)
        # When does one more request become possible (blocked), or the oldest hit expire?
        waits = []
        if self.limit > 0 and hits and minute_left <= 0:
            waits.append(hits[-self.limit] + WINDOW - now if len(hits) >= self.limit else 0.0)
        if self.burst > 0 and in_burst and burst_left <= 0:
            waits.append(hits[-self.burst] + BURST_WINDOW - now)
        if waits:
            wait = max(waits)
        elif hits:
            wait = hits[0] + WINDOW - now
        else:
            wait = 0.0
        wait = max(0.0, wait)
        shown_limit = self.limit if self.limit > 0 else self.burst
        return Decision(allowed, shown_limit,
                        int(remaining) if remaining != math.inf else shown_limit,
                        time.time() + wait, max(1, math.ceil(wait)))

    def _sweep(self, now: float) -> None:
        """Forget clients quiet for a whole window; bound the table."""
        self._count += 1
        if self._count % 256 and len(self._hits) < MAX_CLIENTS:
            return
        stale = [k for k, v in self._hits.items() if not v or v[-1] <= now - WINDOW]
        for key in stale:
            del self._hits[key]
        while len(self._hits) >= MAX_CLIENTS:
            del self._hits[next(iter(self._hits))]


def limited_path(path: str) -> bool:
    """The PM2-compatible family: /, /api/... except the Daemon API, and /ws (not
    /metrics: a scraper asks at its own pace, and a refused scrape is a hole in a graph;
    not the dashboard's files, which are no API)."""
    return not path.startswith(("/api/v1/", "/ui/")) and path not in ("/metrics", "/ui")


def client_of(request: Request) -> str:
    return request.ip or "unknown"


def install(app: PmdApp, limit: int, burst: int) -> RateLimiter:
    limiter = RateLimiter(limit, burst)
    app.ctx.rate_limiter = limiter

    async def rate_limit(request: Request) -> HTTPResponse | None:
        if not limiter.enabled or not limited_path(request.path) or over_unix_socket(request):
            return None
        decision = limiter.check(client_of(request), count=request.method != "OPTIONS")
        request.ctx.rate_limit = decision
        if decision.allowed:
            return None
        return error_response(
            429, "RATE_LIMITED",
            f"too many requests: {limiter.limit} a minute and {limiter.burst} in 10 seconds "
            f"per client; retry after {decision.retry_after}s",
            details={"limit": limiter.limit, "burst": limiter.burst,
                     "retry_after": decision.retry_after},
            headers={"Retry-After": str(decision.retry_after)})

    async def rate_limit_headers(request: Request, response: BaseHTTPResponse) -> None:
        decision = getattr(request.ctx, "rate_limit", None)
        if decision is None:
            if not limiter.enabled or not limited_path(request.path) \
                    or over_unix_socket(request):
                return
            decision = limiter.check(client_of(request), count=False)
        for key, value in decision.headers().items():
            response.headers[key] = value

    app.middleware(rate_limit, "request", priority=300)
    app.middleware(rate_limit_headers, "response", priority=300)
    return limiter
