"""The shapes the Daemon Management API accepts: one pydantic model per request body or
query string, named after what it is. They reject unknown fields, and the OpenAPI document
(openapi.py) is generated from these same models.

Program fields are not redeclared here: the add, edit and quick-start bodies are derived
from `ProgramSpec`, so a limit changed there (say, the 500 characters of `description`)
changes the API, its validation and its documentation together.

Each model builds its validator at its first use (`defer_build`), not when the API is
imported: a request body's first validation costs 0.5 to 4 ms once, and a pmd whose API
never sees an add, an edit or a quick-start never holds their validators (1.2 MiB of
RSS). Their annotations are not postponed, as in pmd_init.model (its docstring says why).
"""

from typing import Annotated, Any, Literal, Optional

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    create_model,
    field_validator,
)

from ..model.expand import USER_RE
from ..model.spec import ProgramSpec, check_environment, depends_mapping


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Query(BaseModel):
    """Query strings ignore parameters they do not know (cache busters, tracing ids)."""

    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)


def _query_bool(value: Any) -> Any:
    # The extras page: boolean query parameters accept only "true" and "false".
    if isinstance(value, bool):
        return value
    if value == "true":
        return True
    if value == "false":
        return False
    raise ValueError("must be 'true' or 'false'")


QueryBool = Annotated[bool, BeforeValidator(_query_bool)]
Port = Annotated[int, Field(ge=1, le=65535)]
WaitTimeout = Annotated[int, Field(ge=1, le=300, description="seconds, with wait=true")]


