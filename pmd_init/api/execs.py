"""Exec: run a command now and stream it (docs/exec.md).

`POST /api/v1/daemon/exec` validates the request and answers the run's id and WebSocket
path; the command starts when the client opens that WebSocket, so nothing it writes is lost
before anyone reads. On the socket, binary frames carry data, their first byte the stream
(0 stdin from the client; 1 stdout, 2 stderr from pmd; with a terminal all output is 1);
text frames are JSON control messages: from the client `signal`, `resize` and `eof`, from
pmd `started`, `error` and, last, `exit` with the exit code (128+N for signal N), the
signal's name and the reason when pmd ended it.

Output is sent as the client takes it (Sanic's send waits while the socket's buffer is
full), so a client that stops reading pauses the command through its pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

import orjson
from sanic import Request
from sanic.response import HTTPResponse, json
from sanic.server.websockets.impl import WebsocketImplProtocol

from ..supervisor.errors import SupervisorError
from ..supervisor.execs import STDIN, ExecRun
from .context import JsonBlueprint, context
from .daemon import body
from .models import ExecRequest
from .openapi import doc
from .ws import HANDSHAKE

log = logging.getLogger("pmd.api")

bp = JsonBlueprint("exec", url_prefix="/api/v1/daemon")


def _text(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()


def exit_message(run: ExecRun) -> dict[str, Any]:
    return {"type": "exit", "exit_code": run.exit_code, "signal": run.signal,
            "reason": run.reason}


@bp.post("/exec")
@doc("Run a command now; its streams are on the WebSocket this answers (the admin level: "
     "the key over TCP, refused over TCP when no key is set)", body=ExecRequest,
     response="`{success, id, websocket}`: open `websocket` within 30 s to start it")
async def exec_create(request: Request) -> HTTPResponse:
    req = body(request, ExecRequest)
    run = context(request).service.exec_create(
        req.argv(), environment=req.environment, user=req.user, directory=req.directory,
        terminal=(req.rows, req.cols) if req.terminal else None, stdin=req.stdin,
        timeout=req.timeout, detached=req.detached)
    return json({"success": True, "id": run.id,
                 "websocket": f"/api/v1/daemon/exec/{run.id}/ws"})


@bp.websocket("/exec/<run_id:str>/ws")  # type: ignore[untyped-decorator]  # sanic: untyped
@doc("The streams of an exec run: opening it starts the command (docs/exec.md)",
     parameters=HANDSHAKE[:4],
     responses={"101": {"description": "binary frames: a stream byte (0 stdin, 1 stdout, "
                               "2 stderr) then data; text frames: JSON control messages, "
                               "the last one `exit`"}})
async def exec_stream(request: Request, ws: WebsocketImplProtocol, run_id: str) -> None:
    service = context(request).service
    try:
        run = service.exec_run(run_id)
        service.exec_attach(run)
    except SupervisorError as exc:
        await ws.send(_text({"type": "error", "code": exc.code, "message": exc.message}))
        await ws.close(1008, exc.code)
        return
    loop = asyncio.get_running_loop()
    commands = loop.create_task(_commands(run, ws))
    outputs = [loop.create_task(_forward(run, ws, stream)) for stream in run.streams]
    try:
        if run.pid is not None:
            await ws.send(_text({"type": "started", "id": run.id, "pid": run.pid}))

        async def ended() -> None:
            for task in outputs:
                await task
            await run.done

        finished = loop.create_task(ended())
        done, _ = await asyncio.wait({finished, commands}, return_when=asyncio.FIRST_COMPLETED)
        if finished in done:
            finished.result()
            await ws.send(_text(exit_message(run)))
            await ws.close(1000, "exited")
        else:  # the client closed the socket first
            finished.cancel()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a connection gone ends the stream
        log.debug("exec %s: stream closed: %s", run.id, exc)
    finally:
        for task in (commands, *outputs):
            task.cancel()
        for task in (commands, *outputs):
            with contextlib.suppress(BaseException):
                await task
        service.exec_release(run)


async def _forward(run: ExecRun, ws: WebsocketImplProtocol, stream: int) -> None:
    head = bytes((stream,))
    while True:
        data = await run.read(stream)
        if not data:
            return
        await ws.send(head + data)


async def _commands(run: ExecRun, ws: WebsocketImplProtocol) -> None:
    """What the client sends, until it closes the socket."""
    while True:
        message = await ws.recv()
        if message is None:
            return
        if isinstance(message, (bytes, bytearray, memoryview)):
            data = bytes(message)
            if data[:1] == bytes((STDIN,)):
                await run.write(data[1:])
            elif data:
                await _refuse(ws, "BAD_STREAM", "binary frames from the client are stdin: "
                              "their first byte must be 0")
            continue
        problem = _control(run, message)
        if problem is not None:
            await _refuse(ws, "BAD_MESSAGE", problem)


def _control(run: ExecRun, text: str) -> str | None:
    """Act on a control message; the reason it cannot be acted on, or None."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        return "a control message must be a JSON object"
    if not isinstance(message, dict):
        return "a control message must be a JSON object"
    kind = message.get("type")
    if kind == "eof":
        run.close_stdin()
        return None
    if kind == "signal":
        signum = _signal_number(message.get("signal"))
        if signum is None:
            return "signal: a signal name (SIGINT, INT) or number"
        run.send_signal(signum)
        return None
    if kind == "resize":
        rows, cols = message.get("rows"), message.get("cols")
        if not all(type(v) is int and 1 <= v <= 4096 for v in (rows, cols)):
            return "resize: rows and cols must be integers from 1 to 4096"
        assert isinstance(rows, int) and isinstance(cols, int)
        if not run.resize(rows, cols):
            return "resize: the command has no terminal"
        return None
    return "type: one of signal, resize, eof"


def _signal_number(value: object) -> int | None:
    if type(value) is int:
        return value if value in signal.valid_signals() else None
    if not isinstance(value, str):
        return None
    name = value.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        return None


async def _refuse(ws: WebsocketImplProtocol, code: str, message: str) -> None:
    await ws.send(_text({"type": "error", "code": code, "message": message}))
