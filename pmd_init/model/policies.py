"""How a program is stopped, restarted and limited, beyond supervisord's knobs: a list of
stop signals, an explicit list of restart delays, recycling by age with jitter, and
resource limits applied in the child. Imports nothing of pmd but the signal names.
"""

import resource
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: The signals a stop step may send (supervisord's stopsignal names, KILL aside: it
#: follows the last step anyway).
STEP_SIGNALS = ("TERM", "INT", "QUIT", "HUP", "USR1", "USR2")
#: rlimits a program may set, each the name of RLIMIT_<NAME> in lower case.
RLIMITS = ("nofile", "nproc", "as", "core", "cpu")
UNLIMITED = "unlimited"
#: What a program that reached FATAL does (supervisor/fatal.py).
ON_FATAL = ("restart_later", "stop_container", "stop_dependents")


class StopStep(BaseModel):
    """One step of a stop: send `signal` to the process group, then wait up to `wait`
    seconds for it to exit before the next step (SIGKILL after the last)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    signal: Literal[STEP_SIGNALS]  # type: ignore[valid-type]
    wait: Annotated[float, Field(ge=0, le=3600)] = 10

    @model_validator(mode="before")
    @classmethod
    def _signal_name(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("signal"), str):
            value = {**value, "signal": value["signal"].upper().removeprefix("SIG")}
        return value


RlimitValue = Annotated[int, Field(ge=0, le=2**63 - 1)] | Literal["unlimited"]


class Rlimit(BaseModel):
    """A soft and a hard limit; a single value in programs.json sets both."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    soft: RlimitValue
    hard: RlimitValue

    @model_validator(mode="before")
    @classmethod
    def _single(cls, value: Any) -> Any:
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            return {"soft": value, "hard": value}
        return value

    @model_validator(mode="after")
    def _ordered(self) -> "Rlimit":
        if _number(self.soft) > _number(self.hard):
            raise ValueError("soft must not be above hard")
        return self

    def pair(self) -> tuple[int, int]:
        return _number(self.soft), _number(self.hard)


def _number(value: int | str) -> int:
    return resource.RLIM_INFINITY if value == UNLIMITED else int(value)


class Rlimits(BaseModel):
    """Resource limits set in the child before exec (systemd's LimitNOFILE= ...): each a
    number or "unlimited" (soft and hard alike) or {soft, hard}."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True,
                              serialize_by_alias=True, validate_by_name=True,
                              validate_by_alias=True)

    nofile: Rlimit | None = None
    nproc: Rlimit | None = None
    as_: Rlimit | None = Field(default=None, alias="as")
    core: Rlimit | None = None
    cpu: Rlimit | None = None

    @model_validator(mode="after")
    def _within_pmds(self) -> "Rlimits":
        check_rlimits(self.items())
        return self

    def items(self) -> dict[str, Rlimit]:
        """name (as RLIMIT_<NAME> has it, lower case) -> limit, for the ones given."""
        return {name: limit for name in RLIMITS
                if (limit := getattr(self, "as_" if name == "as" else name)) is not None}


def check_rlimits(limits: dict[str, Rlimit]) -> dict[str, Rlimit]:
    """A limit above pmd's own hard limit cannot be set in a child that runs as another
    user (raising a hard limit needs CAP_SYS_RESOURCE, and the child has dropped it by
    then): refused here, at add/edit or when programs.json is read, not at the spawn."""
    for name, limit in limits.items():
        _, pmd_hard = resource.getrlimit(rlimit_number(name))
        if pmd_hard == resource.RLIM_INFINITY:
            continue
        soft, hard = limit.pair()
        for which, value in (("hard", hard), ("soft", soft)):
            if value == resource.RLIM_INFINITY or value > pmd_hard:
                raise ValueError(f"{name}: {which} {_show(value)} is above pmd's own hard "
                                 f"limit {pmd_hard}")
    return limits


def rlimit_number(name: str) -> int:
    return int(getattr(resource, "RLIMIT_" + name.upper()))


def _show(value: int) -> str:
    return UNLIMITED if value == resource.RLIM_INFINITY else str(value)


class WatchSpec(BaseModel):
    """Restart the program when a file under `paths` changes (inotify; directories are
    watched with their subdirectories), unless its name or path matches a glob of
    `ignore`; changes within `debounce` seconds of each other are one change."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    paths: Annotated[list[Annotated[str, Field(min_length=1, max_length=4096)]],
                     Field(min_length=1, max_length=32)]
    ignore: Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]],
                      Field(max_length=64)] = Field(default_factory=lambda: [])
    debounce: Annotated[float, Field(ge=0, le=3600)] = 0.5

    @field_validator("paths", "ignore")
    @classmethod
    def _text(cls, value: list[str]) -> list[str]:
        for index, item in enumerate(value):
            if any(c in item for c in "\x00\n\r"):
                raise ValueError(f"item {index} must not contain NUL or a line break")
        return value


def check_cron(value: str | None) -> str | None:
    """Five fields (minute hour day-of-month month day-of-week), or six with seconds
    last; croniter parses it (imported here: only programs with a schedule pay for it)."""
    if value is None:
        return value
    fields = value.split()
    if len(fields) not in (5, 6):
        raise ValueError("must have five fields (minute hour day month weekday), or six "
                         "with seconds last")
    from croniter import croniter

    if not croniter.is_valid(value):
        raise ValueError(f"not a valid cron expression: {value!r}")
    return value


def restart_delay(delays: list[float], attempt: int) -> float:
    """The wait before restart number `attempt` (1, 2, ...): the list's entry, the last
    one repeating."""
    return delays[min(max(attempt, 1), len(delays)) - 1]
