"""The boot plan: boot programs started before pmd's own imports.

A start spends most of its first quarter second importing (asyncio, pydantic, the models,
the supervisor) before the supervisor spawns anything. The boot plan lets the programs
that need nothing of that start at once: `boot-plan.json` lists the boot programs that
start at boot with no delay, no dependency, no sockets, no port range and no readiness
`notify` or `fd`, with the fields a spawn reads (command, environment, directory, user,
env files, display, shell, rlimits, whether their logs are captured). This module (the
standard library, and the spawn and expansion functions the supervisor uses itself; the
plan is read with json, whose import costs a twentieth of orjson's) checks the plan's
key, then expands and spawns those programs exactly as their instance would (same
functions, same base environment, same pipes, a session each), and hands the processes
to pmd's start, whose supervisor takes each over at its first spawn if what it would
spawn now is the same (`Prespawned.matches`), and kills it otherwise.

The key is a hash of what decides which programs exist and how they start: the plan's
format, pmd's version, pmd's uid and gid, the config dir, the switches that change how
programs.json validates, and the bytes of programs.json, programs.default.json and every
file in programs.d. The environment is not in it: a plan holds the fields before their
`${VAR}`s are expanded, and expansion happens here, from the environment of this start.

Where plans come from: pmd writes one into its state dir after every fresh start whose
configuration loaded without a problem (a container restarted with its state kept uses
it), and `pmd_init --write-boot-plan` writes one into the config dir, at an image's build,
for the first start of every container made from it. The state dir's is read first.

Not used: after a re-exec (the programs run already), when pmd is not PID 1 (it may have
survivors of a killed pmd to adopt), for a compatibility start, with PMD_BOOT_PLAN=0, and
whenever the file is missing, unreadable, malformed or of another key. Nothing is
spawned twice: a program this module started is only ever taken over or killed.
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import signal
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..supervisor.expansion import expand_spec
from ..supervisor.spawn import (
    DEVNULL,
    Prespawned,
    SpawnError,
    SpawnRequest,
    build_argv,
    program_env,
    resolve_account,
    spawn,
)
from . import signals

if TYPE_CHECKING:
    from hashlib import sha256

    from ..settings import Settings
else:
    # The plan's key is a SHA-256 of the configuration's bytes: the interpreter's own
    # SHA-256 (the module hashlib falls back to) gives the same digest without hashlib's
    # import, which loads OpenSSL (3 ms of a start with a plan).
    try:
        from _sha256 import sha256
    except ImportError:
        try:
            from _sha2 import sha256  # Python 3.12 on
        except ImportError:
            from hashlib import sha256  # a Python built without them

PLAN_FILE = "boot-plan.json"
PLAN_FORMAT = 1
#: The marker of a re-exec (pid1/main.py sets it for the next image).
REEXEC_ENV = "PMD_REEXEC_STATE"
#: Never passed on to programs: pmd's own settings, and what a service manager above pmd
#: meant for pmd itself.
NOT_FOR_PROGRAMS = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
#: logs/capture.py's pipe size (that module imports asyncio, which this one must not).
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031


def program_base_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment every program starts from: pmd's own, less what is pmd's."""
    return {k: v for k, v in environ.items()
            if not k.startswith("PMD_") and k not in NOT_FOR_PROGRAMS}


def raise_nofile() -> None:
    """pmd's open-file limit up to its hard limit (programs inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, 1 << 20), hard))
        except (ValueError, OSError):
            pass


@dataclass(frozen=True, slots=True)
class PlannedSpec:
    """One program of a plan: the fields a spawn reads (supervisor/expansion.py's
    `Expandable`, and what Instance._exec adds), as programs.json has them."""

    name: str
    command: str
    directory: str | None
    user: str | None
    stdout_logfile: str | None
    stderr_logfile: str | None
    env_file: list[str]
    environment: dict[str, str]
    terminal_shell: str | None
    display: str | None
    logs_enabled: bool
    rlimits: list[tuple[int, int, int]]

    @classmethod
    def load(cls, raw: Any) -> PlannedSpec:
        """From the plan's JSON; ValueError for anything not of the right shape."""
        if not isinstance(raw, dict):
            raise ValueError("a program is not an object")

        def text(name: str, optional: bool = True) -> str | None:
            value = raw.get(name)
            if value is None and optional:
                return None
            if not isinstance(value, str) or "\x00" in value:
                raise ValueError(f"{name} is not a string")
            return value

        env = raw.get("environment")
        files = raw.get("env_file")
        limits = raw.get("rlimits")
        if not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ValueError("environment is not an object of strings")
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise ValueError("env_file is not a list of strings")
        if not isinstance(limits, list) or not all(
                isinstance(t, list) and len(t) == 3 and all(type(n) is int for n in t)
                for t in limits):
            raise ValueError("rlimits is not a list of [number, soft, hard]")
        if not isinstance(raw.get("logs_enabled"), bool):
            raise ValueError("logs_enabled is not a boolean")
        return cls(name=text("name", False) or "", command=text("command", False) or "",
                   directory=text("directory"), user=text("user"),
                   stdout_logfile=text("stdout_logfile"), stderr_logfile=text("stderr_logfile"),
                   env_file=list(files), environment=dict(env),
                   terminal_shell=text("terminal_shell"), display=text("display"),
                   logs_enabled=raw["logs_enabled"],
                   rlimits=[(t[0], t[1], t[2]) for t in limits])


