"""tini's and dumb-init's command lines, so an image swaps `tini` for `pmd-tini` (or
`dumb-init` for `pmd-dumb-init`) and changes nothing else.

Each parser turns the other tool's flags and environment variables into pmd's Settings,
with the other tool's exit codes for bad usage (tini and dumb-init: 1; help and version:
0) and the streams it documents (tini's help on stdout, dumb-init's on stderr). The texts
are pmd's own.

A compatibility start is bare: no programs.json, no API, no state or log folders, and pmd
only passes signals on and exits with the command, as the original does. Setting
PMD_CONFIG_DIR (programs), PMD_PORT or PMD_SOCKET (the API) turns pmd's supervisor on as
well, with its usual reactions to TERM, HUP and USR1.
"""

from __future__ import annotations

import dataclasses
import getopt
import os
import sys
from typing import NoReturn

from .. import __version__
from ..settings import Settings, env_log_level, job_control_rewrites, parse_settings, parse_signal

TINI_HELP = """\
{prog} (pmd {version}, tini's command line)
Usage: {prog} [OPTIONS] PROGRAM [--] [ARGS] | --version

Runs PROGRAM under pmd, a container init: zombies are reaped, signals passed on, and
{prog} exits with PROGRAM's exit code.

Options:
  --version   print the version and exit (only as the sole argument)
  -h          print this help and exit
  -s          be a child subreaper (pmd always is one when it is not PID 1)
  -p SIGNAL   have pmd receive SIGNAL when its parent dies, e.g. -p SIGKILL
  -v          say more; repeat for more detail
  -w          warn about every orphaned process reaped
  -g          pass signals to PROGRAM's whole process group, not PROGRAM alone
  -e CODE     exit 0 when PROGRAM exits with CODE (0-255); repeatable
  -l          print the license and exit

Environment:
  TINI_SUBREAPER            same as -s
  TINI_VERBOSITY            how much to say (default 1: warnings)
  TINI_KILL_PROCESS_GROUP   same as -g
  PMD_CONFIG_DIR, PMD_PORT, PMD_SOCKET
                            also run programs.json, serve the API (pmd_init --help)
"""

DUMB_INIT_HELP = """\
{prog} v{version} (pmd, dumb-init's command line)
Usage: {prog} [option] command [[arg] ...]

Runs command under pmd, a container init that passes every signal it receives on to the
command's process group, reaps zombies and exits with the command's exit code.

Options:
   -c, --single-child   pass signals to the command alone, not its process group
   -r, --rewrite s:r    pass signal s on as signal r; r = 0 drops s; repeatable
   -v, --verbose        print what pmd does on stderr
   -h, --help           print this help and exit
   -V, --version        print the version and exit

Environment: DUMB_INIT_SETSID=0 is --single-child, DUMB_INIT_DEBUG=1 is --verbose;
PMD_CONFIG_DIR, PMD_PORT, PMD_SOCKET also run programs.json and serve the API.
"""

LICENSE = "pmd is free software under the MIT license.\n"


def parse_compat(args: list[str]) -> Settings:
    """`pmd_init --compat tini|dumb-init ARGS...`."""
    flavour, _, inline = args[0].partition("=")
    rest = args[1:]
    if not inline:
        if not rest:
            _fail("pmd_init: --compat takes tini or dumb-init", 2)
        inline, rest = rest[0], rest[1:]
    if inline == "tini":
        return parse_tini(rest, "pmd-tini")
    if inline == "dumb-init":
        return parse_dumb_init(rest, "pmd-dumb-init")
    _fail(f"pmd_init: --compat takes tini or dumb-init, not {inline!r}", 2)


# ---- tini ----------------------------------------------------------------------------


def parse_tini(args: list[str], prog: str) -> Settings:
    if args == ["--version"]:
        _done(f"{prog} version {__version__} (pmd)\n", sys.stdout)
    try:
        opts, command = getopt.getopt(args, "p:hvwgle:R:s")
    except getopt.GetoptError as exc:
        print(f"{prog}: {_getopt_message(exc)}", file=sys.stderr)
        _fail(TINI_HELP.format(prog=prog, version=__version__), 1, end="")
    verbosity = _int_env("TINI_VERBOSITY", 1)
    group = bool(os.environ.get("TINI_KILL_PROCESS_GROUP"))
    pdeathsig: int | None = None
    warn = False
    remap: dict[int, int] = {}
    for flag, value in opts:
        if flag == "-h":
            _done(TINI_HELP.format(prog=prog, version=__version__), sys.stdout)
        elif flag == "-l":
            _done(LICENSE, sys.stdout)
        elif flag == "-s":
            pass  # pmd registers as a subreaper whenever it is not PID 1
        elif flag == "-p":
            try:
                pdeathsig = parse_signal(value)
            except ValueError:
                _fail(f"{prog}: -p takes a signal name such as SIGKILL, not {value!r}", 1)
        elif flag == "-v":
            verbosity += 1
        elif flag == "-w":
            warn = True
        elif flag == "-g":
            group = True
        elif flag == "-e":
            if not value.isdigit() or int(value) > 255:
                _fail(f"{prog}: -e takes an exit code from 0 to 255, not {value!r}", 1)
            remap[int(value)] = 0
        elif flag == "-R":
            _fail(f"{prog}: -R (respawn) is not supported; run the command as a program "
                  "of programs.json with an autorestart policy instead", 1)
    if not command:
        _fail(TINI_HELP.format(prog=prog, version=__version__), 1, end="")
    level = "ERROR" if verbosity <= 0 else "WARNING" if verbosity == 1 else \
        "INFO" if verbosity == 2 else "DEBUG"
    settings = _compat_settings(
        "tini", command, single_child=not group, rewrite={}, job_control=False,
        remap=remap, pdeathsig=pdeathsig, log_level=level, warn_reap=warn)
    return dataclasses.replace(settings, keep_mask=True)