def _spec_fields(names: list[str] | None = None, optional: bool = False,
                 skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """ProgramSpec's fields (types, ranges, descriptions) for a request model; `optional`
    makes each one default to None (an edit changes only what it names)."""
    fields: dict[str, Any] = {}
    for name, info in ProgramSpec.model_fields.items():
        if (names is not None and name not in names) or name in skip:
            continue
        if not optional:
            fields[name] = (info.annotation, info)
            continue
        annotation: Any = Optional[info.annotation]  # noqa: UP045 - built at run time
        if info.metadata:
            annotation = Annotated[annotation, *info.metadata]
        fields[name] = (annotation, Field(None, description=info.description))
    return fields


def _autorestart_bool(value: Any) -> Any:
    # ProgramSpec accepts JSON booleans for autorestart; so do the request models.
    return {True: "true", False: "false"}.get(value, value) if isinstance(value, bool) else value


class AddProgramRequest(ProgramSpec):
    """POST /programs/add: a ProgramSpec whose `user` is required (the spec's table);
    `hoody_kit` is accepted but derived from `directory`."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="AddProgramRequest",
                              defer_build=True)

    user: str


_EditBase = create_model(
    "_EditBase", __base__=Request, **_spec_fields(optional=True))


class EditProgramRequest(_EditBase):  # type: ignore[misc, valid-type]
    """POST /programs/edit/{id}: any ProgramSpec field; the ones given replace the stored
    values (environment, port_range and webhooks whole), null puts a field back to its
    default. `id` may be sent back unchanged; `hoody_kit` is derived from `directory`."""

    _autorestart = field_validator("autorestart", mode="before")(
        classmethod(lambda cls, v: _autorestart_bool(v)))
    _depends_on = field_validator("depends_on", mode="before")(
        classmethod(lambda cls, v: depends_mapping(v)))


QUICK_START_FIELDS = [
    "command", "user", "name", "description", "autorestart", "directory", "environment",
    "priority", "delay_seconds", "stdout_logfile", "stderr_logfile", "logs_enabled",
    "log_max_bytes", "log_backups", "display", "terminal_id", "terminal_shell",
    "terminal_interactive",
    # supervisord's knobs ("full supervisord configuration support")
    "exitcodes", "startsecs", "startretries", "stop_signal", "stop_timeout",
    # pmd's: how it says it is ready, run-once tasks, the retry schedule and the start-rate
    # limit (a crash-looping launch may be restarted at once, as a program may)
    "readiness", "oneshot", "backoff", "backoff_max_seconds", "start_limit_burst",
    "start_limit_interval",
    # dotenv files, and how the lines reach pmd's stdout
    "env_file", "log_forward", "hooks",
]

_QuickBase = create_model(
    "_QuickBase", __base__=Request,
    **{k: v for k, v in _spec_fields(QUICK_START_FIELDS).items()
       if k in ("command", "user")},
    **{k: v for k, v in _spec_fields(QUICK_START_FIELDS, optional=True).items()
       if k not in ("command", "user")},
)


class QuickStartRequest(_QuickBase):  # type: ignore[misc, valid-type]
    """POST /quick-start: a temporary program. `name` defaults to quick_<command>_<id>,
    `directory` to the user's home."""

    user: str
    ttl: Annotated[int, Field(ge=1, le=86400, description="seconds until it is stopped")] \
        | None = None
    wait: bool = False
    timeout: WaitTimeout = 30

    _autorestart = field_validator("autorestart", mode="before")(
        classmethod(lambda cls, v: _autorestart_bool(v)))


class StartRequest(Request):
    """POST /programs/{id}/start; a port-range program must name `port`. A program whose
    depends_on does not hold is refused (409) unless `force` skips the wait."""

    port: Port | None = None
    wait: bool = False
    timeout: WaitTimeout = 30
    if_not_running: bool = False
    force: bool = False


class RestartRequest(Request):
    """POST /programs/{id}/restart (pmd's addition): stop, then start again."""

    port: Port | None = None
    wait: bool = False
    timeout: WaitTimeout = 30


class StopRequest(Request):
    """POST /programs/{id}/stop; a port-range program names `port` or `all: true`."""

    port: Port | None = None
    all: bool = False


class ProgramsQuery(Query):
    """GET /programs: the nine filters, all combinable."""

    hoody_kit: QueryBool | None = None
    lazy_load: QueryBool | None = None
    enabled: QueryBool | None = None
    boot: QueryBool | None = None
    port: Port | None = None
    port_from: Port | None = None
    port_to: Port | None = None
    include_status: QueryBool = False
    include_stats: QueryBool = False


class StatusQuery(Query):
    """GET /status/{id}."""

    port: Port | None = None
    include_stats: QueryBool = False


class ProgramQuery(Query):
    """GET /programs/{id}."""

    include_status: QueryBool = False
    include_stats: QueryBool = False


class LogsQuery(Query):
    """GET /programs/{id}/logs and /quick-start/{id}/logs."""

    type: Literal["stdout", "stderr"] = "stdout"
    lines: Annotated[int, Field(ge=0)] = 100
    port: Port | None = None


class LogStreamQuery(Query):
    """GET /programs/{id}/logs/stream: from `offset` (a byte cursor into the current file,
    or the Last-Event-ID header), else from the last `lines` lines."""

    type: Literal["stdout", "stderr"] = "stdout"
    offset: Annotated[int, Field(ge=0)] | None = None
    lines: Annotated[int, Field(ge=0, le=10000)] = 100
    port: Port | None = None


REQUEST_MODELS: list[type[BaseModel]] = [
    AddProgramRequest, EditProgramRequest, QuickStartRequest, StartRequest, RestartRequest,
    StopRequest, ProgramsQuery, StatusQuery, ProgramQuery, LogsQuery, LogStreamQuery,
]


def _argv_word(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL")
    return value


ArgvWord = Annotated[str, AfterValidator(_argv_word)]
WindowSide = Annotated[int, Field(ge=1, le=4096)]


class ExecRequest(Request):
    """POST /exec: run a command now, its streams over the run's WebSocket
    (docs/exec.md). `command` is an argv; `shell: true` runs `/bin/sh -c command[0]` with
    the other words as $0, $1, ... A user that does not exist or a directory that cannot
    be entered is refused before anything runs."""

    command: Annotated[list[ArgvWord], Field(min_length=1, max_length=4096)]
    shell: bool = False
    environment: dict[str, str] = Field(default_factory=dict)
    user: Annotated[str, Field(pattern=USER_RE.pattern)] | None = Field(
        None, description="an account of this system; pmd's own when left out")
    directory: Annotated[str, Field(pattern=r"^/[^\x00]*$")] | None = Field(
        None, description="the working directory; the user's home when left out")
    timeout: Annotated[float, Field(gt=0, le=86400)] | None = Field(
        None, description="seconds; then the command's group gets SIGKILL")
    terminal: bool = Field(False, description="a pseudo-terminal for stdin, stdout and "
                           "stderr (one output stream), sized rows x cols")
    rows: WindowSide = 24
    cols: WindowSide = 80
    stdin: bool = Field(False, description="the client sends input; else /dev/null "
                        "(with a terminal: nothing is typed)")
    detached: bool = Field(False, description="the command outlives its client and is "
                           "listed with the quick-start programs")

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: dict[str, str]) -> dict[str, str]:
        return check_environment(value)

    def argv(self) -> list[str]:
        if self.shell:
            return ["/bin/sh", "-c", self.command[0], *(self.command[1:] or ["sh"])]
        return list(self.command)
