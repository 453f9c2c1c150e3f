"""A small HTTP server that can hand its port over to a replacement without dropping a
connection: how a program should listen to be reloaded by pmd without downtime.

- It binds with SO_REUSEPORT, so a replacement can listen on the same port while it runs.
- It attaches a classic BPF program to the port's reuseport group that picks socket 1: in a
  group of two (the old listener, then the replacement) new connections all go to the
  replacement; alone in the group the index is out of range and the kernel falls back to
  its usual choice. Without this, Linux spreads new connections over both listeners, and
  the ones queued on the old listener when it closes are reset (unless the machine sets
  net.ipv4.tcp_migrate_req=1).
- On SIGTERM it keeps accepting for DRAIN seconds (connections that reached it before the
  replacement joined), then closes its listener and finishes the requests in flight.

GET / answers `<pid>`; GET /health answers 200. Port: $PORT (pmd sets it).
Env BIND_FAIL=1 makes it bind without SO_REUSEPORT (a program that cannot be reloaded).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SO_ATTACH_REUSEPORT_CBPF = 51
BPF_RET_K = 0x06
DRAIN = 0.3


def steer_to_newest(sock: socket.socket) -> None:
    insns = (ctypes.c_uint64 * 1)(struct.unpack("=Q", struct.pack("=HBBI", BPF_RET_K, 0, 0,
                                                                 1))[0])
    prog = struct.pack("@HP", 1, ctypes.addressof(insns))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, prog)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = False
    request_queue_size = 512

    def server_bind(self) -> None:
        if os.environ.get("BIND_FAIL") != "1":
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def server_activate(self) -> None:
        super().server_activate()
        if os.environ.get("BIND_FAIL") != "1":
            steer_to_newest(self.socket)  # after listen(): the socket is in the group now


def main() -> None:
    port = int(os.environ["PORT"])
    server = Server(("127.0.0.1", port), Handler)
    stopping = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_term)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    print(f"listening on {port}", flush=True)
    stopping.wait()
    stopping.clear()
    stopping.wait(DRAIN)  # still accepting: what reached us before the replacement joined
    server.shutdown()
    thread.join()
    server.server_close()  # joins the request threads: in-flight requests finish


if __name__ == "__main__":
    main()
