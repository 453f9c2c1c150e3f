"""Sending a program any signal, in both API families (Pebble's `signal`):
`POST /api/v1/daemon/programs/{id}/signal` and `POST /api/processes/{id}/signal`.

The signal goes to the program's process group, as stop signals do, or with `main_pid`
to its main process alone. A name that is no signal is a 400 naming the field, a program
with no process a 409 (NOT_RUNNING in the Daemon API).
"""

from __future__ import annotations

import signal as sig
from typing import Any, Literal

from pydantic import Field
from sanic import Request
from sanic.response import HTTPResponse, json

from .context import JsonBlueprint, context
from .daemon import body
from .models import Request as Body
from .openapi import doc
from .process import find

#: Every signal by its name without SIG (USR1, HUP, RTMIN...), as Pebble and kill -l
#: name them; one spelling each, so that the document's list is the accepted one.
NAMES = tuple(sorted(s.name.removeprefix("SIG") for s in sig.Signals))
SignalName = Literal[NAMES]  # type: ignore[valid-type]


def signal_number(name: str) -> int:
    return int(sig.Signals["SIG" + name])


class SignalRequest(Body):
    signal: SignalName = Field(description="a signal's name without SIG: USR1, HUP, KILL...")
    #: The main process alone instead of its whole process group.
    main_pid: bool = False


class DaemonSignalRequest(SignalRequest):
    #: One port of a port-range program; without it, every running port.
    port: int | None = Field(None, ge=1, le=65535)


def _answer(instances: list[Any], name: str) -> dict[str, Any]:
    return {"success": True, "signal": signal_number(name),
            "signal_name": sig.Signals(signal_number(name)).name,
            "signalled": [{"instance_name": i.name, "pid": i.pid, "port": i.port}
                          for i in instances]}


bp = JsonBlueprint("signals")


@bp.post("/api/v1/daemon/programs/<program_id:int>/signal")
@doc("Send a signal to a running program's process group (or its main pid)",
     body=DaemonSignalRequest, response="`{success, signal, signal_name, signalled: "
                                        "[{instance_name, pid, port}]}`")
async def signal_program(request: Request, program_id: int) -> HTTPResponse:
    service = context(request).service
    program = service.program(program_id)
    req = body(request, DaemonSignalRequest)
    done = service.signal(program, signal_number(req.signal), req.port, req.main_pid)
    return json(_answer(done, req.signal))


@bp.post("/api/processes/<ident:str>/signal")
@doc("Send a signal to a running process's group (or its main pid)", body=SignalRequest,
     response="`{success, signal, signal_name, signalled: [{instance_name, pid, port}]}`")
async def signal_process(request: Request, ident: str) -> HTTPResponse:
    program = find(request, ident)
    req = body(request, SignalRequest)
    done = context(request).service.signal(program, signal_number(req.signal),
                                           main_pid=req.main_pid)
    return json(_answer(done, req.signal))
