"""`pmd import FILE`: programs.json from a supervisord configuration, a Procfile, or a PM2
ecosystem file, so that nobody retypes a configuration to move to pmd.

Each source's keys that have a pmd meaning are carried over; every other key is listed on
stderr with the reason (`Skipped`), so nothing is dropped silently. References to the
environment become pmd's own `${VAR}` (expanded by pmd when the program starts, from the
container's environment, as the source tool would have), and every other `$` in a field
that pmd expands is written `$$`, so that a command means what it meant.

The standard library only, like the rest of the client. The result is checked by pmd when
it reads it (`pmd_init` boots it, `POST /programs/add` takes each program).
"""

from __future__ import annotations

import configparser
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Fields pmd expands `${VAR}` in (model/expand.py); `$` elsewhere is literal.
EXPANDED = ("command", "directory", "user", "stdout_logfile", "stderr_logfile")
STOP_SIGNALS = ("TERM", "INT", "QUIT", "HUP", "KILL", "USR1", "USR2")
SIZE_UNITS = {"": 1, "B": 1, "KB": 1 << 10, "K": 1 << 10, "MB": 1 << 20, "M": 1 << 20,
              "GB": 1 << 30, "G": 1 << 30}


class SourceError(Exception):
    """The file cannot be read as the format it claims; one line for stderr."""


@dataclass
class Result:
    programs: list[dict[str, Any]] = field(default_factory=list)
    #: (where, what, why): one line each on stderr
    skipped: list[tuple[str, str, str]] = field(default_factory=list)

    def skip(self, where: str, what: str, why: str) -> None:
        self.skipped.append((where, what, why))

    def document(self) -> dict[str, Any]:
        return {"version": 1, "programs": [{"id": i, **p}
                                           for i, p in enumerate(self.programs, 1)]}


def dollars(text: str) -> str:
    """Text for a field pmd expands: every `$` literal."""
    return text.replace("$", "$$")


def size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?B?)\s*", text.upper())
    if not match:
        raise ValueError(f"not a size: {text!r}")
    return int(match[1]) * SIZE_UNITS[match[2]]


def detect(path: Path) -> str:
    name = path.name.lower()
    if name.startswith("procfile"):
        return "procfile"
    if name.endswith((".json", ".js", ".cjs", ".mjs", ".yaml", ".yml")) or "ecosystem" in name:
        return "pm2"
    return "supervisord"


def import_file(path: Path, kind: str | None = None,
                environ: dict[str, str] | None = None) -> Result:
    kind = kind or detect(path)
    env = dict(os.environ if environ is None else environ)
    if kind == "procfile":
        return from_procfile(path)
    if kind == "pm2":
        return from_pm2(path)
    return from_supervisord(path, env)


# ---- supervisord ---------------------------------------------------------------------

#: [program:x] keys carried over, each to a pmd field (some by hand below).
SUPERVISORD_DIRECT = {"startsecs": ("startsecs", float), "startretries": ("startretries", int),
                      "stopwaitsecs": ("stop_timeout", float)}
#: Keys with no pmd meaning, and why.
SUPERVISORD_WHY = {
    "umask": "pmd does not set a umask per program (it is pmd's own)",
    "serverurl": "pmd has no XML-RPC server; programs use its HTTP API",
    "stdout_capture_maxbytes": "pmd has no capture mode",
    "stderr_capture_maxbytes": "pmd has no capture mode",
    "stdout_events_enabled": "pmd has no log events",
    "stderr_events_enabled": "pmd has no log events",
    "stdout_syslog": "pmd does not write to syslog; its stdout goes to `docker logs`",
    "stderr_syslog": "pmd does not write to syslog; its stdout goes to `docker logs`",
    "redirect_stderr": "pmd keeps stderr apart (stderr.log, and pmd's stderr)",
    "stopasgroup": "pmd always signals the program's whole process group",
    "killasgroup": "pmd always signals the program's whole process group",
}
SECTION_WHY = {
    "supervisord": "supervisord's own settings: pmd_init's flags and PMD_ variables",
    "unix_http_server": "pmd serves its API on its own socket (--socket)",
    "inet_http_server": "pmd serves its API on --host/--port, with --api-key",
    "supervisorctl": "the `pmd` command line talks to pmd's socket",
    "rpcinterface": "pmd has no XML-RPC interface",
    "group": "pmd has no groups: each program is its own",
    "eventlistener": "event listeners are not carried over",
    "fcgi-program": "pmd does not own FastCGI sockets",
}


