"""What the supervisor and the service layer refuse, and why. No HTTP here: each API family
turns these into answers in one table (pmd_init/api/errors.py).

`Invalid.from_validation` is the one reading of a pydantic ValidationError, for both
families: a field is named by its path in what the client sent, dot-joined.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..model.spec import rule_field

if TYPE_CHECKING:
    from pydantic import ValidationError

    from .instance import Instance


class SupervisorError(Exception):
    code = "OPERATION_FAILED"

    def __init__(self, message: str, field: str | None = None,
                 details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details or {}


class NotFound(SupervisorError):
    code = "NOT_FOUND"


class Conflict(SupervisorError):
    code = "ALREADY_EXISTS"


class PortConflict(Conflict):
    """A port range that overlaps another program's: a clash with what exists, like a
    name already taken, not a malformed request."""

    code = "PORT_CONFLICT"


#: The kinds of validation error a client may want to tell apart; the rest is one kind.
VALIDATION_CODES = {"extra_forbidden": "UNKNOWN_FIELD", "missing": "MISSING_FIELD"}


class Invalid(SupervisorError):
    code = "VALIDATION_ERROR"

    def __init__(self, message: str, field: str | None = None,
                 details: dict[str, object] | None = None, code: str | None = None) -> None:
        super().__init__(message, field, details)
        if code is not None:
            self.code = code

    @classmethod
    def from_validation(cls, exc: ValidationError, data: object = None,
                        rename: Mapping[str, str] | None = None) -> Invalid:
        """The first error names the field and the code; `details.errors` lists one error
        per field, each `{field, type, message}`. `data` is what was validated: with it,
        the names pydantic gives to the members of a union (`port.str`) are left out.
        `rename` maps a top-level field of the validated model to the name the client
        used for it."""
        errors: list[dict[str, object]] = []
        seen = set()
        for error in exc.errors():
            rule = rule_field(error)  # a rule between fields blames one of them
            path = _path(error["loc"], data) or (rule.split(".") if rule else [])
            if path and rename:
                path[0] = rename.get(path[0]) or path[0]
            field = ".".join(path)
            if field in seen:  # a union tried each member: the first one speaks for all
                continue
            seen.add(field)
            errors.append({"field": field, "type": error["type"],
                           "message": error["msg"].removeprefix("Value error, ")})
        first = errors[0]
        kind = str(first["type"])
        message = "unknown field" if kind == "extra_forbidden" else str(first["message"])
        named = str(first["field"])
        said = message if not named or message.startswith(named) else f"{named}: {message}"
        return cls(said, field=named or None,
                   details={"errors": errors}, code=VALIDATION_CODES.get(kind))


def _path(loc: tuple[int | str, ...], data: object) -> list[str]:
    """`loc` without the union members' tags, found by walking `data` along it: a step
    that is neither a key nor an index of what is there is a tag. The last step may be
    a key that is absent (a missing field)."""
    if data is None:
        return [str(step) for step in loc]
    path: list[str] = []
    node: Any = data
    for index, step in enumerate(loc):
        if isinstance(node, Mapping) and step in node:
            node = node[step]
        elif isinstance(node, list | tuple) and isinstance(step, int) \
                and 0 <= step < len(node):
            node = node[step]
        elif isinstance(node, Mapping) and index == len(loc) - 1:
            node = None
        else:
            continue
        path.append(str(step))
    return path


class OperationFailed(SupervisorError):
    code = "OPERATION_FAILED"


class Refused(SupervisorError):
    """The request is valid but the program's current state does not allow it."""

    code = "OPERATION_REFUSED"

    def __init__(self, message: str, field: str | None = None,
                 details: dict[str, object] | None = None, code: str | None = None) -> None:
        super().__init__(message, field, details)
        if code is not None:
            self.code = code


class Disabled(Refused):
    """A start, restart or reload of a program that is disabled."""

    code = "PROGRAM_DISABLED"

    def __init__(self, program_name: str) -> None:
        super().__init__(f"enabled: program '{program_name}' is disabled; enable it first",
                         field="enabled")


class Waiting(Refused):
    """A start by hand of a program whose dependencies do not hold (`force` skips them)."""

    code = "DEPENDENCIES_NOT_READY"

    def __init__(self, program_name: str, unmet: list[Any]) -> None:
        waiting = [str(u) for u in unmet]
        blocked = [u.blocked for u in unmet if u.blocked]
        message = f"'{program_name}' waits for {', '.join(waiting)}"
        if blocked:
            message += f" (blocked: {'; '.join(blocked)})"
        super().__init__(message + "; start it with force: true to skip them",
                         field="force", details={"waiting_for": waiting, "blocked": blocked})


class AlreadyRunning(Refused):
    """A start of an instance that is already STARTING or RUNNING."""

    code = "ALREADY_RUNNING"

    def __init__(self, message: str, instance: Instance, field: str | None = None) -> None:
        super().__init__(message, field)
        self.instance = instance


class StartFailed(SupervisorError):
    """A start that was waited for gave up (FATAL, or stopped and no longer wanted)."""

    code = "START_FAILED"

    def __init__(self, message: str, instance: Instance,
                 details: dict[str, object] | None = None) -> None:
        super().__init__(message, None, details)
        self.instance = instance


class WaitTimeout(SupervisorError):
    """A start that was waited for is not RUNNING yet; it goes on trying."""

    code = "WAIT_TIMEOUT"


class StorageFailed(SupervisorError):
    """What the request asked for could not be written to disk, so it was not done: the
    config or state dir is full, read-only or failing. `code` says which."""

    code = "STORAGE_FULL"

    def __init__(self, message: str, code: str, details: dict[str, object] | None = None
                 ) -> None:
        super().__init__(message, None, details)
        self.code = code
