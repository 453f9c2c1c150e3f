"""Who may do what: access levels and the identities of identities.json.

A level is a rung: each one includes those below it. An identity names one caller (an API
key, stored as its SHA-256; a local user on the Unix socket, by uid or gid; a client
certificate, by its SHA-256 fingerprint or its subject's common name) and the level it
gets. Parsing keeps every good entry and names each bad one: a typo in one identity never
takes the others (or the admin key, which is not in this file) away.

Pure: no I/O, nothing of pmd imported (store/identities.py reads the file).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

IDENTITIES_FILE = "identities.json"


class Level(enum.IntEnum):
    """open < metrics < read < operate < admin (docs/access.md)."""

    OPEN = 0  # anyone: /, health, readiness's verdict, whoami
    METRICS = 1  # /metrics
    READ = 2  # lists, status, logs, events, the OpenAPI document
    OPERATE = 3  # start, stop, restart, signal of programs that exist
    ADMIN = 4  # everything: add, edit, remove, enable, quick-start, reset, reexec

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Level:
        if not isinstance(text, str) or text != text.lower() \
                or text.upper() not in cls.__members__:
            raise ValueError(f"unknown level {text!r} (one of "
                             f"{', '.join(x.label for x in GRANTABLE)})")
        return cls[text.upper()]


#: The levels an identity (or default_level) may give: open is what nobody needs one for.
GRANTABLE = (Level.METRICS, Level.READ, Level.OPERATE, Level.ADMIN)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def key_digest(key: str) -> str:
    """What identities.json stores of an API key: its SHA-256, hex. Keys are random
    tokens, not passwords a person picks, so one fast hash is enough to keep the key
    itself out of every file."""
    return hashlib.sha256(key.encode()).hexdigest()


def _fingerprint(value: str) -> str:
    """A SHA-256 fingerprint as openssl prints it (AB:CD:...) or as plain hex."""
    text = value.replace(":", "").lower()
    if not _HEX64.match(text):
        raise ValueError("must be a SHA-256 fingerprint: 64 hex digits, colons allowed")
    return text


class LocalUser(BaseModel):
    """A caller on the Unix socket, by the uid (or the gid) the kernel reports for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    uid: int | None = Field(None, ge=0, le=2**32 - 2)
    gid: int | None = Field(None, ge=0, le=2**32 - 2)

    def model_post_init(self, context: Any, /) -> None:
        if self.uid is None and self.gid is None:
            raise ValueError("local: give uid or gid")


class ClientCert(BaseModel):
    """A TLS client certificate that the client CA signed, by fingerprint or subject CN."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sha256: str | None = None
    cn: str | None = Field(None, min_length=1, max_length=256)

    @field_validator("sha256")
    @classmethod
    def _fingerprint(cls, value: str | None) -> str | None:
        return None if value is None else _fingerprint(value)

    def model_post_init(self, context: Any, /) -> None:
        if self.sha256 is None and self.cn is None:
            raise ValueError("cert: give sha256 or cn")


class IdentitySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    level: str
    #: The API key's SHA-256 (`pmd key-hash` prints it), never the key.
    key_sha256: str | None = None
    local: LocalUser | None = None
    cert: ClientCert | None = None

    @field_validator("level")
    @classmethod
    def _level(cls, value: str) -> str:
        if Level.parse(value) not in GRANTABLE:
            raise ValueError("open is every caller's level: give metrics, read, operate "
                             "or admin")
        return value

    @field_validator("key_sha256")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        if value is not None and not _HEX64.match(value):
            raise ValueError("must be 64 lower-case hex digits (the key's SHA-256, from "
                             "`pmd key-hash`), never the key itself")
        return value

    def model_post_init(self, context: Any, /) -> None:
        if self.key_sha256 is None and self.local is None and self.cert is None:
            raise ValueError("give key_sha256, local or cert")

    @property
    def access(self) -> Level:
        return Level.parse(self.level)


@dataclass(frozen=True)
class Identity:
    name: str
    level: Level
    spec: IdentitySpec


@dataclass(frozen=True)
class Identities:
    """A loaded identities.json: the good entries, and a line for each bad one."""

    entries: tuple[Identity, ...] = ()
    #: The level of a local user on the socket that no identity names (None: nothing).
    default_level: Level | None = None
    problems: tuple[str, ...] = ()
    _keys: tuple[tuple[bytes, Identity], ...] = field(default=(), repr=False)

    @property
    def configured(self) -> bool:
        return bool(self.entries) or self.default_level is not None

    @property
    def local_access(self) -> bool:
        """Users other than root and pmd's own may use the Unix socket."""
        return self.default_level is not None or any(
            i.spec.local is not None for i in self.entries)

    def by_key(self, key: str) -> Identity | None:
        """The identity of a presented API key. Every stored digest is compared, each in
        constant time, so the answer's timing says nothing of which one was close."""
        digest = key_digest(key).encode()
        found = None
        for stored, identity in self._keys:
            if hmac.compare_digest(stored, digest) and found is None:
                found = identity
        return found

    def by_local(self, uid: int, gid: int) -> Identity | None:
        """The identity of a local user: by uid first, then by gid."""
        for identity in self.entries:
            local = identity.spec.local
            if local is not None and local.uid is not None and local.uid == uid:
                return identity
        for identity in self.entries:
            local = identity.spec.local
            if local is not None and local.uid is None and local.gid == gid:
                return identity
        return None

    def by_cert(self, sha256: str, common_name: str | None) -> Identity | None:
        """The identity of a verified client certificate: by fingerprint first, then CN."""
        for identity in self.entries:
            cert = identity.spec.cert
            if cert is not None and cert.sha256 is not None \
                    and hmac.compare_digest(cert.sha256, sha256):
                return identity
        if common_name is None:
            return None
        for identity in self.entries:
            cert = identity.spec.cert
            if cert is not None and cert.sha256 is None and cert.cn == common_name:
                return identity
        return None


def _where(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        loc = ".".join(str(x) for x in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {message}" if loc else message)
    return "; ".join(parts)


def parse_identities(data: object) -> Identities:
    """identities.json's content as Identities. Raises ValueError when the file as a whole
    is not one (not an object, another version): the caller keeps the last good one. A
    bad entry is left out and named in `problems`."""
    if not isinstance(data, Mapping):
        raise ValueError("must be a JSON object")
    unknown = set(data) - {"version", "identities", "default_level"}
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(map(str, unknown)))} "
                         f"(version, identities, default_level)")
    if data.get("version", 1) != 1:
        raise ValueError("version: must be 1")
    entries = data.get("identities", {})
    if not isinstance(entries, Mapping):
        raise ValueError("identities: must be an object of name: identity")
    problems: list[str] = []
    default: Level | None = None
    raw_default = data.get("default_level")
    if raw_default is not None:
        try:
            default = Level.parse(raw_default)
            if default not in GRANTABLE:
                raise ValueError("open is every caller's level")
        except ValueError as exc:
            default = None
            problems.append(f"default_level: {exc}; no default level")
    good: list[Identity] = []
    for name, entry in entries.items():
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(f"{name!r}: a name is 1-64 letters, digits, '.', '_', '@' or "
                            f"'-'; left out")
            continue
        try:
            spec = IdentitySpec.model_validate(entry)
        except ValidationError as exc:
            problems.append(f"{name}: {_where(exc)}; left out")
            continue
        good.append(Identity(name, spec.access, spec))
    keys = tuple((i.spec.key_sha256.encode(), i) for i in good if i.spec.key_sha256)
    return Identities(tuple(good), default, tuple(problems), keys)