def plan_key(settings: Settings, allow_loopback: str) -> str:
    """The hash of what decides which programs a start spawns, and how (module doc).
    OSError when a configuration file cannot be read."""
    digest = sha256()

    def part(label: str, data: bytes) -> None:
        digest.update(label.encode() + b"\0" + len(data).to_bytes(8, "big") + data)

    config = settings.config_dir
    part("format", str(PLAN_FORMAT).encode())
    part("version", __version__.encode())
    part("ids", f"{os.getuid()} {os.geteuid()} {os.getgid()} {os.getegid()}".encode())
    part("config_dir", str(config).encode())
    part("switches", f"{settings.webhook_allow_local} {allow_loopback}".encode())
    # programs.default.json counts only when programs.json is absent (the store reads
    # it only then, and writes it at the first start that finds programs.json)
    found = _read_or_absent(config / "programs.json")
    part("programs.json", found)
    if found == b"\0absent":
        part("programs.default.json", _read_or_absent(config / "programs.default.json"))
    folder = config / "programs.d"
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        names = []
        part("programs.d", b"\0absent")
    for name in names:
        part("programs.d/" + name, _read_or_absent(folder / name))
    return digest.hexdigest()


def _read_or_absent(path: Path) -> bytes:
    # O_NONBLOCK: a FIFO put where a file should be must not hang the start.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return b"\0absent"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b"\0not a file"
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def plan_paths(settings: Settings) -> list[Path]:
    """Where a start looks for a plan, in order: pmd's own (state dir), the image's."""
    return [settings.state_dir / PLAN_FILE, settings.config_dir / PLAN_FILE]


def plan_document(key: str, entries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"format": PLAN_FORMAT, "version": __version__, "key": key,
            "programs": list(entries)}


def _trusted(info: os.stat_result, config_dir: Path) -> bool:
    """A plan says what runs, as whom: it is followed only when nobody could have
    written it who could not write the configuration itself. Its owner is root, pmd's
    user or programs.json's owner; never writable by all; writable by its group only
    when programs.json is, for the same group (an image's folders for an arbitrary uid
    in group 0)."""
    try:
        config = os.stat(config_dir / "programs.json")
    except OSError:
        try:
            config = os.stat(config_dir / "programs.default.json")
        except OSError:
            config = None
    owners = {0, os.geteuid()} | ({config.st_uid} if config is not None else set())
    if info.st_uid not in owners or info.st_mode & stat.S_IWOTH:
        return False
    if info.st_mode & stat.S_IWGRP:
        return config is not None and bool(config.st_mode & stat.S_IWGRP) \
            and config.st_gid == info.st_gid
    return True


def read_plan(path: Path, key: str, config_dir: Path) -> tuple[list[PlannedSpec] | None, str]:
    """The plan's programs when `path` holds a plan of this key, else None; and a note
    saying what was found, for pmd's log."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return None, f"no {path}"
    except OSError as exc:
        return None, f"{path} unreadable ({exc.strerror or exc})"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or not _trusted(info, config_dir):
            return None, (f"{path} ignored: others than those who may write programs.json "
                          "may write it")
        data = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
    except OSError as exc:
        return None, f"{path} unreadable ({exc.strerror or exc})"
    finally:
        os.close(fd)
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
            raise ValueError("not a boot plan of this pmd's format")
        if doc.get("key") != key:
            return None, f"{path} is for another configuration, version or user"
        programs = doc.get("programs")
        if not isinstance(programs, list):
            raise ValueError("programs is not a list")
        specs = [PlannedSpec.load(raw) for raw in programs]
        if len({s.name for s in specs}) != len(specs):
            raise ValueError("a program is listed twice")
    except ValueError as exc:
        return None, f"{path} ignored: {exc}"
    return specs, f"{path}"


def make_pipe() -> tuple[int, int]:
    """A log pipe as logs/capture.py's Capture.make_pipe makes it."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(r, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass
    return r, w


