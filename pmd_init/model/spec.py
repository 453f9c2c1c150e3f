"""What a program is: the validated configuration of one supervised program.

`ProgramSpec` is the shape stored in programs.json and accepted by the add/edit API
(daemon-management-api.txt), plus the supervisord knobs users expect (exitcodes, startsecs,
startretries, stop_signal, stop_timeout) and pmd's own (shutdown_on_exit, health_check,
max_memory_restart, depends_on, readiness, oneshot, backoff). Validation that needs the
live system (does the user exist?) runs only when the validation context asks for it, so a
programs.json that names a missing user still boots and reports a spawn error for that one
program. Whether the names in `depends_on` exist is a rule of the whole set (graph.py).
"""

import os
import pwd
import re
import signal
import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .expand import USER_RE, USER_REFERENCES, ExpansionError, env_files, expand, one_or_more
from .expand import check as check_references
from .hooks import HookSpec
from .policies import (
    ON_FATAL,
    Rlimits,
    StopStep,
    WatchSpec,
    check_cron,
    restart_delay,
)
from .sockets import SocketSpec
from .webhook_rules import check_header_name, check_header_value, check_url

KIT_ROOT = "/hoody/plugins"
STOP_SIGNALS = ("TERM", "INT", "QUIT", "HUP", "KILL", "USR1", "USR2")
TERMINAL_SHELLS = ("bash", "zsh", "fish", "sh", "tmux")
WEBHOOK_EVENTS = (
    "STARTING", "RUNNING", "BACKOFF", "STOPPING", "STOPPED", "EXITED", "FATAL", "UNKNOWN",
    "READY", "all", "*",
)
#: What a dependent waits for (process-compose's conditions, plus `ready`).
CONDITIONS = ("started", "running", "ready", "healthy", "completed", "completed_successfully")
Condition = Literal[CONDITIONS]  # type: ignore[valid-type]
BACKOFF_KINDS = ("linear", "exponential")
#: logs.capture.FORWARD_MODES (model imports nothing of pmd; test_spec holds them equal)
FORWARD_MODES = ("prefixed", "timestamped", "raw", "json", "off")


class RuleError(ValueError):
    """A rule between fields, broken: `field` is the one to blame (the error answer names
    it, as pydantic names the field of a rule on one field)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def rule_field(error: Mapping[str, Any]) -> str | None:
    """The field a RuleError blames, from one of pydantic's `errors()`; None for others."""
    cause = (error.get("ctx") or {}).get("error")
    return cause.field if isinstance(cause, RuleError) else None


def depends_mapping(value: Any) -> Any:
    """`depends_on` as given: a list means `ready` for each name (duplicates kept once)."""
    if isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            raise ValueError("must be a list of program names or {name: condition}")
        return dict.fromkeys(value, "ready")
    return value


def backoff_delay(attempt: int, kind: str, cap: float) -> float:
    """The wait before retry number `attempt` (1, 2, ...): linear is supervisord's 1 s, 2 s,
    3 s ..., exponential 1 s, 2 s, 4 s ...; both capped. One schedule for failed starts and
    for the start-rate limit, so the two never disagree on what "exponential" means."""
    attempt = max(1, attempt)
    if kind == "exponential":
        # 2**64 s is far past any cap: no need to build larger numbers
        return min(cap, 2.0 ** min(attempt - 1, 64))
    return min(cap, float(attempt))


