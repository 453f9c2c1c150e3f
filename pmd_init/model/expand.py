"""`${VAR}` in a program's configuration: the syntax, checked when a spec is validated, and
the expansion, done when the program starts.

The fields that may hold references are `command`, `directory`, `user`, the log paths and
the values of `environment` (EXPANDED_FIELDS). The syntax is the subset of docker compose's
interpolation that supervisord and PM2 users reach for:

- `${NAME}`: NAME's value; NAME unset is an error for that program, never an empty string;
- `${NAME:-default}`: the default when NAME is unset or empty; `${NAME-default}`: only
  when it is unset (the default is text, without references);
- `$$`: one literal `$`;
- a `$` followed by anything else is itself: `$HOME` in `sh -c '...'` is the shell's.

References are looked up in pmd's environment (the programs' base environment, fixed for
pmd's life), not in the program's own `environment` or `env_file`: the same text always
means the same thing, whatever order the fields are read in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: The ProgramSpec fields whose text is expanded (`environment`'s values too).
EXPANDED_FIELDS = ("command", "directory", "user", "stdout_logfile", "stderr_logfile")

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_TOKEN = re.compile(
    r"\$(?:(?P<dollar>\$)"
    r"|\{(?P<name>" + _NAME + r")(?:(?P<op>:?-)(?P<default>[^}$]*))?\}"
    r"|(?P<bad>\{))")


def references_pattern(excluded: str) -> str:
    """A regular expression (JSON Schema's dialect too) of text whose every `${` opens a
    well-formed reference, made of characters other than `excluded`: what `check` accepts."""
    # a `$` before another is half of a `$$`, never a `$` alone: one reading, as `check`'s
    return (rf"^(?:[^${excluded}]|\$\$|\$(?![{{$])"
            rf"|\$\{{{_NAME}(?::?-[^}}${excluded}]*)?\}})*$")


#: An account name (a trailing `$`: a machine account).
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]*\$?$")

#: `user` with references: account-name characters around them, and the trailing `$` of a
#: machine account (USER_RE's rule, once expanded, is checked at start).
USER_REFERENCES = re.compile(
    rf"^(?=.*\$\{{)(?:[a-z0-9_-]|\$\{{{_NAME}(?::?-[a-z0-9_-]*)?\}})+\$?$")


class ExpansionError(ValueError):
    """A reference that cannot be expanded; the message names it."""


def check(text: str) -> str:
    """The syntax alone (no lookup), for validation: every `${` opens a well-formed
    reference."""
    if "$" in text:
        for match in _TOKEN.finditer(text):
            if match["bad"] is not None:
                raise ExpansionError(_bad(text, match.start()))
    return text


def expand(text: str, env: Mapping[str, str]) -> str:
    """`text` with its references replaced from `env`."""
    if "$" not in text:
        return text

    def one(match: re.Match[str]) -> str:
        if match["dollar"] is not None:
            return "$"
        if match["bad"] is not None:
            raise ExpansionError(_bad(text, match.start()))
        name, op = match["name"], match["op"]
        value = env.get(name)
        if op == ":-" and not value:
            return str(match["default"])
        if op == "-" and value is None:
            return str(match["default"])
        if value is None:
            raise ExpansionError(f"${{{name}}} is not set in pmd's environment (give it a "
                                 f"default with ${{{name}:-...}}, or write $$ for a $)")
        return value

    return _TOKEN.sub(one, text)


def _bad(text: str, at: int) -> str:
    return (f"bad reference at {text[at:at + 24]!r}: write ${{NAME}} or ${{NAME:-default}} "
            "(NAME of letters, digits and _), or $$ for a literal $")


def env_files(paths: list[str] | None) -> list[str] | None:
    """`env_file`'s rule: absolute paths, each once (a file is read at each start, so a
    relative path would depend on pmd's own working directory). None: an edit leaves it."""
    if paths is None:
        return None
    for path in paths:
        if not path.startswith("/"):
            raise ValueError(f"{path!r} must be an absolute path")
        if any(c in path for c in "\x00\n\r"):
            raise ValueError("must not contain NUL, newline or carriage return")
    if len(set(paths)) != len(paths):
        raise ValueError("names a file twice")
    return paths


def one_or_more(value: object) -> object:
    """`env_file` as written: one path, or a list of them."""
    return [value] if isinstance(value, str) else value
