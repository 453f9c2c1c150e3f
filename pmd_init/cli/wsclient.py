"""A small WebSocket client (RFC 6455) for `pmd exec`, on the standard library only.

It is non-blocking after the handshake: the caller selects on `sock`, hands what arrives
to `receive`, which yields complete messages, and queues what it sends with `send`, flushed
by `flush` when the socket is writable. Sending never blocks, so a client that is pushing
stdin while pmd is pushing output never deadlocks with it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
from collections.abc import Iterator

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


class HandshakeError(Exception):
    pass


def handshake(sock: socket.socket, host: str, path: str, headers: dict[str, str]) -> bytes:
    """Upgrade `sock`; returns what the server sent after its answer's head."""
    key = base64.b64encode(os.urandom(16))
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key.decode()}",
             "Sec-WebSocket-Version: 13", "User-Agent: pmd-cli",
             *(f"{k}: {v}" for k, v in headers.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            raise HandshakeError("the connection closed during the WebSocket handshake")
        received += chunk
        if len(received) > 65536:
            raise HandshakeError("the WebSocket handshake's answer is too long")
    head, _, rest = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or parts[1] != "101":
        raise HandshakeError(f"no WebSocket: {status_line}")
    answer = {k.strip().lower(): v.strip() for k, _, v in
              (line.partition(":") for line in header_lines)}
    expected = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    if answer.get("sec-websocket-accept") != expected:
        raise HandshakeError("the WebSocket handshake's accept key is wrong")
    return rest


def _mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return payload
    n = len(payload)
    mask = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(
        n, "little")


class WebSocket:
    def __init__(self, sock: socket.socket, received: bytes = b"") -> None:
        self.sock = sock
        self._in = bytearray(received)
        self._out = bytearray()
        self._fragments: list[bytes] = []
        self._opcode = 0
        self.closed = False
        sock.setblocking(False)

    @property
    def pending(self) -> int:
        """Bytes queued but not yet sent."""
        return len(self._out)

    def send(self, opcode: int, payload: bytes) -> None:
        header = bytearray([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header.append(0x80 | n)
        elif n < 1 << 16:
            header += struct.pack("!BH", 0x80 | 126, n)
        else:
            header += struct.pack("!BQ", 0x80 | 127, n)
        key = os.urandom(4)
        self._out += header + key + _mask(payload, key)

    def flush(self) -> None:
        """Send what the socket takes now."""
        while self._out:
            try:
                sent = self.sock.send(self._out)
            except BlockingIOError:
                return
            del self._out[:sent]

    def buffered(self) -> Iterator[tuple[int, bytes]]:
        """The complete messages already received: those that came with the handshake's
        answer (a command that ends at once may be whole in it, its CLOSE included)."""
        yield from self._frames()

    def receive(self) -> Iterator[tuple[int, bytes]]:
        """Read what is there and yield each complete message (TEXT or BINARY); a CLOSE
        from the server, or the connection ending, sets `closed`."""
        try:
            chunk = self.sock.recv(1 << 18)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            yield from self._frames()  # complete ones left unread, if any
            self.closed = True
            return
        self._in += chunk
        yield from self._frames()

    def _frames(self) -> Iterator[tuple[int, bytes]]:
        buf = self._in
        while len(buf) >= 2:
            fin, opcode = buf[0] & 0x80, buf[0] & 0x0F
            n, at = buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, at = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, at = struct.unpack_from("!Q", buf, 2)[0], 10
            if buf[1] & 0x80:  # servers do not mask; tolerate it anyway
                at += 4
            if len(buf) < at + n:
                return
            payload = bytes(buf[at:at + n])
            if buf[1] & 0x80:
                payload = _mask(payload, bytes(buf[at - 4:at]))
            del buf[:at + n]
            if opcode == PING:
                self.send(PONG, payload)
            elif opcode == CLOSE:
                self.closed = True
                return
            elif opcode in (TEXT, BINARY, CONTINUATION):
                if opcode != CONTINUATION:
                    self._opcode = opcode
                self._fragments.append(payload)
                if fin:
                    message = b"".join(self._fragments)
                    self._fragments = []
                    yield self._opcode, message

    def close(self) -> None:
        try:
            self.send(CLOSE, struct.pack("!H", 1000))
            self.sock.setblocking(True)
            self.sock.settimeout(1.0)
            self.sock.sendall(self._out)
        except OSError:
            pass
        self.sock.close()
