"""The stack's floor: the memory of the libraries pmd is built on, serving one route, without
a line of pmd's.

The same interpreter and packages as pmd's venv, imported as pmd imports them (asyncio's own
loop, sanic without uvloop), an app with one route answering a pydantic model as JSON, on a
Unix socket through `Sanic.create_server` in a loop this script runs (pmd embeds sanic the
same way). The bench asks it a few times, then reads its RSS: what any service of this
stack holds before it supervises anything, beside pmd's RSS with 100 programs.

Usage: python bench/stackfloor.py SOCKET_PATH   (prints "ready" once serving)
"""

from __future__ import annotations

import asyncio
import signal
import sys


def import_stack() -> None:
    sys.modules["uvloop"] = None  # type: ignore[assignment]  # as pmd imports sanic
    try:
        import sanic  # noqa: F401
    finally:
        del sys.modules["uvloop"]


async def serve(path: str) -> None:
    from pydantic import BaseModel
    from sanic import Sanic
    from sanic.request import Request
    from sanic.response import HTTPResponse, raw

    class Program(BaseModel):
        name: str
        state: str
        pid: int | None = None

    app = Sanic("floor", configure_logging=False)
    app.config.MOTD = False

    @app.get("/programs")
    async def programs(request: Request) -> HTTPResponse:
        body = Program(name="sleep", state="RUNNING", pid=1).model_dump_json().encode()
        return raw(body, content_type="application/json")

    server = await app.create_server(unix=path, return_asyncio_server=True,
                                     access_log=False,
                                     asyncio_server_kwargs={"start_serving": False})
    assert server is not None
    await server.startup()
    await server.start_serving()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main() -> None:
    import_stack()
    asyncio.run(serve(sys.argv[1]))


if __name__ == "__main__":
    main()
