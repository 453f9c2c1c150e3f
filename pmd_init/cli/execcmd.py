"""`pmd exec`: run a command in pmd's container and be its terminal, as `docker exec` is.

The command is created with POST /api/v1/daemon/exec and started by opening its WebSocket
(docs/exec.md). With -t the local terminal goes to raw mode (with -i) and its size is
passed on, then followed on SIGWINCH; without a terminal, Ctrl-C (SIGINT), SIGTERM and
SIGHUP are passed on as signals. `pmd exec` exits with the command's code (128+N when a
signal N ended it), 255 when the stream broke before the command ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import ssl
import sys
import termios
import tty
import urllib.parse
from typing import TYPE_CHECKING, Any, Protocol

from .wsclient import BINARY, TEXT, HandshakeError, WebSocket, handshake

if TYPE_CHECKING:
    import argparse

STDIN, STDOUT, STDERR = 0, 1, 2
#: Stop reading stdin while this much is queued for pmd: pmd's own pace rules.
OUT_HIGH = 1 << 20
#: Passed on as signals when there is no terminal (a terminal sends its own).
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
LOST = 255


class ExecError(Exception):
    pass


class Client(Protocol):
    """What of pmd.py's Client exec uses (named here: pmd.py imports this module)."""

    url: str | None
    socket_path: str
    api_key: str | None
    timeout: float

    @property
    def where(self) -> str: ...

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any: ...


def _window() -> tuple[int, int] | None:
    try:
        size = os.get_terminal_size(STDOUT if os.isatty(STDOUT) else STDIN)
    except OSError:
        return None
    return size.lines, size.columns


def _connect(client: Client, path: str) -> WebSocket:
    headers = {"X-API-Key": client.api_key} if client.api_key else {}
    try:
        if client.url is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(client.timeout)
            sock.connect(client.socket_path)
            host = "localhost"
        else:
            parts = urllib.parse.urlsplit(client.url)
            secure = parts.scheme == "https"
            port = parts.port or (443 if secure else 80)
            sock = socket.create_connection((parts.hostname or "", port), client.timeout)
            if secure:
                sock = ssl.create_default_context().wrap_socket(
                    sock, server_hostname=parts.hostname)
            host = parts.netloc
            path = parts.path.rstrip("/") + path
        rest = handshake(sock, host, path, headers)
    except (OSError, HandshakeError) as exc:
        raise ExecError(f"cannot open the exec stream at {client.where}: {exc}") from None
    return WebSocket(sock, rest)


def run(client: Client, args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise ExecError("nothing to run: pmd exec [options] -- CMD [ARGS...]")
    environment: dict[str, str] = {}
    for pair in args.env:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ExecError(f"--env: expected K=V, not {pair!r}")
        environment[key] = value
    body: dict[str, Any] = {"command": argv, "stdin": args.interactive,
                            "terminal": args.tty}
    if args.tty:
        environment.setdefault("TERM", os.environ.get("TERM") or "xterm")
        window = _window()
        if window is not None:
            body["rows"], body["cols"] = (min(max(v, 1), 4096) for v in window)
    if environment:
        body["environment"] = environment
    for name in ("user", "workdir", "exec_timeout"):
        value = getattr(args, name, None)
        if value is not None:
            body[{"workdir": "directory", "exec_timeout": "timeout"}.get(name, name)] = value
    if args.detach:
        body["detached"] = True
    created = client.call("POST", "/api/v1/daemon/exec", body)
    ws = _connect(client, created["websocket"])
    return Session(ws, interactive=args.interactive, terminal=args.tty).run()


class Session:
    def __init__(self, ws: WebSocket, *, interactive: bool, terminal: bool) -> None:
        self.ws = ws
        self.interactive = interactive
        self.terminal = terminal
        self.code: int | None = None
        self.stdin_open = interactive
        self._signals: list[int] = []

    def run(self) -> int:
        raw = self.terminal and self.interactive and os.isatty(STDIN)
        saved = termios.tcgetattr(STDIN) if raw else None
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        handled = [signal.SIGWINCH] if self.terminal else []
        if not raw:
            handled += FORWARDED
        previous = {s: signal.signal(s, self._note) for s in handled}
        try:
            if saved is not None:
                tty.setraw(STDIN)
            self._loop(wake_r)
        finally:
            if saved is not None:
                termios.tcsetattr(STDIN, termios.TCSADRAIN, saved)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(old_wakeup)
            os.close(wake_r)
            os.close(wake_w)
            self.ws.close()
        if self.code is None:
            print("pmd: the exec stream ended before the command did", file=sys.stderr)
            return LOST
        return self.code

    def _note(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _loop(self, wake: int) -> None:
        # poll, not epoll: stdin may be a regular file, which epoll refuses.
        sel = selectors.PollSelector()
        sel.register(self.ws.sock, selectors.EVENT_READ)
        sel.register(wake, selectors.EVENT_READ)
        reading_stdin = False
        for opcode, payload in self.ws.buffered():  # with the handshake's answer
            self._message(opcode, payload)
        if self.code is not None:
            return
        while not self.ws.closed:
            want_stdin = self.stdin_open and self.ws.pending < OUT_HIGH
            if want_stdin != reading_stdin:
                if want_stdin:
                    sel.register(STDIN, selectors.EVENT_READ)
                else:
                    sel.unregister(STDIN)
                reading_stdin = want_stdin
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.ws.pending else 0)
            sel.modify(self.ws.sock, events)
            for key, mask in sel.select():
                if key.fileobj is self.ws.sock:
                    if mask & selectors.EVENT_WRITE:
                        self.ws.flush()
                    if mask & selectors.EVENT_READ:
                        for opcode, payload in self.ws.receive():
                            self._message(opcode, payload)
                elif key.fileobj == wake:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake, 64)
                    self._pass_signals()
                elif key.fileobj == STDIN:
                    self._stdin()
            self.ws.flush()
            if self.code is not None:
                return

    def _stdin(self) -> None:
        try:
            data = os.read(STDIN, 65536)
        except OSError:
            data = b""
        if data:
            self.ws.send(BINARY, bytes((STDIN,)) + data)
            return
        self.stdin_open = False
        self._control({"type": "eof"})

    def _message(self, opcode: int, payload: bytes) -> None:
        if opcode == BINARY and payload:
            target = STDERR if payload[0] == STDERR else STDOUT
            view = memoryview(payload)[1:]
            while view:
                view = view[os.write(target, view):]
            return
        if opcode != TEXT:
            return
        try:
            message = json.loads(payload)
        except ValueError:
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "exit":
            code = message.get("exit_code")
            if message.get("reason") and message.get("reason") != "timeout":
                print(f"pmd: {message['reason']}", file=sys.stderr)
            self.code = code if isinstance(code, int) else LOST
        elif kind == "error":
            print(f"pmd: {message.get('code')}: {message.get('message')}", file=sys.stderr)

    def _pass_signals(self) -> None:
        signals, self._signals = self._signals, []
        for signum in signals:
            if signum == signal.SIGWINCH:
                window = _window()
                if window is not None:
                    self._control({"type": "resize", "rows": window[0], "cols": window[1]})
            else:
                self._control({"type": "signal", "signal": signal.Signals(signum).name})

    def _control(self, message: dict[str, Any]) -> None:
        self.ws.send(TEXT, json.dumps(message).encode())