def start_planned(specs: list[PlannedSpec], base_env: Mapping[str, str]
                  ) -> tuple[list[Prespawned], list[str]]:
    """Spawn each planned program as its instance would; a program that cannot be (its
    expansion, its user, its exec fails) is left to the supervisor, which reports it."""
    started: list[Prespawned] = []
    problems: list[str] = []
    # Signals pmd's caller left ignored stay ignored in programs that pmd did not give a
    # handler of its own first (exec resets handled signals, not ignored ones): as pmd
    # hands them to its programs once its handlers are in, they get their default here.
    ignored = signals.inherited_ignored()
    for signum in ignored:
        signal.signal(signum, signal.SIG_DFL)
    try:
        for spec in specs:
            pipes: list[tuple[int, int]] = []
            try:
                fields = expand_spec(spec, base_env)
                account = resolve_account(fields.user)
                argv = build_argv(fields.command, spec.terminal_shell)
                env = program_env(base_env, account, fields.environment, spec.display, None)
                if spec.logs_enabled:
                    pipes = [make_pipe(), make_pipe()]
                popen = spawn(SpawnRequest(
                    argv=argv, env=env, cwd=fields.directory, account=account,
                    stdout=pipes[0][1] if pipes else DEVNULL,
                    stderr=pipes[1][1] if pipes else DEVNULL,
                    rlimits=list(spec.rlimits)))
            except (SpawnError, OSError) as exc:
                for r, w in pipes:
                    os.close(r)
                    os.close(w)
                problems.append(f"{spec.name}: {exc} (left to the supervisor)")
                continue
            for _, w in pipes:
                os.close(w)
            started.append(Prespawned(
                name=spec.name, popen=popen, argv=argv, env=env, cwd=fields.directory,
                account=account, rlimits=list(spec.rlimits),
                pipes=(pipes[0][0], pipes[1][0]) if pipes else None,
                started_at=time.time(), started_mono=time.monotonic()))
    finally:
        for signum in ignored:
            signal.signal(signum, signal.SIG_IGN)
    return started, problems


@dataclass(slots=True)
class EarlyBoot:
    """What this module did, handed to pmd's start (pid1/main.py)."""

    settings: Settings
    inherited_mask: frozenset[int]
    #: The plan's key for this start, when one could be computed.
    key: str | None = None
    #: The plan used, or None.
    plan: Path | None = None
    started: list[Prespawned] = field(default_factory=list)
    #: For pmd's log, once it has one: why no plan was used; what could not start.
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: The environment pmd was given, before pmd set anything of its own in os.environ
    #: (what programs start from); None: os.environ as pmd's start finds it.
    environ: dict[str, str] | None = None
    #: Whether this start may spawn before the supervisor exists (PID 1, a fresh start,
    #: the boot plan not turned off, its key known).
    may_spawn: bool = False
    #: No plan was used, and the programs in `started` were spawned as a plan of the
    #: configuration would have them, once it validated (pid1/firstboot.py).
    validated: bool = False


def boot_early(settings: Settings, inherited_mask: frozenset[int],
               environ: Mapping[str, str], pid: int) -> EarlyBoot:
    """Start the plan's programs when a plan of this start's key is found (module doc)."""
    early = EarlyBoot(settings, inherited_mask, environ=dict(environ))
    if not settings.programs or not settings.boot_plan or settings.write_boot_plan:
        return early
    try:
        early.key = plan_key(settings, environ.get("PMD_WEBHOOK_ALLOW_LOOPBACK", ""))
    except OSError as exc:
        early.notes.append(f"configuration unreadable ({exc.strerror or exc})")
        return early
    if pid != 1 or REEXEC_ENV in environ:
        return early  # survivors or a re-exec's children to adopt: never spawn early
    early.may_spawn = True
    for path in plan_paths(settings):
        specs, note = read_plan(path, early.key, settings.config_dir)
        if specs is None:
            early.notes.append(note)
            continue
        raise_nofile()  # as pmd's start does before any spawn: programs inherit it
        early.plan = path
        early.started, early.problems = start_planned(specs, program_base_env(environ))
        break
    return early
