"""A small closed-loop load generator over a Unix socket: N keep-alive connections, each
sending one request, reading the whole answer, and sending the next, for a fixed time.

One thread and a selector, so the client costs little next to the server under test (wrk
cannot speak to a Unix socket, and the inits' own clients use theirs). An answer is read to
its end by Content-Length (or chunked encoding, or the server closing); a connection the
server closes is opened again, and that time counts against the server.

Used by bench/run.py (the listing row); by hand:
  .venv/bin/python bench/load.py SOCKET PATH [--connections 16] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import time
from pathlib import Path
from typing import Any

from table import percentile


class _Conn:
    __slots__ = ("sock", "buf", "sent_at", "need", "chunked", "head_end", "status")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.sent_at = 0.0
        self.need = -1  # total bytes of the answer, once known
        self.chunked = False
        self.head_end = -1
        self.status = 0


def _answer_end(conn: _Conn) -> int:
    """Bytes of the buffer that make the whole answer; -1 while incomplete."""
    buf = conn.buf
    if conn.head_end < 0:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return -1
        conn.head_end = end + 4
        head = bytes(buf[:end]).lower()
        conn.status = int(head[9:12])
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name == b"content-length":
                conn.need = conn.head_end + int(value)
            elif name == b"transfer-encoding" and b"chunked" in value:
                conn.chunked = True
    if conn.need >= 0:
        return conn.need if len(buf) >= conn.need else -1
    if conn.chunked:
        pos = conn.head_end
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return -1
            size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
            pos = line_end + 2 + size + 2
            if len(buf) < pos:
                return -1
            if size == 0:
                return pos
    return -1  # read until the server closes


def run(sock_path: Path, request: bytes, connections: int, seconds: float,
        warmup: float = 0.5) -> dict[str, Any]:
    """Requests per second and round-trip percentiles (ms) over `seconds`, after a
    warm-up; every answer must be a 200."""
    sel = selectors.DefaultSelector()

    def connect() -> _Conn:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(sock_path))
        sock.setblocking(False)
        conn = _Conn(sock)
        sel.register(sock, selectors.EVENT_READ, conn)
        return conn

    def send(conn: _Conn) -> None:
        conn.buf.clear()
        conn.need, conn.chunked, conn.head_end = -1, False, -1
        conn.sent_at = time.perf_counter()
        conn.sock.sendall(request)  # small: fits the socket buffer at once

    latencies: list[float] = []
    errors = reconnects = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop = measure_from + seconds
    for _ in range(connections):
        send(connect())
    while True:
        now = time.perf_counter()
        if now >= stop:
            break
        for key, _ in sel.select(stop - now):
            conn = key.data
            try:
                data = conn.sock.recv(1 << 20)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            closed = not data
            conn.buf += data
            end = _answer_end(conn)
            if closed and end < 0 and conn.head_end >= 0 and conn.need < 0 \
                    and not conn.chunked:
                end = len(conn.buf)  # the answer ran to the close
            done = time.perf_counter()
            if end >= 0:
                if conn.sent_at >= measure_from:
                    latencies.append(done - conn.sent_at)
                    if conn.status != 200:
                        errors += 1
            elif not closed:
                continue
            elif conn.sent_at >= measure_from:
                errors += 1  # closed in the middle of an answer
            if closed or end < 0:
                sel.unregister(conn.sock)
                conn.sock.close()
                conn = connect()
                reconnects += 1
            send(conn)
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    sel.close()
    ms = [x * 1000 for x in latencies]
    return {"connections": connections, "seconds": seconds, "requests": len(ms),
            "req_per_s": len(ms) / seconds, "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99), "max_ms": max(ms, default=None),
            "errors": errors, "reconnects": reconnects}


def http_get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()


def http_post(path: str, body: bytes, content_type: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("socket")
    ap.add_argument("path")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0)
    o = ap.parse_args()
    print(json.dumps(run(Path(o.socket), http_get(o.path), o.connections, o.seconds)))


if __name__ == "__main__":
    main()