# A start validates programs.json before it spawns anything (pid1/firstboot.py), so the
# build of these models holds back every program of a first start (docs/performance.md):
# - the models that are parts of ProgramSpec (`Part` here, and those of policies.py,
#   hooks.py and sockets.py) build their own validator at their first use alone
#   (`defer_build`): ProgramSpec's validator holds their schemas;
# - default factories are functions, not `dict` or `list`: pydantic reads a factory's
#   signature, and a builtin's is parsed by tokenize (its regex compiled, about 5 ms).


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Part(Model):
    """A part of ProgramSpec: its validator is built at its first use on its own."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class PortRange(Part):
    start: Annotated[int, Field(ge=1, le=65535)]
    end: Annotated[int, Field(ge=1, le=65535)]

    @model_validator(mode="after")
    def _ordered(self) -> "PortRange":
        if self.end < self.start:
            raise ValueError("end must be greater than or equal to start")
        if self.end - self.start >= 1024:
            raise ValueError("a port range holds at most 1024 ports")
        return self

    def ports(self) -> range:
        return range(self.start, self.end + 1)

    def overlaps(self, other: "PortRange") -> bool:
        return self.start <= other.end and other.start <= self.end


class WebhooksSpec(Part):
    """The rules (https, no userinfo, public hosts, safe headers) are webhook_rules.py's; each
    is checked per item so an error names it: `webhooks.urls.0`, `webhooks.headers.X`."""

    enabled: bool = True
    urls: list[Annotated[str, AfterValidator(check_url)]] = Field(
        default_factory=lambda: [], max_length=20)
    events: list[Literal[WEBHOOK_EVENTS]] = Field(default_factory=lambda: ["all"])  # type: ignore[valid-type]
    headers: dict[Annotated[str, AfterValidator(check_header_name)],
                  Annotated[str, AfterValidator(check_header_value)]] = Field(
        default_factory=lambda: {}, max_length=20)
    timeout: Annotated[int, Field(ge=1, le=60)] = 10
    retry: Annotated[int, Field(ge=0, le=5)] = 0

    @field_validator("events")
    @classmethod
    def _events_once(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))  # duplicates are tolerated, and kept once


class HealthCheckSpec(Part):
    """http (url, expected_status), tcp (port) or script (command exits 0)."""

    type: Literal["http", "tcp", "script"]
    url: str | None = None
    expected_status: Annotated[int, Field(ge=100, le=599)] = 200
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    command: str | None = None
    interval: Annotated[float, Field(gt=0, le=3600)] = 30.0
    timeout: Annotated[float, Field(gt=0, le=300)] = 5.0
    retries: Annotated[int, Field(ge=1, le=100)] = 3
    restart_on_unhealthy: bool = False

    @field_validator("url", "host", "command")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        return _no_nul(value)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @model_validator(mode="after")
    def _complete(self) -> "HealthCheckSpec":
        if self.type == "http" and not self.url:
            raise ValueError("an http health check needs url")
        if self.type == "script" and not self.command:
            raise ValueError("a script health check needs command")
        return self


class ReadinessSpec(Part):
    """How a program says it is ready: exactly one source. `notify` is systemd's protocol
    (READY=1 on $NOTIFY_SOCKET), `fd` s6's notification-fd (a newline on fd N), `log_line`
    a regex matched against each line of stdout and stderr, `probe` a health check run
    until its first success. Not ready within `timeout_seconds` is a failed start."""

    notify: Literal[True] | None = None
    fd: Annotated[int, Field(ge=3, le=255)] | None = None
    log_line: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    probe: HealthCheckSpec | None = None
    timeout_seconds: Annotated[float, Field(gt=0, le=86400)] | None = None

    @field_validator("log_line")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "ReadinessSpec":
        given = [name for name in READINESS_SOURCES if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("name exactly one source: notify, fd, log_line or probe "
                             f"(given: {', '.join(given) or 'none'})")
        return self

    @property
    def source(self) -> str:
        return next(name for name in READINESS_SOURCES if getattr(self, name) is not None)


READINESS_SOURCES = ("notify", "fd", "log_line", "probe")


def _no_nul(value: str | None) -> str | None:
    """Text that ends up in an argv, the environment or a socket call: no NUL, no line
    break (the OS refuses the first, the second splits what it is written into)."""
    if value is not None and any(c in value for c in "\x00\n\r"):
        raise ValueError("must not contain NUL, newline or carriage return")
    return value


def _no_quotes(value: str) -> str:
    if '"' in value or "'" in value:
        raise ValueError("must not contain quotes")
    return value


def _absolute(value: str | None) -> str | None:
    if value is None:
        return value
    if "$" in value:
        check_references(value)
    # `${LOG_ROOT}/x.log`: absolute or not once expanded, at start
    if not value.startswith(("/", "${")):
        raise ValueError("must be an absolute path")
    if "\x00" in value or "\n" in value:
        raise ValueError("must not contain NUL or newline")
    return value


def check_environment(value: dict[str, str]) -> dict[str, str]:
    """Names and values a process environment can hold: a name neither empty nor with `=`,
    no NUL anywhere."""
    for key, item in value.items():
        if not key or "=" in key or "\x00" in key or "\x00" in item:
            raise ValueError(f"invalid environment variable name or value: {key!r}")
    return value


class ProgramSpec(Model):
    id: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: Annotated[str, Field(max_length=500)] | None = None
    command: Annotated[str, Field(min_length=1, max_length=65536)]
    user: str | None = None
    enabled: bool = True
    boot: bool = False
    delay_seconds: Annotated[int, Field(ge=0, le=3600)] = 0
    autorestart: Literal["true", "false", "unexpected"] = "unexpected"
    directory: str | None = None
    priority: Annotated[int, Field(ge=1, le=999)] = 999
    stdout_logfile: str | None = None
    stderr_logfile: str | None = None
    logs_enabled: bool = True
    log_max_bytes: Annotated[int, Field(ge=0, le=2**40)] = 5242880
    log_backups: Annotated[int, Field(ge=0, le=100)] = 2
    environment: dict[str, str] = Field(default_factory=lambda: {})
    hoody_kit: bool = False
    port_range: PortRange | None = None
    port_param: str | None = None
    lazy_load: bool = False
    display: str | None = None
    terminal_id: Annotated[int, Field(ge=1, le=65535)] | None = None
    terminal_shell: Literal[TERMINAL_SHELLS] | None = None  # type: ignore[valid-type]
    terminal_interactive: bool | None = None
    webhooks: WebhooksSpec | None = None
    # supervisord's knobs, same names and meaning
    exitcodes: list[Annotated[int, Field(ge=0, le=255)]] = Field(default_factory=lambda: [0])
    startsecs: Annotated[float, Field(ge=0, le=3600)] = 1
    startretries: Annotated[int, Field(ge=-1, le=1000)] = 3  # -1: retry forever
    # one name (then SIGKILL after stop_timeout), or steps sent one after another
    stop_signal: Literal[STOP_SIGNALS] | Annotated[  # type: ignore[valid-type]
        list[StopStep], Field(min_length=1, max_length=8)] = "TERM"
    stop_timeout: Annotated[float, Field(ge=0, le=3600)] = 10
    # pmd's own
    shutdown_on_exit: bool = False
    health_check: HealthCheckSpec | None = None
    max_memory_restart: Annotated[int, Field(ge=1, le=2**60)] | None = None
    # systemd's StartLimitBurst / StartLimitIntervalSec: more starts than the burst within
    # the interval and the next one waits in BACKOFF (0 turns the limit off)
    start_limit_burst: Annotated[int, Field(ge=0, le=100000)] = 5
    start_limit_interval: Annotated[float, Field(gt=0, le=86400)] = 10
    # the wait between failed starts: supervisord's 1 s, 2 s, 3 s ... or 1 s, 2 s, 4 s ...
    backoff: Literal[BACKOFF_KINDS] = "linear"  # type: ignore[valid-type]
    backoff_max_seconds: Annotated[float, Field(ge=1, le=86400)] = 60
    # start only once these hold: {name: condition}; a list means `ready` for each
    depends_on: dict[Annotated[str, Field(min_length=1, max_length=128)], Condition] = \
        Field(default_factory=lambda: {}, max_length=64)
    readiness: ReadinessSpec | None = None
    # a run-once task (a migration): no restart, no startsecs; an exit in exitcodes is success
    oneshot: bool = False
    # dotenv files read at each start, under `environment` (model/expand.py)
    env_file: Annotated[list[str], BeforeValidator(one_or_more),
                        AfterValidator(env_files)] = Field(default_factory=lambda: [],
                                                           max_length=16)
    # how its lines reach pmd's stdout (logs/capture.py); None: PMD_LOG_FORWARD's
    log_forward: Literal[FORWARD_MODES] | None = None  # type: ignore[valid-type]
    # commands run on its state changes (model/hooks.py, supervisor/hooks.py)
    hooks: list[HookSpec] = Field(default_factory=lambda: [], max_length=16)
    # sockets pmd binds and holds, passed with systemd's protocol (model/sockets.py)
    sockets: Annotated[list[SocketSpec], Field(max_length=32)] | None = None
    # "connection": not started at boot; the first connection to one of its sockets does
    start_on: Literal["connection"] | None = None
    idle_stop_after: Annotated[float, Field(gt=0, le=86400)] | None = None
    # the waits before restarts (seconds, the last repeats), instead of `backoff`
    restart_delays: Annotated[list[Annotated[float, Field(ge=0, le=86400)]],
                              Field(min_length=1, max_length=64)] | None = None
    # recycle a running program after max_age seconds, plus up to max_age_jitter
    max_age: Annotated[float, Field(gt=0, le=31536000)] | None = None
    max_age_jitter: Annotated[float, Field(ge=0, le=31536000)] | None = None
    # what a FATAL program does: retried after fatal_retry_after, pmd shut down with its
    # exit code, or its dependents stopped until it runs again
    on_fatal: Literal[ON_FATAL] | None = None  # type: ignore[valid-type]
    fatal_retry_after: Annotated[float, Field(gt=0, le=86400)] | None = None
    # restart on a schedule (cron, the container's time zone), or when files change
    cron_restart: Annotated[str | None, AfterValidator(check_cron)] = None
    watch: WatchSpec | None = None
    # resource limits set in the child (model/policies.py)
    rlimits: Rlimits | None = None

    @field_validator("depends_on", mode="before")
    @classmethod
    def _depends_list(cls, value: Any) -> Any:
        return depends_mapping(value)

    @field_validator("depends_on")
    @classmethod
    def _not_itself(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if info.data.get("name") in value:
            raise ValueError(f"a program cannot depend on itself ({info.data['name']!r})")
        return value

    @field_validator("autorestart", mode="before")
    @classmethod
    def _autorestart_bool(cls, value: Any) -> Any:
        if value is True:
            return "true"
        if value is False:
            return "false"
        return value

    @field_validator("stop_signal", mode="before")
    @classmethod
    def _signal_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.upper().removeprefix("SIG")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        _no_quotes(value)
        if "/" in value or value in (".", "..") or any(
                unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value):
            raise ValueError("must not contain '/', control characters, or be '.' or '..'")
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("command")
    @classmethod
    def _command(cls, value: str) -> str:
        if any(c in value for c in "\n\r\x00"):
            raise ValueError("must not contain newline, carriage return or NUL")
        if not value.strip():
            raise ValueError("must not be empty")
        return check_references(value)

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if "${" in value:  # `${APP_USER}`: checked once expanded, when the program starts
            if not USER_REFERENCES.match(value):
                raise ValueError("must be a user name, with ${NAME} or ${NAME:-default} "
                                 "references in it ([a-z0-9_-] around them)")
            return value
        if not USER_RE.match(value):
            raise ValueError("must match [a-z_][a-z0-9_-]*$?")
        if info.context and info.context.get("check_accounts"):
            try:
                pwd.getpwnam(value)
            except KeyError:
                raise ValueError(f"user '{value}' does not exist on this system") from None
        return value

    @field_validator("display", "port_param")
    @classmethod
    def _os_text(cls, value: str | None) -> str | None:
        return _no_nul(value)

    @field_validator("directory", "stdout_logfile", "stderr_logfile")
    @classmethod
    def _paths(cls, value: str | None) -> str | None:
        return _absolute(value)

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in check_environment(value).items():
            try:
                check_references(item)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _coherent(self) -> "ProgramSpec":
        if self.lazy_load and self.boot:
            raise RuleError("lazy_load", "lazy_load cannot be combined with boot: true")
        if self.port_param is not None:
            if self.port_range is None:
                raise RuleError("port_param", "port_param requires port_range")
            if not self.port_param.strip():
                raise RuleError("port_param", "port_param must not be empty")
        kit = self.directory is not None and (
            self.directory == KIT_ROOT or self.directory.startswith(KIT_ROOT + "/")
        )
        if kit != self.hoody_kit:
            object.__setattr__(self, "hoody_kit", kit)
        if self.readiness is not None and self.readiness.log_line is not None \
                and not self.logs_enabled:
            raise RuleError("readiness.log_line", "readiness.log_line needs logs_enabled: "
                            "pmd reads the lines from the program's log pipes")
        self._check_sockets()
        if self.oneshot:  # it runs once: nothing to restart, nothing to survive
            object.__setattr__(self, "autorestart", "false")
            object.__setattr__(self, "startsecs", 0)
        return self

    def _check_sockets(self) -> None:
        names = [sock.name for sock in self.sockets or ()]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise RuleError(f"sockets.{index}", f"socket '{name}' is listed twice")
        if self.start_on == "connection" and not self.sockets:
            raise RuleError("start_on", "start_on: connection needs sockets (the first "
                            "connection to one of them starts the program)")
        if self.idle_stop_after is not None and not self.on_connection:
            raise RuleError("idle_stop_after", "idle_stop_after needs start_on: connection")
        if self.max_age_jitter is not None and self.max_age is None:
            raise RuleError("max_age_jitter", "max_age_jitter needs max_age")
        if self.watch is not None:
            for index, path in enumerate(self.watch.paths):
                if not path.startswith("/") and self.directory is None:
                    raise RuleError(f"watch.paths.{index}", "a relative path needs directory")
        if self.fatal_retry_after is not None and self.on_fatal != "restart_later":
            raise RuleError("fatal_retry_after", "fatal_retry_after needs on_fatal: restart_later")
        if self.sockets and self.port_range is not None:
            raise RuleError("sockets", "sockets cannot be combined with port_range")
        fd = self.readiness.fd if self.readiness is not None else None
        if fd is not None and 3 <= fd < 3 + len(names):
            raise RuleError("readiness.fd", f"readiness.fd {fd} is taken by the sockets "
                            f"(fds 3 to {2 + len(names)}): choose {3 + len(names)} or above")

    # ---- derived views -------------------------------------------------------------

    @property
    def stop_signum(self) -> int:
        """The first signal of a stop."""
        return self.stop_steps[0][0]

    @property
    def stop_steps(self) -> list[tuple[int, float]]:
        """(signal, seconds to wait for the exit) for each step; SIGKILL after the last."""
        if isinstance(self.stop_signal, str):
            return [(int(getattr(signal, "SIG" + self.stop_signal)), self.stop_timeout)]
        return [(int(getattr(signal, "SIG" + step.signal)), step.wait)
                for step in self.stop_signal]

    @property
    def stop_seconds(self) -> float:
        """How long a stop may take before its SIGKILL: the steps' waits together
        (`stop_timeout` for one signal name)."""
        return float(sum(wait for _, wait in self.stop_steps))

    @property
    def on_connection(self) -> bool:
        """Started by the first connection to one of its sockets, not at boot; a
        `lazy_load` program with sockets is one too."""
        return self.start_on == "connection" or (self.lazy_load and bool(self.sockets))

    @property
    def effective_port_param(self) -> str:
        return self.port_param or "--port"

    def watched_paths(self, env: Mapping[str, str] | None = None) -> list[str]:
        """watch.paths, relative ones taken from `directory`; with `env`, their `${VAR}`s
        and the directory's expanded from it, as a start expands them (a path whose
        reference cannot be expanded is left out: the start reports that one)."""
        if self.watch is None:
            return []
        paths = []
        for path in self.watch.paths:
            try:
                directory = self.directory or "/"
                if env is not None:
                    path, directory = expand(path, env), expand(directory, env)
            except ExpansionError:
                continue
            paths.append(path if path.startswith("/") else os.path.join(directory, path))
        return paths

    def ports(self) -> list[int | None]:
        return list(self.port_range.ports()) if self.port_range else [None]

    def retry_delay(self, attempt: int) -> float:
        """The wait before the `attempt`th retry of a failed start: `restart_delays`
        when given, else the `backoff` schedule."""
        if self.restart_delays:
            return restart_delay(self.restart_delays, attempt)
        return backoff_delay(attempt, self.backoff, self.backoff_max_seconds)

    def expects_exit(self, code: int | None) -> bool:
        """The one rule for an expected exit, which decides an "unexpected" restart and
        what both API families call a clean stop: a code listed in `exitcodes`, from a
        process that exited by itself. A death by signal N is reported as 128+N, so 128
        and above is never expected, even when listed; an exit whose code is unknown (a
        process pmd adopted and could not wait for) is not expected either."""
        return code is not None and code < 128 and code in self.exitcodes

    def to_json(self) -> dict[str, Any]:
        """The stored and served form: defaults included, None fields left out."""
        return self.model_dump(mode="json", exclude_none=True)


#: The fields whose default is a container pydantic makes anew for each spec.
CONTAINER_DEFAULTS = ("environment", "depends_on", "env_file", "hooks", "exitcodes")


def share_alike(specs: list[ProgramSpec]) -> None:
    """Let the specs of one document share what they hold alike: the set of the fields
    given (pydantic's, one a spec) and the containers of defaults (an empty
    `environment`, `exitcodes` [0] ...). Every reader sees what it saw: a spec is frozen,
    pmd changes no container a spec holds (a model_copy shares them with its copy
    already), and model_copy(update=...) adds to a copy of the set of fields given, not
    to the set (tests/test_store.py holds pydantic to that). 0.8 KiB a program of the
    2.4 KiB a spec held (docs/performance.md)."""
    given_sets: dict[frozenset[str], set[str]] = {}
    defaults = {name: ProgramSpec.model_fields[name].get_default(call_default_factory=True)
                for name in CONTAINER_DEFAULTS}
    for spec in specs:
        given = spec.model_fields_set
        object.__setattr__(spec, "__pydantic_fields_set__",
                           given_sets.setdefault(frozenset(given), given))
        held = spec.__dict__
        for name, default in defaults.items():
            if held[name] == default:
                held[name] = default


def current_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
