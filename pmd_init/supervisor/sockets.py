"""The listening sockets pmd binds for programs and holds for them.

Bound once, by name, before any program that uses them starts (as root, so a program that
runs as another user can serve port 80); kept open across the programs' restarts, a HUP
reload and `pmd reexec` (handed to the next pmd by descriptor number, like the API's own
listeners); closed when no program names them any more. While nobody accepts (a program
restarting, pmd re-executing) the kernel keeps completing connections into the backlog,
so a client waits instead of being refused.

pmd never accepts on these sockets, and never makes them non-blocking: the open file
description is shared with the programs, which expect a blocking socket (systemd passes
them so). A program that starts on its first connection is woken by the socket becoming
readable (`watch`), and the connection stays in the backlog for the program to accept.

A socket that cannot be bound is a problem of its own (`problems`), named in pmd's status:
the programs that need it fail to start with that reason, the others boot.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import socket
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..model.sockets import SocketSpec, socket_definitions
from .spawn import SpawnError

log = logging.getLogger("pmd.sockets")


@dataclass(slots=True)
class Held:
    spec: SocketSpec
    sock: socket.socket
    #: Called once when a connection waits, then forgotten (start on connection).
    on_connection: Callable[[], None] | None = None


class SocketSet:
    """Every socket pmd holds for programs, by name."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.held: dict[str, Held] = {}
        #: name -> why it could not be bound (shown in status; its programs do not start).
        self.problems: dict[str, str] = {}

    # ---- what the programs define ----------------------------------------------------

    def sync(self, programs: Iterable[tuple[str, list[SocketSpec] | None]]) -> None:
        """Hold exactly the sockets these programs define: bind new ones, keep the ones
        that did not change (the same descriptor, its backlog intact), close the rest."""
        wanted = socket_definitions(programs)
        for name in [n for n in self.held if n not in wanted or
                     wanted[n].address != self.held[n].spec.address]:
            self._close(name)
        for name in [n for n in self.problems if n not in wanted]:
            del self.problems[name]
        for name, spec in wanted.items():
            if name in self.held:
                continue
            try:
                self.held[name] = Held(spec, bind(spec))
                self.problems.pop(name, None)
            except (OSError, ValueError) as exc:
                self.problems[name] = f"socket '{name}' ({spec.describe()}): {_reason(exc)}"
                log.error("cannot bind %s", self.problems[name])

    def try_bind(self, specs: Iterable[SocketSpec]) -> None:
        """Bind the definitions that are new, now (add/edit): raises ValueError naming the
        socket when one cannot be bound, and then holds nothing new. Through the API a
        Unix socket's folder must exist and its path must be free: pmd runs as root, and
        the API must not become a way to replace another service's socket or to make
        folders anywhere (programs.json, written by the admin, may do both)."""
        bound: list[str] = []
        try:
            for spec in specs:
                if spec.kind is None:
                    continue
                held = self.held.get(spec.name)
                if held is not None and held.spec.address == spec.address:
                    continue
                if held is not None:  # a new address for the name: bound when applied
                    if spec.path is not None and spec.path == held.spec.path:
                        continue  # a new mode or owner: the same file, bound anew
                    if spec.path is not None:
                        _check_new_path(spec.path)
                    probe = bind(spec)
                    probe.close()
                    _unlink_socket(spec)
                    continue
                try:
                    if spec.path is not None:
                        _check_new_path(spec.path)
                    self.held[spec.name] = Held(spec, bind(spec))
                except (OSError, ValueError) as exc:
                    raise ValueError(f"socket '{spec.name}' ({spec.describe()}) cannot be "
                                     f"bound: {_reason(exc)}") from None
                bound.append(spec.name)
                self.problems.pop(spec.name, None)
        except BaseException:
            for name in bound:
                self._close(name)
            raise

    def fds_for(self, specs: list[SocketSpec]) -> list[tuple[str, int]]:
        """The (name, descriptor) of each socket a program lists, in its order; a
        SpawnError naming the socket when one is not held."""
        fds = []
        for spec in specs:
            held = self.held.get(spec.name)
            if held is None:
                raise SpawnError(self.problems.get(spec.name)
                                 or f"socket '{spec.name}' is not bound")
            fds.append((spec.name, held.sock.fileno()))
        return fds

    def _close(self, name: str) -> None:
        held = self.held.pop(name)
        if held.on_connection is not None:
            self.loop.remove_reader(held.sock.fileno())
        held.sock.close()
        _unlink_socket(held.spec)

    def close(self) -> None:
        for name in list(self.held):
            self._close(name)

    # ---- start on connection -----------------------------------------------------------

    def watch(self, names: Iterable[str], on_connection: Callable[[], None]) -> bool:
        """Call `on_connection` once, when any of these sockets has a connection waiting
        (it stays in the backlog for the program). False when none of them is held."""
        fired = False
        watched: list[Held] = []

        def connected() -> None:
            nonlocal fired
            for held in watched:
                if held.on_connection is not None:
                    self.loop.remove_reader(held.sock.fileno())
                    held.on_connection = None
            if not fired:
                fired = True
                on_connection()

        for name in names:
            held = self.held.get(name)
            if held is None:
                continue
            if held.on_connection is not None:
                self.loop.remove_reader(held.sock.fileno())
            held.on_connection = connected
            self.loop.add_reader(held.sock.fileno(), connected)
            watched.append(held)
        return bool(watched)

    def unwatch(self, names: Iterable[str]) -> None:
        for name in names:
            held = self.held.get(name)
            if held is not None and held.on_connection is not None:
                self.loop.remove_reader(held.sock.fileno())
                held.on_connection = None

    def busy(self, names: Iterable[str]) -> bool:
        """Has any of these sockets a connection open or waiting to be accepted? Read
        from the kernel's tables of this network namespace (the programs' too)."""
        ports: set[int] = set()
        paths: set[str] = set()
        for name in names:
            held = self.held.get(name)
            if held is None:
                continue
            if held.spec.port is not None:
                ports.add(held.spec.port)
            elif held.spec.path is not None:
                paths.add(held.spec.path)
        return bool(ports and _tcp_busy(ports)) or bool(paths and _unix_busy(paths))

    # ---- re-exec -----------------------------------------------------------------------

    def hand_over(self) -> list[dict[str, Any]]:
        """What the next pmd needs to take the sockets back; their descriptors are made
        inheritable by `inheritable_fds`' caller just before the exec."""
        for held in self.held.values():
            if held.on_connection is not None:
                self.loop.remove_reader(held.sock.fileno())
        return [{"name": name, "spec": held.spec.model_dump(mode="json"),
                 "fd": held.sock.fileno()} for name, held in self.held.items()]

    def fds(self) -> list[int]:
        return [held.sock.fileno() for held in self.held.values()]

    def take_over(self, entries: object) -> None:
        """The sockets an earlier pmd held, close-on-exec again at once. An entry whose
        descriptor is not a listening stream socket is skipped (and not closed: it is not
        ours)."""
        if not isinstance(entries, list):
            return
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("fd"), int):
                continue
            try:
                spec = SocketSpec.model_validate(entry.get("spec"))
                sock = socket.socket(fileno=entry["fd"])
            except (OSError, ValueError) as exc:
                log.warning("handed-over socket %r unusable: %s", entry.get("name"), exc)
                continue
            try:
                os.set_inheritable(sock.fileno(), False)
                listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            except OSError:
                listening = 0
            if not listening or sock.type != socket.SOCK_STREAM:
                log.warning("handed-over fd %d is not a listening socket", entry["fd"])
                sock.detach()
                continue
            self.held[spec.name] = Held(spec, sock)