# ---- dumb-init -----------------------------------------------------------------------


def parse_dumb_init(args: list[str], prog: str) -> Settings:
    try:
        opts, command = getopt.getopt(
            args, "hvVcr:", ["help", "single-child", "rewrite=", "verbose", "version"])
    except getopt.GetoptError as exc:
        _fail(f"{prog}: {_getopt_message(exc)}", 1)
    single = os.environ.get("DUMB_INIT_SETSID") == "0"
    debug = os.environ.get("DUMB_INIT_DEBUG") == "1"
    rewrite: dict[int, int] = {}
    for flag, value in opts:
        if flag in ("-h", "--help"):
            _done(DUMB_INIT_HELP.format(prog=prog, version=__version__), sys.stderr)
        elif flag in ("-V", "--version"):
            _done(f"{prog} v{__version__}\n", sys.stderr)
        elif flag in ("-v", "--verbose"):
            debug = True
        elif flag in ("-c", "--single-child"):
            single = True
        elif flag in ("-r", "--rewrite"):
            rewrite.update(_dumb_rewrite(value))
    if not command:  # dumb-init's own two lines
        _fail(f"Usage: {prog} [option] program [args]\nTry {prog} --help for full usage.", 1)
    return _compat_settings(
        "dumb-init", command, single_child=single,
        rewrite=job_control_rewrites(rewrite, single), job_control=True, remap={},
        pdeathsig=None, log_level="DEBUG" if debug else None, warn_reap=False)


def _dumb_rewrite(value: str) -> dict[int, int]:
    src, sep, dst = value.partition(":")
    try:
        if not sep:
            raise ValueError(value)
        source = parse_signal(src)
        target = 0 if dst.strip() == "0" else parse_signal(dst)
    except ValueError:  # dumb-init's own lines (pmd also takes names and RT signals)
        _fail("Usage: -r option takes <signum>:<signum>, where <signum> is between 1 and "
              "31.\nThis option can be specified multiple times.\n"
              "Use --help for full usage.", 1)
    return {source: target}


# ---- shared --------------------------------------------------------------------------


def _compat_settings(compat: str, command: list[str], *, single_child: bool,
                     rewrite: dict[int, int], job_control: bool, remap: dict[int, int],
                     pdeathsig: int | None, log_level: str | None,
                     warn_reap: bool) -> Settings:
    """The other tool's meaning, over pmd's own settings when the environment asks for
    programs or an API (PMD_CONFIG_DIR, PMD_PORT, PMD_SOCKET), else a bare start."""
    asked = any(os.environ.get(k) for k in ("PMD_CONFIG_DIR", "PMD_PORT", "PMD_SOCKET"))
    if asked:
        base = parse_settings([])
        if not os.environ.get("PMD_PORT"):
            base = dataclasses.replace(base, port=-1)
        if not os.environ.get("PMD_SOCKET"):
            base = dataclasses.replace(base, socket=None)
    else:
        base = Settings(programs=False, api=False, own_signals=False)
    return dataclasses.replace(
        base, command=command, single_child=single_child, rewrite=rewrite,
        job_control=job_control, remap_exit={**base.remap_exit, **remap},
        pdeathsig=pdeathsig, log_level=log_level or env_log_level(), warn_reap=warn_reap,
        compat=compat)


def _getopt_message(exc: getopt.GetoptError) -> str:
    """The C library's getopt wording, which both originals print."""
    if exc.msg.endswith("not recognized"):
        return (f"unrecognized option '--{exc.opt}'" if len(exc.opt) > 1
                else f"invalid option -- '{exc.opt}'")
    if exc.msg.endswith("requires argument"):
        return (f"option '--{exc.opt}' requires an argument" if len(exc.opt) > 1
                else f"option requires an argument -- '{exc.opt}'")
    return exc.msg


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _done(text: str, stream: object) -> NoReturn:
    print(text, end="", file=stream)  # type: ignore[call-overload]
    raise SystemExit(0)


def _fail(text: str, code: int, end: str = "\n") -> NoReturn:
    print(text, end=end, file=sys.stderr)
    raise SystemExit(code)
