"""What the PM2-style process API reads from its requests: a JSON body, PM2's spellings of
ports and memory sizes, and the body of POST /api/processes as a ProgramSpec."""

from __future__ import annotations

import os
import shlex
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sanic import Request

from ..model.expand import USER_RE
from ..model.hooks import HookSpec
from ..model.spec import (
    BACKOFF_KINDS,
    FORWARD_MODES,
    Condition,
    HealthCheckSpec,
    PortRange,
    ProgramSpec,
    ReadinessSpec,
    current_user,
    depends_mapping,
)
from ..supervisor.errors import Invalid
from .errors import ApiError
from .jsondata import exact_numbers

#: ProgramSpec's fields by the names this API gives them, for the errors it reports.
PM2_NAMES = {"command": "script", "environment": "env", "directory": "cwd",
             "startretries": "max_restarts", "startsecs": "min_uptime",
             "stop_timeout": "kill_timeout", "port_range": "port"}


def bad_request(message: str, field: str | None = None) -> Invalid:
    """Raised like the service's own refusals, so one table answers both."""
    return Invalid(message, field)


def json_body(request: Request) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        body = request.json
    except Exception:  # noqa: BLE001 - sanic raises its own BadRequest
        raise bad_request("the request body is not valid JSON") from None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


MEMORY_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
                "G": 1 << 30, "GB": 1 << 30}


def parse_memory(value: int | str) -> int:
    """512M, 1G, 300K (PM2's spelling) or a number of bytes."""
    if isinstance(value, int):
        return value
    text = value.strip().upper()
    digits = text.rstrip("KMGB")
    unit = text[len(digits):]
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 20 or \
            unit not in MEMORY_UNITS:
        raise ValueError("must be bytes, or a number with K, M or G (512M)")
    return int(digits) * MEMORY_UNITS[unit]


def parse_port(text: str | int) -> tuple[int, int]:
    """"3000" or "4000-4003" (the document's spelling)."""
    raw = str(text).strip()
    start, sep, end = (part.strip() for part in raw.partition("-"))
    parts = [start, end] if sep else [start]
    if not all(p.isascii() and p.isdigit() and len(p) <= 5 for p in parts):
        raise ValueError('must be a port ("3000") or a range ("4000-4003")')
    first = int(start)
    last = int(end) if sep else first
    if not (1 <= first <= 65535 and 1 <= last <= 65535) or last < first:
        raise ValueError('must be a port ("3000") or a range ("4000-4003") within 1-65535')
    return first, last