def bind(spec: SocketSpec) -> socket.socket:
    if spec.kind == "tcp":
        host = spec.host or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if spec.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, spec.port))
            sock.listen(spec.backlog)
        except BaseException:
            sock.close()
            raise
        return sock
    assert spec.path is not None
    uid, gid = _owner(spec.owner)
    os.makedirs(os.path.dirname(spec.path) or "/", mode=0o755, exist_ok=True)
    _unlink_stale(spec.path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        mode = 0o666 if spec.mode is None else spec.mode
        old = os.umask(0o177)  # nobody connects before the mode is what was asked
        try:
            sock.bind(spec.path)
        finally:
            os.umask(old)
        if uid != -1 or gid != -1:
            os.chown(spec.path, uid, gid)
        os.chmod(spec.path, mode)
        sock.listen(spec.backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _check_new_path(path: str) -> None:
    if not os.path.isdir(os.path.dirname(path) or "/"):
        raise ValueError(f"folder {os.path.dirname(path)} does not exist")
    if os.path.lexists(path):
        raise ValueError(f"{path} exists already")


def _owner(owner: str | None) -> tuple[int, int]:
    if owner is None:
        return -1, -1
    user, _, group = owner.partition(":")
    try:
        entry = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    except KeyError as exc:
        raise ValueError(f"owner {owner}: no such user or group") from exc
    return entry.pw_uid, gid


def _unlink_stale(path: str) -> None:
    """A socket file left by an earlier run is replaced; any other file is not touched."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def _unlink_socket(spec: SocketSpec) -> None:
    if spec.path is not None:
        try:
            _unlink_stale(spec.path)
        except OSError:
            pass


#: /proc/net/tcp's st column: 01 ESTABLISHED, 0A LISTEN (whose rx_queue is the number of
#: connections waiting to be accepted).
TCP_ESTABLISHED, TCP_LISTEN = "01", "0A"
#: /proc/net/unix's St column for a connected socket.
UNIX_CONNECTED = "03"


def _tcp_busy(ports: set[int]) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows, None)
                for row in rows:
                    fields = row.split()
                    if len(fields) < 5:
                        continue
                    port = int(fields[1].rsplit(":", 1)[1], 16)
                    if port not in ports:
                        continue
                    if fields[3] == TCP_ESTABLISHED:
                        return True
                    if fields[3] == TCP_LISTEN and int(fields[4].split(":")[1], 16) > 0:
                        return True
        except (OSError, ValueError, IndexError):
            continue
    return False


def _unix_busy(paths: set[str]) -> bool:
    try:
        with open("/proc/net/unix") as rows:
            next(rows, None)
            for row in rows:
                fields = row.split()
                if len(fields) >= 8 and fields[5] == UNIX_CONNECTED and fields[7] in paths:
                    return True
    except OSError:
        pass
    return False


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
