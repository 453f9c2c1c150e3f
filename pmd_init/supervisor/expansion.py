"""What a program's configuration says once `${VAR}` references are expanded and its
`env_file`s are read: done at each start, so an edited env file counts at the next one.

The syntax is model/expand.py's; the files are read with python-dotenv's own parser, so
that a file means here what it means to docker compose and to python-dotenv (imported on
the first start of a program with an `env_file`; a pmd without one never loads it).
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..model.expand import EXPANDED_FIELDS, USER_RE, ExpansionError, expand
from .spawn import SpawnError

if TYPE_CHECKING:
    from ..model.spec import ProgramSpec

#: An env file larger than this is refused: it is read inside the event loop.
ENV_FILE_MAX = 1 << 20


@dataclass(frozen=True, slots=True)
class Expanded:
    """The fields a start uses, as they are after expansion."""

    command: str
    directory: str | None
    user: str | None
    stdout_logfile: str | None
    stderr_logfile: str | None
    #: env_file's variables, then `environment`'s, expanded.
    environment: dict[str, str]


class Expandable(Protocol):
    """What an expansion reads of a program: a `ProgramSpec`, or a boot plan's entry
    (pid1/early.py), which starts programs before pydantic is imported."""

    @property
    def command(self) -> str: ...
    @property
    def directory(self) -> str | None: ...
    @property
    def user(self) -> str | None: ...
    @property
    def stdout_logfile(self) -> str | None: ...
    @property
    def stderr_logfile(self) -> str | None: ...
    @property
    def env_file(self) -> list[str]: ...
    @property
    def environment(self) -> dict[str, str]: ...


def expand_spec(spec: Expandable, base: Mapping[str, str]) -> Expanded:
    """Every reference of `spec` expanded from `base`, its env files read; SpawnError
    naming the field or the file when one cannot be."""
    fields: dict[str, Any] = {}
    for name in EXPANDED_FIELDS:
        value = getattr(spec, name)
        fields[name] = None if value is None else _field(name, value, base)
    if fields["user"] is not None and fields["user"] != spec.user \
            and not USER_RE.match(fields["user"]):
        raise SpawnError(f"user: {fields['user']!r} (from {spec.user!r}) is not a user name")
    for name in ("directory", "stdout_logfile", "stderr_logfile"):
        if fields[name] is not None and not fields[name].startswith("/"):
            raise SpawnError(f"{name}: {fields[name]!r} (from {getattr(spec, name)!r}) "
                             "is not an absolute path")
    env: dict[str, str] = {}
    for path in spec.env_file:
        env.update(read_env_file(path, base))
    for key, value in spec.environment.items():
        env[key] = _field(f"environment.{key}", value, base)
    return Expanded(environment=env, **fields)


def _field(name: str, value: str, base: Mapping[str, str]) -> str:
    try:
        return expand(value, base)
    except ExpansionError as exc:
        raise SpawnError(f"{name}: {exc}") from None


def expansion_view(spec: ProgramSpec, base: Mapping[str, str]) -> dict[str, Any] | None:
    """For the status: each field that holds a reference, as it expands now (None when
    none does); a field that cannot expand is left out, its error is the spawn error."""
    view: dict[str, Any] = {}
    for name in EXPANDED_FIELDS:
        value = getattr(spec, name)
        if value is not None and "$" in value:
            try:
                view[name] = expand(value, base)
            except ExpansionError:
                continue
    env: dict[str, str] = {}
    for key, value in spec.environment.items():
        if "$" in value:
            try:
                env[key] = expand(value, base)
            except ExpansionError:
                continue
    if env:
        view["environment"] = env
    return view or None


def read_env_file(path: str, base: Mapping[str, str]) -> dict[str, str]:
    """One dotenv file, as python-dotenv's `dotenv_values` reads it, except that the
    references in its values are looked up in the file's earlier lines, then in pmd's
    environment (`base`), never in pmd's own `os.environ`; and a line it cannot parse is an
    error naming the file and the line, not a warning (a variable silently missing is
    supervisord's most reported environment problem)."""
    text = _read_text(path)
    from dotenv.parser import parse_stream
    from dotenv.variables import parse_variables

    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            line = binding.original.string.strip()[:60]
            raise SpawnError(f"env_file {path}, line {binding.original.line}: cannot parse "
                             f"{line!r} (expected NAME=value)")
        if binding.key is None or binding.value is None:
            continue  # a comment, a blank line, or a NAME without a value: nothing to set
        lookup = {**base, **values}
        values[binding.key] = "".join(atom.resolve(lookup)
                                      for atom in parse_variables(binding.value))
    return values


def _read_text(path: str) -> str:
    # O_NONBLOCK: a FIFO put where the file should be must not hang the loop in open().
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise SpawnError(f"env_file {path} does not exist") from None
    except OSError as exc:
        raise SpawnError(f"env_file {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SpawnError(f"env_file {path} is not a regular file")
        if info.st_size > ENV_FILE_MAX:
            raise SpawnError(f"env_file {path} is larger than {ENV_FILE_MAX} bytes")
        data = os.read(fd, ENV_FILE_MAX + 1)
    except OSError as exc:
        raise SpawnError(f"env_file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpawnError(f"env_file {path} is not UTF-8 text (byte {exc.start})") from None