def from_supervisord(path: Path, env: dict[str, str]) -> Result:
    result = Result()
    for source, parser in _supervisord_files(path, env, result):
        for section in parser.sections():
            kind, _, name = section.partition(":")
            where = f"{source.name}:[{section}]"
            if kind == "program" and name:
                _supervisord_program(where, name, dict(parser.items(section, raw=True)),
                                     source, env, result)
            elif kind == "include":
                continue
            else:
                why = SECTION_WHY.get(kind, "not a section pmd knows")
                result.skip(where, "the whole section", why)
    return result


def _supervisord_files(path: Path, env: dict[str, str], result: Result,
                       seen: set[Path] | None = None
                       ) -> Iterator[tuple[Path, configparser.RawConfigParser]]:
    """The file and those its [include] names (globs, relative to it), once each."""
    seen = set() if seen is None else seen
    path = path.resolve()
    if path in seen:
        return
    seen.add(path)
    parser = configparser.RawConfigParser(
        inline_comment_prefixes=(";", "#"), comment_prefixes=(";", "#"), strict=False,
        interpolation=None, delimiters=("=", ":"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(path.read_text(), source=str(path))
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise SourceError(f"{path}: {exc}") from None
    yield path, parser
    if parser.has_section("include"):
        files = parser.get("include", "files", fallback="")
        for pattern in files.split():
            pattern = _expand_now(pattern, {"here": str(path.parent)}, env)
            full = pattern if os.path.isabs(pattern) else str(path.parent / pattern)
            matches = sorted(glob.glob(full))
            if not matches:
                result.skip(f"{path.name}:[include]", f"files={pattern}",
                            "no file matches it")
            for match in matches:
                yield from _supervisord_files(Path(match), env, result, seen)


_PERCENT = re.compile(r"%\((?P<name>[A-Za-z0-9_]+)\)(?P<fmt>[-#0 +]*\d*[sd])|%%")


def _expand_now(text: str, names: dict[str, Any], env: dict[str, str]) -> str:
    """supervisord's `%(name)s` expansions, done now (for keys pmd does not expand)."""
    def one(match: re.Match[str]) -> str:
        if match[0] == "%%":
            return "%"
        name = match["name"]
        if name.startswith("ENV_"):
            if name[4:] not in env:
                raise ValueError(f"%({name})s: {name[4:]} is not set")
            return str(env[name[4:]])
        if name not in names:
            raise ValueError(f"%({name})s is not known")
        return str(("%" + match["fmt"]) % names[name])
    return _PERCENT.sub(one, text)


def _expand_for_pmd(text: str, names: dict[str, Any]) -> str:
    """The same for a field pmd expands: `%(ENV_X)s` becomes `${X}` (pmd reads the
    environment when the program starts, as supervisord read it), `$` becomes `$$`."""
    out = []
    last = 0
    for match in _PERCENT.finditer(text):
        out.append(dollars(text[last:match.start()]))
        last = match.end()
        if match[0] == "%%":
            out.append("%")
        elif match["name"].startswith("ENV_"):
            out.append("${" + match["name"][4:] + "}")
        elif match["name"] in names:
            out.append(dollars(("%" + match["fmt"]) % names[match["name"]]))
        else:
            raise ValueError(f"%({match['name']})s is not known")
    out.append(dollars(text[last:]))
    return "".join(out)


_PAIR = re.compile(r"""\s*([^\s=,]+)\s*=\s*("(?:[^"\\]|\\.)*"|'[^']*'|[^,]*?)\s*(?:,|$)""")


def _environment(value: str) -> dict[str, str]:
    """supervisord's `KEY="value",KEY2=value2` (a value in quotes may hold commas)."""
    pairs: dict[str, str] = {}
    at = 0
    value = value.strip()
    while at < len(value):
        match = _PAIR.match(value, at)
        if match is None or match.end() == at:
            raise ValueError(f"environment: not KEY=value pairs at {value[at:at + 30]!r}")
        key, text = match[1], match[2]
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            text = text[1:-1]
            if match[2][0] == '"':
                text = re.sub(r"\\(.)", r"\1", text)
        pairs[key] = text
        at = match.end()
    return pairs


def _supervisord_program(where: str, name: str, keys: dict[str, str], source: Path,
                         env: dict[str, str], result: Result) -> None:
    names: dict[str, Any] = {"program_name": name, "group_name": name,
                             "here": str(source.parent), "host_node_name": os.uname().nodename}
    try:
        count = int(_expand_now(keys.pop("numprocs", "1"), names, env))
        first = int(_expand_now(keys.pop("numprocs_start", "0"), names, env))
    except ValueError as exc:
        result.skip(where, "the whole program", str(exc))
        return
    process_name = keys.pop("process_name", "%(program_name)s")
    for num in range(first, first + max(count, 1)):
        per = {**names, "process_num": num}
        try:
            spec = {"name": _expand_now(process_name, per, env),
                    **_supervisord_spec(where, dict(keys), per, env, result)}
        except ValueError as exc:
            result.skip(where, "the whole program", str(exc))
            return
        result.programs.append(spec)
        where = f"{where} (process {num})"  # later copies: their own lines


def _supervisord_spec(where: str, keys: dict[str, str], names: dict[str, Any],
                      env: dict[str, str], result: Result) -> dict[str, Any]:
    if "command" not in keys:
        raise ValueError("no command")
    spec: dict[str, Any] = {"command": _expand_for_pmd(keys.pop("command"), names)}
    first_copy = "(process" not in where

    def note(key: str, value: str, why: str) -> None:
        if first_copy:
            result.skip(where, f"{key}={value}", why)

    for key in ("directory", "user"):
        if key in keys:
            spec[key] = _expand_for_pmd(keys.pop(key), names)
    if "environment" in keys:
        raw = keys.pop("environment")
        spec["environment"] = {k: _expand_for_pmd(v, names)
                               for k, v in _environment(raw).items()}
    autostart = _expand_now(keys.pop("autostart", "true"), names, env).lower()
    spec["boot"] = autostart in ("true", "1", "yes", "on")
    spec["enabled"] = True
    if "autorestart" in keys:
        value = _expand_now(keys.pop("autorestart"), names, env).lower()
        spec["autorestart"] = {"true": "true", "false": "false", "unexpected": "unexpected",
                               "1": "true", "0": "false", "yes": "true",
                               "no": "false"}.get(value, "unexpected")
    for key, (target, kind) in SUPERVISORD_DIRECT.items():
        if key in keys:
            spec[target] = kind(_expand_now(keys.pop(key), names, env))
    if "exitcodes" in keys:
        spec["exitcodes"] = [int(c) for c in
                             _expand_now(keys.pop("exitcodes"), names, env).split(",") if c]
    if "stopsignal" in keys:
        value = _expand_now(keys.pop("stopsignal"), names, env).upper().removeprefix("SIG")
        if value in STOP_SIGNALS:
            spec["stop_signal"] = value
        else:
            note("stopsignal", value, f"pmd stops with one of {', '.join(STOP_SIGNALS)}; "
                 "TERM is used")
    if "priority" in keys:
        priority = int(_expand_now(keys.pop("priority"), names, env))
        spec["priority"] = min(max(priority, 1), 999)
        if spec["priority"] != priority:
            note("priority", str(priority), f"pmd's priorities are 1-999: {spec['priority']}")
    sizes: dict[str, int] = {}
    backups: dict[str, int] = {}
    for stream in ("stdout", "stderr"):
        key = f"{stream}_logfile"
        if key in keys:
            value = keys.pop(key)
            if value.upper() == "AUTO":
                pass  # pmd's own: <log-dir>/<name>/<stream>.log
            elif value.upper() == "NONE":
                note(key, value, "pmd logs both streams or neither (logs_enabled); "
                     "kept in pmd's log dir")
            elif value in ("/dev/stdout", "/dev/stderr", "/dev/fd/1", "/dev/fd/2",
                           "/proc/self/fd/1", "/proc/self/fd/2"):
                note(key, value, "pmd copies every line to its own stdout/stderr already "
                     "(`docker logs`); the file is pmd's log dir")
            else:
                spec[key] = _expand_for_pmd(value, names)
        if f"{key}_maxbytes" in keys:
            sizes[stream] = size(_expand_now(keys.pop(f"{key}_maxbytes"), names, env))
        if f"{key}_backups" in keys:
            backups[stream] = int(_expand_now(keys.pop(f"{key}_backups"), names, env))
    for what, found, target in (("maxbytes", sizes, "log_max_bytes"),
                                ("backups", backups, "log_backups")):
        if found:
            chosen = found.get("stdout", found.get("stderr"))
            spec[target] = chosen
            if len(set(found.values())) > 1:
                note(f"stderr_logfile_{what}", str(found["stderr"]),
                     f"pmd has one {target} for both streams: {chosen}")
    for key, value in keys.items():
        note(key, value, SUPERVISORD_WHY.get(key, "not a key pmd knows"))
    return spec


# ---- Procfile ------------------------------------------------------------------------

def from_procfile(path: Path) -> Result:
    """`name: command` lines, run by a shell as foreman and Heroku do; the .env beside it
    (foreman's) becomes each program's env_file, read at each start."""
    result = Result()
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: {exc}") from None
    dotenv = path.resolve().parent / ".env"
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"\s*([A-Za-z0-9_-]+)\s*:\s*(.+?)\s*", line)
        if not match:
            result.skip(f"{path.name}:{number}", line.strip(), "not `name: command`")
            continue
        spec: dict[str, Any] = {
            "name": match[1], "command": "sh -c " + shlex.quote(dollars(match[2])),
            "boot": True, "autorestart": "true", "directory": str(path.resolve().parent)}
        if dotenv.is_file():
            spec["env_file"] = [str(dotenv)]
        result.programs.append(spec)
    if not result.programs:
        raise SourceError(f"{path}: no `name: command` line")
    return result


# ---- PM2 -----------------------------------------------------------------------------

#: The interpreters PM2 picks from a script's extension.
INTERPRETERS = {".js": "node", ".cjs": "node", ".mjs": "node", ".ts": "ts-node",
                ".py": "python3", ".sh": "bash", ".rb": "ruby", ".php": "php",
                ".pl": "perl", ".coffee": "coffee"}
PM2_WHY = {
    "watch": "pmd does not restart on file changes",
    "ignore_watch": "pmd does not restart on file changes",
    "watch_options": "pmd does not restart on file changes",
    "exec_mode": "pmd runs processes, not a Node.js cluster: use `port` ranges",
    "merge_logs": "pmd keeps one log per instance",
    "log_date_format": "pmd's log API gives each line its time",
    "log_file": "pmd keeps stdout and stderr apart",
    "pid_file": "pmd keeps pids itself (pids.json)",
    "cron_restart": "pmd has no cron restarts",
    "restart_delay": "pmd restarts at once, then backs off",
    "vizion": "pmd does not track version control",
    "post_update": "pmd does not track version control",
    "force": "pmd refuses two programs of one name",
    "source_map_support": "a Node.js option, for node's own flags in `interpreter_args`",
    "instance_var": "pmd gives each instance its PORT",
    "time": "pmd's log API gives each line its time",
    "shutdown_with_message": "pmd stops with a signal",
    "wait_ready": "use pmd's readiness (docs/readiness.md)",
    "listen_timeout": "use pmd's readiness (docs/readiness.md)",
    "namespace": "pmd has no namespaces",
}


def _pm2_apps(path: Path) -> list[Any]:
    if path.suffix in (".js", ".cjs", ".mjs"):
        node = shutil.which("node")
        if node is None:
            raise SourceError(f"{path}: reading a .js ecosystem file needs node (write it "
                               "as JSON: `pm2 ecosystem` JSON, or `node -p "
                               "'JSON.stringify(require(\"./ecosystem.config.js\"))'`)")
        code = ("const m = require(process.argv[1]);"
                "process.stdout.write(JSON.stringify(m && m.default ? m.default : m));")
        try:
            done = subprocess.run([node, "-e", code, str(path.resolve())],
                                  capture_output=True, text=True, timeout=30,
                                  cwd=path.resolve().parent, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SourceError(f"{path}: node: {exc}") from None
        if done.returncode != 0:
            raise SourceError(f"{path}: node could not evaluate it: "
                               f"{done.stderr.strip().splitlines()[-1:]}")
        text = done.stdout
    else:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"{path}: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SourceError(f"{path}: not JSON: {exc}") from None
    apps = data.get("apps") if isinstance(data, dict) else data
    if isinstance(data, dict) and apps is None and "script" in data:
        apps = [data]
    if not isinstance(apps, list):
        raise SourceError(f"{path}: no `apps` list")
    return apps


def _duration(value: Any) -> float:
    """PM2's durations: a number of milliseconds, or text with a unit ("5s", "1m")."""
    if isinstance(value, (int, float)):
        return float(value) / 1000
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r}")
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 0.001}[match[2]]