class CreateProcess(BaseModel):
    """POST /api/processes: the document's curl example, plus the knobs PM2 users expect."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=128)]
    script: Annotated[str, Field(min_length=1, max_length=65536)]
    args: list[str] = Field(default_factory=list)
    port: str | int | None = None
    env: dict[str, str] = Field(default_factory=dict)
    instances: Annotated[int, Field(ge=1, le=1024)] | None = None
    cwd: str | None = None
    user: str | None = None
    autorestart: bool = True
    max_memory_restart: int | str | None = None
    health_check: HealthCheckSpec | None = None
    max_restarts: Annotated[int, Field(ge=-1, le=1000)] | None = None  # -1: forever
    min_uptime: Annotated[float, Field(ge=0, le=3600)] | None = None
    kill_timeout: Annotated[float, Field(ge=0, le=3600)] | None = None
    description: Annotated[str, Field(max_length=500)] | None = None
    depends_on: dict[str, Condition] | None = None
    readiness: ReadinessSpec | None = None
    oneshot: bool = False
    backoff: Literal[BACKOFF_KINDS] | None = None  # type: ignore[valid-type]
    backoff_max_seconds: Annotated[float, Field(ge=1, le=86400)] | None = None
    env_file: list[str] | str | None = None  # dotenv files, read at each start
    log_forward: Literal[FORWARD_MODES] | None = None  # type: ignore[valid-type]
    hooks: list[HookSpec] | None = None  # local event hooks (model/hooks.py)

    @field_validator("depends_on", mode="before")
    @classmethod
    def _depends_list(cls, value: Any) -> Any:
        return depends_mapping(value)

    @field_validator("env", mode="before")
    @classmethod
    def _env_text(cls, value: Any) -> Any:
        if isinstance(value, dict):  # {"PORT": 3000} is common: numbers become text
            return {k: str(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                    else v for k, v in value.items()}
        return value

    def command(self) -> str:
        if not self.args and any(c.isspace() for c in self.script):
            return self.script  # a whole command line, as `pmd start "node server.js"`
        return shlex.join([self.script, *self.args])

    def to_spec(self) -> ProgramSpec:
        env = dict(self.env)
        port_range = None
        if self.port is not None:
            try:
                first, last = parse_port(self.port)
            except ValueError as exc:
                raise bad_request(f"port: {exc}", "port") from None
            if first == last and (self.instances or 1) == 1:
                env["PORT"] = str(first)  # one port: the PORT variable, argv untouched
            else:
                port_range = PortRange(start=first, end=last)
        count = 1 if port_range is None else port_range.end - port_range.start + 1
        if self.instances is not None and self.instances != count:
            raise bad_request(f"instances: {self.instances} instances need a port range of "
                              f"{self.instances} ports (one port each)", "instances")
        memory = None
        if self.max_memory_restart is not None:
            try:
                memory = parse_memory(self.max_memory_restart)
            except ValueError as exc:
                raise bad_request(f"max_memory_restart: {exc}", "max_memory_restart") \
                    from None
        user = self.user or default_user()
        if user is not None and os.geteuid() != 0 and user != current_user():
            raise ApiError(403, "PERMISSION_DENIED",
                           f"pmd does not run as root: it cannot start programs as '{user}'",
                           "user")
        fields: dict[str, Any] = {
            "name": self.name, "command": self.command(), "user": user,
            "directory": self.cwd, "environment": env, "port_range": port_range,
            "autorestart": "true" if self.autorestart else "false",
            "max_memory_restart": memory, "health_check": self.health_check,
            "description": self.description, "boot": True, "enabled": True,
            "depends_on": self.depends_on, "readiness": self.readiness,
            "oneshot": self.oneshot or None, "backoff": self.backoff,
            "backoff_max_seconds": self.backoff_max_seconds, "env_file": self.env_file,
            "log_forward": self.log_forward, "hooks": self.hooks,
        }
        if self.max_restarts is not None:
            fields["startretries"] = self.max_restarts
        if self.min_uptime is not None:
            fields["startsecs"] = self.min_uptime
        if self.kill_timeout is not None:
            fields["stop_timeout"] = self.kill_timeout
        fields = {k: v for k, v in fields.items() if v is not None}
        try:
            return ProgramSpec.model_validate(fields, context={"check_accounts": True})
        except ValidationError as exc:
            raise Invalid.from_validation(exc, fields, rename=PM2_NAMES) from None


#: A port or a range of ports as text, each 1-65535 (leading zeros allowed, five ASCII
#: digits at most), as parse_port reads it.
_PORT = (r"(?=[0-9]{1,5}(?![0-9]))0*"
         r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])")
PORT_TEXT = rf"^\s*{_PORT}\s*(?:-\s*{_PORT}\s*)?$"


class MoveRequest(BaseModel):
    """The body of POST /api/processes/{id}/restart and /reload, for the OpenAPI document:
    `port` moves the program to other ports; other fields are ignored (parse_move)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    port: Annotated[int, Field(ge=1, le=65535)] | Annotated[
        str, Field(json_schema_extra={"pattern": PORT_TEXT})] | None = None


class ProcessesQuery(BaseModel):
    """GET /api/processes, for the OpenAPI document: both filters are exact matches."""

    status: str | None = None
    name: str | None = None


class ProcessLogsQuery(BaseModel):
    """GET /api/processes/{id}/logs, for the OpenAPI document (the handler reads the
    same two parameters with the same limits)."""

    lines: Annotated[int, Field(ge=1, le=10000)] = 20
    type: Literal["out", "error", "all"] = "all"


def parse_create(body: dict[str, Any]) -> ProgramSpec:
    """The body of POST /api/processes, as the program it creates."""
    try:  # strict, as the Daemon API's bodies: a JSON value of the field's own type
        request = CreateProcess.model_validate(exact_numbers(body), strict=True)
    except ValidationError as exc:
        raise Invalid.from_validation(exc, body) from None
    return request.to_spec()


def parse_move(body: dict[str, Any]) -> tuple[int, int] | None:
    """The `port` of a restart or reload body: the ports the program moves to."""
    if body.get("port") is None:
        return None
    try:
        return parse_port(body["port"])
    except ValueError as exc:
        raise bad_request(f"port: {exc}", "port") from None


def default_user() -> str | None:
    """pmd's own user, by name, when it has one a program spec can name."""
    name = current_user()
    return name if USER_RE.match(name) else None
