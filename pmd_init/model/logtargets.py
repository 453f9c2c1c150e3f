"""What a log target is: where programs' lines are shipped (syslog, OTLP/HTTP, Loki), which
programs, with what labels, batched how. docs/log-targets.md has the file and its rules.

Each target is validated on its own: one whose address or URL does not parse is a problem
that names it, and the others load. References in labels (`${VAR}`, `${VAR:-default}`,
`$$`: model/expand.py, as in programs) are expanded from pmd's environment (the
container's) when the targets are loaded; one that cannot be is that target's problem.
"""

import re
import urllib.parse
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .expand import ExpansionError, expand

TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")
SYSLOG_SCHEMES = ("udp", "tcp", "unix")
#: Label names pmd sets itself on every line.
RESERVED_LABELS = frozenset({"program", "instance", "stream"})


class LogTargetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["syslog", "otlp", "loki"]
    #: syslog: udp://HOST:PORT, tcp://HOST:PORT (octet counting) or unix:///dev/log.
    address: str | None = None
    #: syslog: "rfc5424", or on a unix:// address "local", the format syslog(3) writes to
    #: /dev/log (what local daemons parse as they come); None: local on unix://, else
    #: rfc5424 (`syslog_format`).
    format: Literal["rfc5424", "local"] | None = None
    #: otlp: the collector's logs URL (http://HOST:4318/v1/logs); loki: its push URL
    #: (http://HOST:3100/loki/api/v1/push).
    url: str | None = None
    #: "all", program names, and "-name" to leave one out ("all" with exclusions).
    programs: Annotated[list[str], Field(min_length=1, max_length=1024)] = Field(
        default_factory=lambda: ["all"])
    #: Loki stream labels, OTLP resource attributes, syslog structured data.
    labels: dict[str, str] = Field(default_factory=dict)
    batch_lines: Annotated[int, Field(ge=1, le=100_000)] = 1000
    batch_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    #: Lines kept while the target is slow or down; past this, lines are dropped.
    buffer_lines: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000
    #: HTTP headers for otlp and loki (a tenant id, an authorization).
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("programs")
    @classmethod
    def _programs(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item.strip("-") or any(c in item for c in "\x00\n\r"):
                raise ValueError(f"invalid program selector {item!r}")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not LABEL_NAME.match(key):
                raise ValueError(f"label name {key!r} must match {LABEL_NAME.pattern}")
            if key in RESERVED_LABELS:
                raise ValueError(f"label {key!r} is set by pmd")
            if any(c in item for c in "\x00\n\r"):
                raise ValueError(f"label {key!r}: no NUL or line break")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not re.match(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$", key) or \
                    any(c in item for c in "\x00\n\r"):
                raise ValueError(f"invalid header {key!r}")
        return value

    def model_post_init(self, _: object) -> None:
        if self.type == "syslog":
            if self.address is None or self.url is not None:
                raise ValueError("a syslog target has `address` (and no `url`)")
            scheme = parse_syslog_address(self.address)[0]
            if self.format == "local" and scheme != "unix":
                raise ValueError("format 'local' is for a unix:// address (/dev/log); "
                                 "over udp:// and tcp:// messages are rfc5424")
            if self.syslog_format == "local" and self.labels:
                raise ValueError("labels: the local format (a unix:// address's default) "
                                 "has no structured data to carry them; set format "
                                 "'rfc5424' if the daemon parses it")
        else:
            if self.url is None or self.address is not None:
                raise ValueError(f"an {self.type} target has `url` (and no `address`)")
            if self.format is not None:
                raise ValueError("format: only a syslog target has one")
            parse_http_url(self.url)

    @property
    def syslog_format(self) -> str:
        """A syslog target's message format: `format`, else local on a unix:// address
        and rfc5424 on the others."""
        if self.format is not None:
            return self.format
        return "local" if (self.address or "").startswith("unix:") else "rfc5424"

    def selects(self, program: str) -> bool:
        if f"-{program}" in self.programs:
            return False
        return "all" in self.programs or program in self.programs


def parse_syslog_address(address: str) -> tuple[str, str, int]:
    """(scheme, host or path, port); ValueError naming what is wrong."""
    parts = urllib.parse.urlsplit(address)
    if parts.scheme not in SYSLOG_SCHEMES:
        raise ValueError(f"address {address!r}: the scheme must be udp://, tcp:// or unix://")
    if parts.scheme == "unix":
        if not parts.path.startswith("/") or parts.netloc:
            raise ValueError(f"address {address!r}: unix:///absolute/path")
        return "unix", parts.path, 0
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or port == 0 or parts.path not in ("", "/"):
        raise ValueError(f"address {address!r}: {parts.scheme}://HOST:PORT")
    return parts.scheme, parts.hostname, port


def parse_http_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path with query); ValueError naming what is wrong."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"url {url!r}: must be http:// or https://")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"url {url!r}: the port is not a number from 1 to 65535") from None
    if not parts.hostname or any(c in url for c in " \x00\r\n"):
        raise ValueError(f"url {url!r}: no host")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path


def parse_log_targets(raw: object, env: Mapping[str, str]
                      ) -> tuple[dict[str, LogTargetSpec], list[str]]:
    """The targets that are valid, labels expanded, and one problem per invalid target,
    each naming it."""
    if raw is None:
        return {}, []
    if isinstance(raw, dict) and "log_targets" in raw:
        raw = raw["log_targets"]
    if not isinstance(raw, dict):
        return {}, ["log_targets: must be an object of named targets"]
    targets: dict[str, LogTargetSpec] = {}
    problems: list[str] = []
    for name, item in raw.items():
        if not TARGET_NAME.match(name):
            problems.append(f"log target {name!r}: the name must match {TARGET_NAME.pattern}")
            continue
        try:
            spec = LogTargetSpec.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = first["msg"].removeprefix("Value error, ")
            problems.append(f"log target '{name}': {where + ': ' if where else ''}{message}")
            continue
        try:
            labels = {k: _label(k, v, env) for k, v in spec.labels.items()}
        except ExpansionError as exc:
            problems.append(f"log target '{name}': {exc}")
            continue
        targets[name] = spec.model_copy(update={"labels": labels})
    return targets, problems


def _label(key: str, value: str, env: Mapping[str, str]) -> str:
    try:
        return expand(value, env)
    except ExpansionError as exc:
        raise ExpansionError(f"labels.{key}: {exc}") from None
