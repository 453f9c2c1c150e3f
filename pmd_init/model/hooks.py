"""`hooks`: commands a program's state changes run on this machine (supervisord's event
listeners, s6's finish scripts), as a program's spec states them. supervisor/hooks.py
runs them."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: The events a hook may name: the states an instance enters, READY, and all of them.
HOOK_EVENTS = (
    "STARTING", "RUNNING", "BACKOFF", "STOPPING", "STOPPED", "EXITED", "FATAL", "UNKNOWN",
    "READY", "all", "*",
)


class HookSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    events: Annotated[list[Literal[HOOK_EVENTS]],  # type: ignore[valid-type]
                      Field(min_length=1, max_length=16)]
    #: run by /bin/sh -c, with the event as JSON on stdin and in PMD_EVENT_* variables
    command: Annotated[str, Field(min_length=1, max_length=4096)]
    #: then the hook's process group is killed (and the run counted as `timeout`)
    timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 10

    @field_validator("command")
    @classmethod
    def _command(cls, value: str) -> str:
        if any(c in value for c in "\x00\n\r") or not value.strip():
            raise ValueError("must not be blank or contain NUL, newline or carriage return")
        return value

    @field_validator("events")
    @classmethod
    def _once(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))
