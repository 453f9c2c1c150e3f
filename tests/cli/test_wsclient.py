"""The exec client's WebSocket against a server that answers everything at once: a command
that cannot run ends before the client has read the handshake's answer, so its `exit`
message and the CLOSE can come in the same read as the 101. The client must act on them
then, not wait for more on a connection the server holds open."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import threading

import pytest

from pmd_init.cli.execcmd import Session
from pmd_init.cli.wsclient import CLOSE, GUID, TEXT, WebSocket, handshake

HOLD = 3.0  # how long the server keeps the connection open unless the client closes it


def _frame(opcode: int, payload: bytes) -> bytes:
    assert len(payload) < 126
    return bytes((0x80 | opcode, len(payload))) + payload


def _server(sock: socket.socket, frames: bytes, client_closed: threading.Event) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        request += sock.recv(4096)
    key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                 + frames)
    sock.settimeout(HOLD)
    try:
        while sock.recv(4096):  # the client's CLOSE, then its end of the connection
            pass
        client_closed.set()
    except TimeoutError:
        pass
    sock.close()


def _session(frames: bytes) -> tuple[int, bytes, bool]:
    client, server = socket.socketpair()
    client_closed = threading.Event()
    thread = threading.Thread(target=_server, args=(server, frames, client_closed))
    thread.start()
    try:
        rest = handshake(client, "localhost", "/api/v1/daemon/exec/x/ws", {})
        code = Session(WebSocket(client, rest), interactive=False, terminal=False).run()
    finally:
        thread.join()
    return code, rest, client_closed.is_set()


def test_an_exit_that_came_with_the_handshake_is_the_exit_code(
        capfd: pytest.CaptureFixture[str]) -> None:
    exit_message = json.dumps({"type": "exit", "exit_code": 127, "signal": None,
                               "reason": "/no/such/binary: not found"}).encode()
    frames = _frame(TEXT, exit_message) + _frame(CLOSE, struct.pack("!H", 1000))
    code, rest, client_closed = _session(frames)
    assert rest == frames  # the server's frames did come with the 101
    assert code == 127
    assert "/no/such/binary: not found" in capfd.readouterr().err
    # the client closed its side: it did not wait for the server to give up on it
    assert client_closed


def test_an_output_frame_with_the_handshake_is_written_before_the_exit(
        capfd: pytest.CaptureFixture[str]) -> None:
    frames = (_frame(0x2, b"\x01hello\n") + _frame(TEXT, json.dumps(
        {"type": "exit", "exit_code": 3, "signal": None, "reason": None}).encode())
        + _frame(CLOSE, struct.pack("!H", 1000)))
    code, _rest, _closed = _session(frames)
    assert code == 3
    assert capfd.readouterr().out == "hello\n"
