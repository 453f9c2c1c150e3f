"""The probe port (`--probe-port`): `/livez`, `/readyz` and `/startupz`, without a key, on a
listener of their own, so that an orchestrator can probe a pmd whose API is on the Unix
socket only, or on loopback.

It is served by a thread, not by the loop: a probe must get an answer even when the loop
is wedged, or liveness could only ever fail by timing out. For each request the thread
asks the loop for the verdict (`call_soon_threadsafe`) and waits up to `LOOP_PATIENCE`:
the loop's answer is its heartbeat, taken when someone asks, so nothing ticks while
nobody does. No answer in time is a 503 naming how long the loop has been silent.

The standard library's HTTP parser reads each request (`BaseHTTPRequestHandler`), one
thread per connection, at most `MAX_CONNECTIONS` at a time (a client beyond them is
closed at once), each connection given `READ_TIMEOUT` to send its request. The accepting
thread blocks in `select` on the socket and a wake-up pipe: no timeout, no polling.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import selectors
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from .verdicts import PATHS

log = logging.getLogger("pmd.api")

#: How long a probe waits for the loop's verdict before calling the loop wedged: under
#: Kubernetes' default probe timeout (1 s), far over a busy loop's turn (milliseconds).
LOOP_PATIENCE = 0.5
MAX_CONNECTIONS = 16
READ_TIMEOUT = 2.0

#: (path, verbose) -> (status, body), run on the loop.
Answer = Callable[[str, bool], tuple[int, dict[str, Any]]]


class ProbePort:
    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop,
                 answer: Answer, patience: float = LOOP_PATIENCE) -> None:
        self.sock = sock
        self.loop = loop
        self.answer = answer
        self.patience = patience
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.sock.setblocking(True)
        self._thread = threading.Thread(target=self._accept_loop, name="pmd-probes",
                                        daemon=True)
        self._thread.start()

    def close(self, keep_socket: bool = False) -> None:
        """Stop accepting; with `keep_socket` (a re-exec) the listening socket stays open
        for the next pmd, whose probes are then answered from its backlog."""
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        os.close(self._wake_r)
        os.close(self._wake_w)
        if not keep_socket:
            self.sock.close()

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = [key.fileobj for key, _ in selector.select()]
                if self._wake_r in ready:
                    return
                try:
                    conn, peer = self.sock.accept()
                except OSError:
                    continue  # the client left before we took it (ECONNABORTED...)
                if not self._slots.acquire(blocking=False):
                    conn.close()
                    continue
                threading.Thread(target=self._serve, args=(conn, peer),
                                 name="pmd-probe", daemon=True).start()

    def _serve(self, conn: socket.socket, peer: Any) -> None:
        try:
            conn.settimeout(READ_TIMEOUT)
            _Handler(conn, peer, self)
        except Exception:  # noqa: BLE001 - a broken client never takes the thread down
            log.debug("probe connection from %s failed", peer, exc_info=True)
        finally:
            try:
                conn.close()
            finally:
                self._slots.release()

    def verdict(self, path: str, verbose: bool) -> tuple[int, dict[str, Any]]:
        """The loop's answer, or the wedged one when it does not come in time."""
        future: concurrent.futures.Future[tuple[int, dict[str, Any]]] = \
            concurrent.futures.Future()

        def on_loop() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(self.answer(path, verbose))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                future.set_exception(exc)

        try:
            self.loop.call_soon_threadsafe(on_loop)
            result = future.result(timeout=self.patience)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return 503, {PATHS[path]: False, "reason": (
                f"pmd's loop did not answer within {self.patience:g} s")}
        except RuntimeError:  # the loop is closed: pmd is on its way out
            return 503, {PATHS[path]: False, "reason": "pmd is exiting"}
        return result


class _Handler(BaseHTTPRequestHandler):
    """One connection, HTTP/1.0: one request, then closed."""

    server_version = "pmd-probes"
    port: ProbePort

    def __init__(self, conn: socket.socket, peer: Any, port: ProbePort) -> None:
        self.port = port
        super().__init__(conn, peer, None)  # type: ignore[arg-type]

    def do_GET(self) -> None:  # noqa: N802 - the standard library's naming
        self._respond(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._respond(head=True)

    def _respond(self, head: bool) -> None:
        url = urlsplit(self.path)
        if url.path not in PATHS:
            status, body = 404, {"error": "NOT_FOUND", "message": (
                f"the probe port serves {', '.join(PATHS)} only, not {url.path}")}
        else:
            query = parse_qs(url.query, keep_blank_values=True)
            status, body = self.port.verdict(url.path, "verbose" in query)
        data = orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("probe port: " + format, *args)
