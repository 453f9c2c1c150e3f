"""Sockets pmd binds and holds for programs (systemd's socket activation, circus's
`[socket:NAME]`): what a program's `sockets` entry is, and the rules of the whole set.

A program lists the sockets it uses. An entry with an address (`port`, or `path`) defines
the socket; an entry with only a `name` uses a socket another program defines. Two
definitions of one name must agree on the address: it is one socket, bound once.
"""

import re
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SOCKET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
OWNER_RE = re.compile(r"^[a-z_][a-z0-9_-]*\$?(:[a-z_][a-z0-9_-]*\$?)?$")
#: A Unix socket path must fit sockaddr_un's 108 bytes, NUL included.
UNIX_PATH_MAX = 107


class SocketSpec(BaseModel):
    """One listening socket: TCP (`host`, `port`, `backlog`, `reuse_port`) or Unix
    (`path`, `mode`, `owner`), or a `name` alone for a socket another program defines."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    name: Annotated[str, Field(min_length=1, max_length=64)]
    host: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    path: Annotated[str, Field(min_length=2, max_length=UNIX_PATH_MAX)] | None = None
    mode: Annotated[int, Field(ge=0, le=0o777)] | None = None
    owner: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    backlog: Annotated[int, Field(ge=1, le=65535)] = 1024
    reuse_port: bool | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SOCKET_NAME_RE.match(value):
            raise ValueError("must be letters, digits and '_', not starting with a digit "
                             "(it becomes PMD_SOCKET_<NAME> and an entry of LISTEN_FDNAMES)")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in "\x00\n\r\t ")):
            raise ValueError("must be an address without spaces or line breaks")
        return value

    @field_validator("owner")
    @classmethod
    def _owner(cls, value: str | None) -> str | None:
        if value is not None and not OWNER_RE.match(value):
            raise ValueError("must be a user name, or user:group")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None:
            if not value.startswith("/"):
                raise ValueError("must be an absolute path")
            if any(c in value for c in "\x00\n\r"):
                raise ValueError("must not contain NUL or a line break")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> "SocketSpec":
        if self.port is not None and self.path is not None:
            raise ValueError(f"socket '{self.name}': give port (TCP) or path (Unix), not both")
        if self.path is None and (self.mode is not None or self.owner is not None):
            raise ValueError(f"socket '{self.name}': mode and owner are for a Unix socket "
                             "(path)")
        if self.port is None and (self.host is not None or self.reuse_port is not None):
            raise ValueError(f"socket '{self.name}': host and reuse_port are for a TCP "
                             "socket (port)")
        return self

    @property
    def kind(self) -> Literal["tcp", "unix"] | None:
        """None: a reference to a socket defined by another program."""
        if self.port is not None:
            return "tcp"
        if self.path is not None:
            return "unix"
        return None

    @property
    def address(self) -> tuple[object, ...]:
        """What makes two definitions the same socket."""
        if self.kind == "tcp":
            return ("tcp", self.host or "0.0.0.0", self.port, bool(self.reuse_port))
        return ("unix", self.path, self.mode, self.owner)

    @property
    def endpoint(self) -> tuple[object, ...]:
        """Where it listens: two sockets may not share it."""
        if self.kind == "tcp":
            return ("tcp", self.host or "0.0.0.0", self.port)
        return ("unix", self.path)

    def describe(self) -> str:
        if self.kind == "tcp":
            return f"{self.host or '0.0.0.0'}:{self.port}"
        return str(self.path)


class SocketError(ValueError):
    """A rule of the whole set of programs is broken; `field` names the entry."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def socket_definitions(
        programs: Iterable[tuple[str, list[SocketSpec] | None]]) -> dict[str, SocketSpec]:
    """Every socket the programs (name, sockets) define, by name; raises SocketError when
    two definitions of one name disagree, or a program uses a name nobody defines."""
    specs = [(name, socks or []) for name, socks in programs]
    defined: dict[str, SocketSpec] = {}
    owners: dict[str, str] = {}
    for program, socks in specs:
        for index, sock in enumerate(socks):
            if sock.kind is None:
                continue
            first = defined.get(sock.name)
            if first is not None and first.model_copy(update={"backlog": 0}) != \
                    sock.model_copy(update={"backlog": 0}):
                raise SocketError(
                    f"sockets.{index}: '{program}' defines socket '{sock.name}' as "
                    f"{sock.describe()}, '{owners[sock.name]}' as {first.describe()}",
                    f"sockets.{index}")
            defined.setdefault(sock.name, sock)
            owners.setdefault(sock.name, program)
    by_address: dict[tuple[object, ...], str] = {}
    for name, sock in defined.items():
        other = by_address.setdefault(sock.endpoint, name)
        if other != name:
            raise SocketError(f"sockets: '{name}' and '{other}' are the same address "
                              f"{sock.describe()}", "sockets")
    for program, socks in specs:
        for index, sock in enumerate(socks):
            if sock.name not in defined:
                raise SocketError(
                    f"sockets.{index}: '{program}' uses socket '{sock.name}', which no "
                    "program defines (give it a port or a path)", f"sockets.{index}")
    return defined