def from_pm2(path: Path) -> Result:
    result = Result()
    for index, app in enumerate(_pm2_apps(path)):
        where = f"{path.name}:apps[{index}]"
        if not isinstance(app, dict) or not app.get("script"):
            result.skip(where, "the whole app", "no `script`")
            continue
        try:
            result.programs.append(_pm2_spec(where, dict(app), path, result))
        except (ValueError, TypeError) as exc:
            result.skip(where, "the whole app", str(exc))
    return result


def _pm2_spec(where: str, app: dict[str, Any], path: Path, result: Result) -> dict[str, Any]:
    script = str(app.pop("script"))
    name = str(app.pop("name", Path(script).stem))
    args = app.pop("args", [])
    argv = shlex.split(args) if isinstance(args, str) else [str(a) for a in args]
    interpreter = app.pop("interpreter", None) or app.pop("exec_interpreter", None)
    interpreter_args = app.pop("interpreter_args", None) or app.pop("node_args", None)
    if interpreter is None:
        interpreter = INTERPRETERS.get(Path(script).suffix)
    words = [script, *argv]
    if interpreter and interpreter != "none":
        extra = (shlex.split(interpreter_args) if isinstance(interpreter_args, str)
                 else [str(a) for a in interpreter_args or []])
        words = [interpreter, *extra, *words]
    spec: dict[str, Any] = {"name": name, "command": dollars(shlex.join(words)),
                            "boot": True, "enabled": True}
    cwd = app.pop("cwd", None)
    spec["directory"] = dollars(str((path.resolve().parent / cwd).resolve()
                                    if cwd else path.resolve().parent))
    env = app.pop("env", None) or {}
    if env:
        spec["environment"] = {str(k): dollars(str(v)) for k, v in env.items()}
    if "autorestart" in app:
        spec["autorestart"] = "true" if app.pop("autorestart") else "false"
    else:
        spec["autorestart"] = "true"  # PM2 restarts whatever the exit code
    if "max_restarts" in app:
        spec["startretries"] = int(app.pop("max_restarts"))
    if "min_uptime" in app:
        spec["startsecs"] = _duration(app.pop("min_uptime"))
    if "kill_timeout" in app:
        spec["stop_timeout"] = _duration(app.pop("kill_timeout"))
    if "max_memory_restart" in app:
        spec["max_memory_restart"] = size(str(app.pop("max_memory_restart")))
    if "exp_backoff_restart_delay" in app:
        app.pop("exp_backoff_restart_delay")
        spec["backoff"] = "exponential"
        result.skip(where, "exp_backoff_restart_delay",
                    "pmd's exponential backoff starts at 1 s (backoff: exponential)")
    if "out_file" in app:
        spec["stdout_logfile"] = dollars(str(app.pop("out_file")))
    if "error_file" in app:
        spec["stderr_logfile"] = dollars(str(app.pop("error_file")))
    if "user" in app:
        spec["user"] = dollars(str(app.pop("user")))
    if "stop_exit_codes" in app:
        codes = app.pop("stop_exit_codes")
        spec["exitcodes"] = [int(c) for c in (codes if isinstance(codes, list) else [codes])]
        spec["autorestart"] = "unexpected"
    instances = app.pop("instances", None)
    if instances not in (None, 1, "1"):
        result.skip(where, f"instances={instances}",
                    "pmd runs one process a program, or one a port with `port_range`")
    for key, value in app.items():
        if key.startswith("env_"):
            why = f"pmd has one environment; `{key}` is PM2's --env {key[4:]}"
        else:
            why = PM2_WHY.get(key, "not a key pmd knows")
        result.skip(where, f"{key}={json.dumps(value)[:60]}", why)
    return spec


def write_atomically(path: Path, data: bytes) -> None:
    """A reader (pmd's HUP) sees the old file or the new one, never half of either."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
