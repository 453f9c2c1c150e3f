"""Webhooks: the delivery of a program's state changes, and of its instances becoming
ready (`READY`), to the URLs its webhooks name.

Which targets may be named is model/webhook_rules.py's (https only, no userinfo, no private,
loopback or otherwise non-public address); redirects are not followed. The rules are checked
twice: when a URL is accepted (`check_url`, from WebhooksSpec's validators) and again here at
every delivery, on every address the host name resolves to then: a name that was public when
it was accepted may point at 127.0.0.1 today (DNS rebinding). The connection goes to the
address that was vetted, never to the name again, with the certificate checked against the
URL's host name.

`WebhookDispatcher` is owned by the Supervisor. It subscribes to the EventBus, turns each
matching event into one delivery per URL, and keeps them in per-URL lanes (so a receiver
sees a program's events in order, and a slow receiver delays only itself) bounded by one
limit for the whole dispatcher: past it, deliveries are dropped and counted. A lane's task
lives only while the lane has work; `close` drains for a moment, then cancels and awaits
every task. HTTP is the standard library's: one POST per connection (HTTP/1.1,
Content-Length, Connection: close), and only the status line and headers are read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import socket
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, urlsplit

from .. import __version__
from ..model.webhook_rules import address_problem, ip_literal
from .events import Event, EventBus, ReadyEvent, StateEvent

if TYPE_CHECKING:
    from pathlib import Path

    from ..model.spec import WebhooksSpec

log = logging.getLogger("pmd.webhooks")

#: Deliveries waiting in all lanes together; more are dropped (and counted).
MAX_PENDING = 1000
#: How long shutdown waits for pending deliveries before cancelling them.
DRAIN_SECONDS = 2.0
#: The answer's status line and headers; a longer head is a failure.
HEAD_LIMIT = 64 * 1024


# ---- which events go ---------------------------------------------------------------


def matches(events: Iterable[str], state: str) -> bool:
    return any(e in ("all", "*", state) for e in events)


# ---- the payload -------------------------------------------------------------------


def iso_utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def payload(event: StateEvent, hostname: str) -> dict[str, object]:
    """The JSON body of every delivery (docs/daemon-api.md, "Webhooks")."""
    return {
        "program_id": event.program_id,
        "program": event.program,
        "instance": event.instance,
        "port": event.port,
        "temporary_id": event.temporary_id,
        "event": event.to_state.value,
        "from_state": event.from_state.value,
        "to_state": event.to_state.value,
        "pid": event.pid,
        "exit_code": event.exit_code,
        "timestamp": iso_utc(event.time),
        "hostname": hostname,
        # BACKOFF: why it waits ("failed_start" or "start_limit") and until when
        "reason": event.reason,
        "retry_at": iso_utc(event.retry_at) if event.retry_at is not None else None,
    }


def ready_payload(event: ReadyEvent, hostname: str) -> dict[str, object]:
    """A READY delivery's body: the state change's keys (no states: readiness is not
    one), and `via`, the readiness source that said so."""
    return {
        "program_id": event.program_id,
        "program": event.program,
        "instance": event.instance,
        "port": event.port,
        "temporary_id": event.temporary_id,
        "event": "READY",
        "from_state": None,
        "to_state": None,
        "pid": event.pid,
        "exit_code": None,
        "timestamp": iso_utc(event.time),
        "hostname": hostname,
        "reason": None,
        "retry_at": None,
        "via": event.via,
    }


# ---- delivery ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    url: str
    event: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    timeout: float
    retry: int
    delivery_id: str


class DeliveryFailed(Exception):
    """One attempt failed; `retry` says whether another attempt may fare better."""

    def __init__(self, reason: str, retry: bool = True) -> None:
        super().__init__(reason)
        self.retry = retry


def backoff(attempt: int) -> float:
    """Seconds before attempt `attempt` (1, 2, ...): 0.5, 1, 2, 4, 8."""
    return min(8.0, 0.5 * 2.0 ** (attempt - 1))


def redact(url: str) -> str:
    """The URL for logs: the query (often a token) left out."""
    parts = urlsplit(url)
    return f"https://{parts.netloc}{parts.path or '/'}"


def _host_header(parts: SplitResult) -> str:
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return host if parts.port in (None, 443) else f"{host}:{parts.port}"


def build_request(delivery: Delivery) -> bytes:
    parts = urlsplit(delivery.url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {
        "Host": _host_header(parts),
        "User-Agent": f"pmd/{__version__}",
        "Content-Type": "application/json",
    }
    for name, value in delivery.headers:  # a configured User-Agent or Content-Type wins
        for known in [k for k in headers if k.lower() == name.lower()]:
            del headers[known]
        headers[name] = value
    headers.update({
        "Content-Length": str(len(delivery.body)),
        "Connection": "close",
        "X-Pmd-Event": delivery.event,
        "X-Pmd-Delivery": delivery.delivery_id,
    })
    head = f"POST {target} HTTP/1.1\r\n" + \
        "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode("ascii") + delivery.body


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise DeliveryFailed(f"not an HTTP/1 answer: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(code), headers


def reported(event: Event) -> tuple[str, StateEvent | ReadyEvent] | None:
    """What webhooks and local hooks report, with the name their `events` match: the
    state entered, or READY. None for the rest, and for a process taken over by a new
    pmd (pmd changed hands, not the program)."""
    if isinstance(event, StateEvent):
        return None if event.reason == "adopted" else (event.to_state.value, event)
    if isinstance(event, ReadyEvent):
        return "READY", event
    return None


class WebhookDispatcher:
    """Delivers the state changes and READY events of programs whose spec has webhooks
    enabled (health verdicts are not webhook events: the `events` a spec may name are
    states and READY).

    `spec_for` maps an event to the webhooks of the program it is about (or None); it is
    called in the EventBus callback, so it must be a lookup, nothing more.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, events: EventBus,
                 spec_for: Callable[[StateEvent | ReadyEvent], WebhooksSpec | None],
                 max_pending: int = MAX_PENDING, ca_file: Path | None = None) -> None:
        self.loop = loop
        self.spec_for = spec_for
        self.max_pending = max_pending
        self.ca_file = ca_file  # trusted besides the system's CAs (settings' webhook_ca_file)
        self.hostname = socket.gethostname()
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._pending = 0
        self._lanes: dict[str, deque[Delivery]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False
        self._unsubscribe = events.subscribe(self.on_event, (StateEvent, ReadyEvent))

    def counters(self) -> dict[str, int]:
        return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped,
                "pending": self._pending}

    # ---- intake (synchronous, from the EventBus) -----------------------------------

    def on_event(self, any_event: Event) -> None:
        if self._closed or not isinstance(any_event, StateEvent | ReadyEvent):
            return
        hooks = self.spec_for(any_event)
        if hooks is None or not hooks.enabled or not hooks.urls:  # most programs: done
            return
        found = reported(any_event)
        if found is None:
            return
        name, event = found
        if not matches(hooks.events, name):
            return
        body = json.dumps(payload(event, self.hostname) if isinstance(event, StateEvent)
                          else ready_payload(event, self.hostname),
                          separators=(",", ":")).encode()
        headers = tuple(hooks.headers.items())
        for url in dict.fromkeys(hooks.urls):
            if self._pending >= self.max_pending:
                self.dropped += 1
                if self.dropped % 100 == 1:  # the first, then one line per hundred
                    log.warning("webhook queue full (%d pending): %d deliveries dropped "
                                "so far", self._pending, self.dropped)
                continue
            self._lanes.setdefault(url, deque()).append(Delivery(
                url=url, event=name, body=body, headers=headers,
                timeout=float(hooks.timeout), retry=hooks.retry,
                delivery_id=os.urandom(8).hex()))
            self._pending += 1
            task = self._tasks.get(url)
            if task is None or task.done():
                task = self.loop.create_task(self._drain(url), name=f"webhook {redact(url)}")
                self._tasks[url] = task

    # ---- lanes ---------------------------------------------------------------------

    async def _drain(self, url: str) -> None:
        lane = self._lanes[url]
        try:
            while lane:
                await self._deliver(lane[0])
                lane.popleft()
                self._pending -= 1
        finally:
            # Work is left (the delivery under way included) only when close() cancelled
            # the lane: it counts as dropped.
            self._pending -= len(lane)
            self.dropped += len(lane)
            lane.clear()
            if self._lanes.get(url) is lane:
                del self._lanes[url]
            if self._tasks.get(url) is asyncio.current_task():
                del self._tasks[url]

    async def _deliver(self, delivery: Delivery) -> None:
        where = redact(delivery.url)
        attempts = delivery.retry + 1
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(backoff(attempt))
            try:
                async with asyncio.timeout(delivery.timeout):
                    status, headers = await self._post(delivery)
            except DeliveryFailed as exc:
                reason, again = str(exc), exc.retry
            except TimeoutError:
                reason, again = f"no answer within {delivery.timeout:g} s", True
            except (OSError, asyncio.IncompleteReadError) as exc:
                reason, again = f"{type(exc).__name__}: {exc}", True
            except asyncio.LimitOverrunError:
                reason, again = "the answer's headers are too long", False
            except Exception as exc:  # noqa: BLE001 - a bug here must not end the lane
                log.exception("webhook %s: delivery failed", where)
                reason, again = f"{type(exc).__name__}: {exc}", False
            else:
                if 200 <= status < 300:
                    self.sent += 1
                    log.debug("webhook %s %s: %d", delivery.event, where, status)
                    return
                if 300 <= status < 400:
                    location = headers.get("location", "?").partition("?")[0][:200]
                    reason, again = f"redirect {status} to {location} not followed", False
                else:
                    reason = f"answered {status}"
                    again = status >= 500 or status in (408, 429)
            last = attempt == attempts - 1
            log.warning("webhook %s %s: %s (attempt %d of %d%s)", delivery.event, where,
                        reason, attempt + 1, attempts,
                        "" if last else ", will retry" if again else ", not retried")
            if last or not again:
                break
        self.failed += 1

    async def _post(self, delivery: Delivery) -> tuple[int, dict[str, str]]:
        parts = urlsplit(delivery.url)
        host = parts.hostname or ""
        port = parts.port or 443
        addresses = await self._resolve(host, port)
        context = await self._context()
        error: OSError | None = None
        for family, address in addresses:
            try:
                reader, writer = await asyncio.open_connection(
                    address, port, family=family, ssl=context, server_hostname=host,
                    limit=HEAD_LIMIT)
                break
            except OSError as exc:  # refused, unreachable, certificate: try the next one
                error = exc
        else:
            raise DeliveryFailed(f"cannot connect to {host}: {error}",
                                 retry=not isinstance(error, ssl.SSLCertVerificationError))
        try:
            writer.write(build_request(delivery))
            await writer.drain()
            while True:
                status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
                if not 100 <= status < 200 or status == 101:
                    return status, headers  # 1xx are interim: the answer follows
        finally:
            writer.transport.abort()  # nothing more to read or say: no TLS goodbye

    async def _resolve(self, host: str, port: int) -> list[tuple[int, str]]:
        """Every address of `host`, all of them allowed, or DeliveryFailed (no retry)."""
        literal = ip_literal(host)
        if literal is not None:
            found: list[tuple[int, str]] = [
                (socket.AF_INET6 if literal.version == 6 else socket.AF_INET, host)]
        else:
            try:
                infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                    proto=socket.IPPROTO_TCP)
            except socket.gaierror as exc:
                raise DeliveryFailed(f"cannot resolve {host}: {exc}") from None
            found = list(dict.fromkeys((int(i[0]), str(i[4][0])) for i in infos))
        for _, address in found:
            problem = address_problem(ipaddress.ip_address(address))
            if problem:
                raise DeliveryFailed(f"refused: {host} resolves to {address}, {problem}",
                                     retry=False)
        if not found:
            raise DeliveryFailed(f"{host} has no address")
        return found

    async def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            # Loading the system's CA store takes tens of milliseconds: not on the loop.
            self._ssl = await self.loop.run_in_executor(None, _make_context, self.ca_file)
        return self._ssl

    # ---- shutdown ------------------------------------------------------------------

    async def close(self, drain: float = 0.0) -> None:
        """Stop taking events; give pending deliveries `drain` seconds, then cancel."""
        self._closed = True
        self._unsubscribe()
        tasks = list(self._tasks.values())
        if tasks and drain > 0:
            await asyncio.wait(tasks, timeout=drain)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # A lane whose task was cancelled before it first ran never cleaned up after itself.
        for lane in self._lanes.values():
            self._pending -= len(lane)
            self.dropped += len(lane)
        self._lanes.clear()
        self._tasks.clear()
        if tasks:
            log.info("webhooks: %d sent, %d failed, %d dropped", self.sent, self.failed,
                     self.dropped)


def _make_context(ca_file: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context
