"""What the supervisor refuses, and why. The API maps these to HTTP in one place."""

from __future__ import annotations


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


class Invalid(SupervisorError):
    code = "VALIDATION_ERROR"


class OperationFailed(SupervisorError):
    code = "OPERATION_FAILED"


class Refused(SupervisorError):
    """The request is valid but the program's current state does not allow it (409)."""

    code = "OPERATION_REFUSED"

    def __init__(self, message: str, field: str | None = None,
                 details: dict[str, object] | None = None, code: str | None = None) -> None:
        super().__init__(message, field, details)
        if code is not None:
            self.code = code


class StorageFailed(SupervisorError):
    """What the request asked for could not be written to disk, so it was not done (507):
    the config or state dir is full, read-only or failing. `code` says which."""

    code = "STORAGE_FULL"

    def __init__(self, message: str, code: str, details: dict[str, object] | None = None
                 ) -> None:
        super().__init__(message, None, details)
        self.code = code
