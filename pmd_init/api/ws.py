"""/ws: a live stream of the processes, for dashboards.

On connect: one `snapshot` message with every process (the GET /api/processes view).
Then, from the supervisor's event stream as it happens, a `state_change` message for every
state change of any instance, a `health` message when an instance's health status
changes, a `ready` message when one becomes ready, and a `waiting` message when what a
program's start waits for changes (depends_on); and a `metrics` message every
`interval` seconds (default 5, `?interval=` between 0.2 and 300) while the connection is
open: nobody listening, nothing sampled.
The format is documented in docs/process-api.md.

Authentication is the API's (a header; since browsers cannot set headers on a WebSocket,
also the subprotocol `pmd.key.<base64url key>` offered beside `pmd`, or `?token=`); the
Unix socket is trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import orjson
from sanic import Request
from sanic.server.protocols.websocket_protocol import WebSocketProtocol
from sanic.server.websockets.impl import WebsocketImplProtocol

from ..supervisor.events import (
    Event,
    HealthEvent,
    ReadyEvent,
    SignalEvent,
    StateEvent,
    WaitingEvent,
)
from ..supervisor.instance import Instance
from ..supervisor.supervisor import Supervisor
from .auth import WS_SUBPROTOCOL
from .context import JsonBlueprint, context
from .openapi import doc
from .process_views import iso, pm2_status, process_id, process_view, program_pm2_status

log = logging.getLogger("pmd.api")

bp = JsonBlueprint("ws")

DEFAULT_INTERVAL = 5.0
QUEUE_MAX = 1000  # a client this far behind misses messages (and is told so)


def _dumps(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()


def snapshot(sup: Supervisor) -> dict[str, Any]:
    programs = sorted(sup.programs.values(), key=lambda p: p.id or 0)
    programs += sorted(sup.ephemeral.values(), key=lambda p: p.created_at or 0)
    return {"type": "snapshot", "time": iso(time.time()),
            "processes": [process_view(p, sup.sampler) for p in programs]}


def state_message(sup: Supervisor, event: StateEvent) -> dict[str, Any]:
    program = (sup.ephemeral.get(event.temporary_id) if event.temporary_id
               else sup.programs.get(event.program_id) if event.program_id is not None
               else None)
    # The instance that changed knows the exitcodes it ran with, even once it is removed.
    inst = event.source if isinstance(event.source, Instance) else None
    expected = inst is not None and inst.program.spec.expects_exit(event.exit_code)
    return {
        "type": "state_change",
        "id": event.temporary_id or event.program_id,
        "name": event.program,
        "instance": event.instance,
        "port": event.port,
        "from": event.from_state.value,
        "to": event.to_state.value,
        "status": pm2_status(event.to_state, expected),
        "process_status": program_pm2_status(program) if program is not None else None,
        "pid": event.pid,
        "exit_code": event.exit_code,
        "time": iso(event.time),
        "timestamp": event.time,
        "reason": event.reason,
        "retry_at": iso(event.retry_at),
    }


def health_message(event: HealthEvent) -> dict[str, Any]:
    return {"type": "health", "id": event.temporary_id or event.program_id,
            "name": event.program, "instance": event.instance, "port": event.port,
            "from": event.from_status, "to": event.to_status, "time": iso(event.time)}


def ready_message(event: ReadyEvent) -> dict[str, Any]:
    return {"type": "ready", "id": event.temporary_id or event.program_id,
            "name": event.program, "instance": event.instance, "port": event.port,
            "pid": event.pid, "via": event.via, "time": iso(event.time),
            "timestamp": event.time}


def signal_message(event: SignalEvent) -> dict[str, Any]:
    return {"type": "signal", "id": event.temporary_id or event.program_id,
            "name": event.program, "instance": event.instance, "port": event.port,
            "pid": event.pid, "signal": event.signal, "step": event.step,
            "steps": event.steps, "wait": event.wait, "time": iso(event.time),
            "timestamp": event.time}


def waiting_message(event: WaitingEvent) -> dict[str, Any]:
    """What a program's start waits for, as the process list shows it; an empty
    `waiting_for` says it waits no more."""
    return {"type": "waiting", "id": event.program_id, "name": event.program,
            "waiting_for": list(event.waiting_for), "blocked": event.blocked,
            "time": iso(event.time), "timestamp": event.time}


def event_message(sup: Supervisor, event: Event) -> dict[str, Any]:
    if isinstance(event, WaitingEvent):
        return waiting_message(event)
    if isinstance(event, HealthEvent):
        return health_message(event)
    if isinstance(event, ReadyEvent):
        return ready_message(event)
    if isinstance(event, SignalEvent):
        return signal_message(event)
    return state_message(sup, event)


def metrics_message(sup: Supervisor) -> dict[str, Any]:
    processes = []
    for program in sup.all_programs():
        cpu, memory = 0.0, 0
        for inst in program.instances.values():
            if inst.pid is not None:
                c, m = sup.sampler.usage(inst.pid)
                cpu += c
                memory += m
        processes.append({"id": process_id(program), "name": program.name,
                          "status": program_pm2_status(program),
                          "cpu_usage": round(cpu, 1), "memory_usage": memory})
    return {"type": "metrics", "time": iso(time.time()), "processes": processes,
            "system": {"cpu_usage": round(sup.sampler.system_cpu(), 1),
                       "load_average": [round(x, 2) for x in os.getloadavg()]}}


def _interval(request: Request) -> float:
    raw = request.args.get("interval")
    try:
        value = float(raw) if raw is not None else DEFAULT_INTERVAL
    except ValueError:
        value = DEFAULT_INTERVAL
    return min(300.0, max(0.2, value))


def _header(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": True, "schema": schema}


#: A WebSocket handshake (RFC 6455); anything else is answered 426 Upgrade Required.
HANDSHAKE = [
    _header("Upgrade", {"type": "string", "enum": ["websocket"]}),
    _header("Connection", {"type": "string", "enum": ["Upgrade"]}),
    _header("Sec-WebSocket-Key", {"type": "string", "pattern": "^[A-Za-z0-9+/]{21}[AQgw]==$"}),
    _header("Sec-WebSocket-Version", {"type": "string", "enum": ["13"]}),
    {"name": "interval", "in": "query", "required": False,
     "schema": {"type": "string", "description": "seconds between metrics messages, "
                "0.2-300 (others are clamped, what is not a number is the default, 5)"}},
    {"name": "token", "in": "query", "required": False,
     "schema": {"type": "string", "description": "the API key, for browsers"}},
]


@bp.websocket("/ws")  # type: ignore[untyped-decorator]  # sanic leaves it unannotated
@doc("Live events and metrics over a WebSocket (a snapshot first)", parameters=HANDSHAKE,
     responses={"101": {"description": "the WebSocket protocol from here on (426 Upgrade "
                               "Required without a handshake)"}})
async def stream(request: Request, ws: WebsocketImplProtocol) -> None:
    sup = context(request).supervisor
    interval = _interval(request)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_MAX)
    dropped = 0

    def put(message: dict[str, Any]) -> None:
        nonlocal dropped
        try:
            queue.put_nowait(message)
        except asyncio.QueueFull:
            dropped += 1

    unsubscribe = sup.events.subscribe(lambda event: put(event_message(sup, event)))
    reader = asyncio.get_running_loop().create_task(_drain(ws))
    try:
        await ws.send(_dumps(snapshot(sup)))
        next_metrics = time.monotonic() + interval
        while not reader.done():
            wait = max(0.0, next_metrics - time.monotonic())
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, reader}, timeout=wait,
                                         return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                message = getter.result()
                if dropped:
                    await ws.send(_dumps({"type": "dropped", "messages": dropped}))
                    dropped = 0
                await ws.send(_dumps(message))
                continue
            getter.cancel()
            if reader in done:
                break
            await ws.send(_dumps(metrics_message(sup)))
            next_metrics = time.monotonic() + interval
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a closed connection ends the stream
        log.debug("ws closed: %s", exc)
    finally:
        unsubscribe()
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader


class Protocol(WebSocketProtocol):
    """Sanic's protocol, choosing the `pmd` subprotocol for a client that offers it: a
    browser that sends its key as a subprotocol (auth.py) fails the handshake unless the
    server picks one it offered. A route's fixed `subprotocols` cannot do it: with one
    named, the handshake refuses every client that offers none, as /ws's others do."""

    async def websocket_handshake(self, request: Request,
                                  subprotocols: Sequence[str] | None = None
                                  ) -> WebsocketImplProtocol:
        offered = {item.strip() for item in
                   request.headers.get("sec-websocket-protocol", "").split(",")}
        chosen = [WS_SUBPROTOCOL] if WS_SUBPROTOCOL in offered else subprotocols
        ws: WebsocketImplProtocol = await super().websocket_handshake(request, chosen)
        return ws


async def _drain(ws: WebsocketImplProtocol) -> None:
    """Read (and ignore) what the client sends, until it closes the connection."""
    while True:
        message = await ws.recv()
        if message is None:
            return
