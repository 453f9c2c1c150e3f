"""The API's listening sockets: bound once, then handed from one pmd to the next across
re-exec by descriptor number, like the log pipes.

While the old pmd finishes and the new one starts (a good half second of imports), the
kernel keeps completing connections into the backlog of the socket that stays open, so a
client waits instead of being refused. Descriptors stay close-on-exec at every other
moment: programs never inherit them.

Imports nothing heavy: the re-exec state is read before the HTTP stack is imported.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger("pmd.api")

#: Also handed to asyncio, whose create_server calls listen() again with its own backlog.
#: A re-exec leaves nobody accepting for up to a second: 1024 holds 2 connects a ms.
BACKLOG = 1024
FAMILIES = {"tcp": (socket.AF_INET, socket.AF_INET6), "unix": (socket.AF_UNIX,)}


@dataclass(frozen=True)
class Listener:
    """One listening socket and the address the settings asked for (not the bound one:
    port 0 and host names must compare equal after a re-exec)."""

    kind: str  # "tcp" or "unix"
    address: object  # as JSON has it: [host, port] or the socket path
    sock: socket.socket

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "address": self.address, "fd": self.sock.fileno()}


def wanted(settings: Settings) -> list[tuple[str, Any]]:
    """The listeners the settings ask for, as (kind, address) in the order they are served."""
    want: list[tuple[str, Any]] = []
    if settings.port >= 0:
        want.append(("tcp", [settings.host, settings.port]))
    if settings.socket is not None:
        want.append(("unix", str(settings.socket)))
    return want


def take_handed_over(entries: object) -> list[Listener]:
    """The listening sockets an earlier pmd left open across its exec, close-on-exec again
    at once. An entry whose descriptor is not a listening stream socket is skipped."""
    taken: list[Listener] = []
    if not isinstance(entries, list):
        return taken
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("fd"), int) \
                or entry.get("kind") not in FAMILIES:
            continue
        fd, kind = entry["fd"], entry["kind"]
        try:
            # fileno= reads family and type from the descriptor; EBADF and ENOTSOCK land
            # here, and then the descriptor is not ours to close.
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            log.warning("handed-over %s listener (fd %d) unusable: %s", kind, fd, exc)
            continue
        try:
            os.set_inheritable(fd, False)
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError:
            listening = 0
        if not listening or sock.type != socket.SOCK_STREAM or sock.family not in FAMILIES[kind]:
            log.warning("handed-over fd %d is not a listening %s socket", fd, kind)
            sock.close()
            continue
        sock.setblocking(False)
        taken.append(Listener(kind, entry.get("address"), sock))
    return taken


def open_listeners(settings: Settings, handed_over: Iterable[Listener] = ()) -> list[Listener]:
    """The listeners the settings ask for: the handed-over one where it matches, else a
    new one. Handed-over sockets that no longer match are closed."""
    spare = list(handed_over)
    opened: list[Listener] = []
    try:
        for kind, address in wanted(settings):
            match = next((x for x in spare if x.kind == kind and x.address == address
                          and (kind == "tcp" or _is_socket_file(address))), None)
            if match is not None:
                spare.remove(match)
                opened.append(match)
            elif kind == "tcp":
                opened.append(Listener(kind, address, bind_tcp(settings.host, settings.port)))
            else:
                opened.append(Listener(kind, address, bind_unix(address)))
    except OSError:
        for listener in opened:
            listener.sock.close()
        raise
    finally:
        for listener in spare:
            listener.sock.close()
    return opened


def set_inheritable(listeners: Iterable[Listener], inheritable: bool) -> None:
    for listener in listeners:
        os.set_inheritable(listener.sock.fileno(), inheritable)


def _is_socket_file(path: str) -> bool:
    """A Unix socket whose path was removed meanwhile is unreachable: bind a new one."""
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def bind_unix(path: os.PathLike[str] | str) -> socket.socket:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    try:
        os.unlink(path)  # a stale socket from an earlier run
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # never world-connectable, not even for an instant
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def bind_probe(address: tuple[str, int], handed_over: object = None) -> socket.socket:
    """The probe port's listening socket (blocking: a thread of its own accepts on it):
    the one an earlier pmd handed over across its exec when it is still a listening TCP
    socket bound to that port, else a new one. OSError when the port cannot be had."""
    if isinstance(handed_over, int):
        try:
            sock = socket.socket(fileno=handed_over)
        except OSError as exc:
            log.warning("handed-over probe listener (fd %d) unusable: %s", handed_over, exc)
        else:
            try:
                os.set_inheritable(handed_over, False)
                good = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)) \
                    and sock.family in FAMILIES["tcp"] and sock.type == socket.SOCK_STREAM \
                    and (address[1] == 0 or sock.getsockname()[1] == address[1])
            except OSError:
                good = False
            if good:
                sock.setblocking(True)
                return sock
            sock.close()
    sock = bind_tcp(*address)
    sock.setblocking(True)
    return sock
