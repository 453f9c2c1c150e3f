"""pmd_init's settings: every command-line flag has an environment variable, and every
environment variable pmd reads about itself is read here, once, by pid1 at start-up.

The rest of pmd gets what it needs as arguments (docs/architecture.md, "Settings are
passed, not read"); tests/test_module_state.py holds every other module to that. Some
variables have no flag: they exist for tests or for the operator's environment only.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__


@dataclass(frozen=True)
class Settings:
    config_dir: Path = Path("/etc/pmd")
    state_dir: Path = Path("/var/lib/pmd")
    log_dir: Path = Path("/var/log/pmd")
    host: str = "127.0.0.1"
    port: int = 9615
    socket: Path | None = Path("/run/pmd/pmd.sock")
    api_key: str | None = None
    #: TLS on the TCP API: the server's certificate chain and key (PEM), and the CAs
    #: whose client certificates identify callers (mTLS); re-read on SIGHUP.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    grace: float = 8.0
    command: list[str] = field(default_factory=list)
    remap_exit: dict[int, int] = field(default_factory=dict)
    log_forward: str = "prefixed"
    log_roots: list[Path] = field(default_factory=lambda: [Path("/var/log")])
    api: bool = True
    rate_limit: int = 100  # requests a minute per client address on the /api family, 0: off
    rate_burst: int = 20  # requests in 10 s per client address, 0: off
    cors_origins: tuple[str, ...] = ("*",)
    #: How long a finished quick-start program stays queryable (the product's 10 minutes;
    #: PMD_EPHEMERAL_GRACE shortens it, for tests).
    ephemeral_grace: float = 600.0
    #: Seconds between two samples of the max_memory_restart watch (PMD_MEMORY_INTERVAL;
    #: tests shorten it).
    memory_interval: float = 5.0
    #: A PEM file of CA certificates webhook deliveries trust besides the system's
    #: (PMD_WEBHOOK_CA_FILE: tests deliver to a receiver with a certificate of their own).
    webhook_ca_file: Path | None = None
    #: --webhook-allow-local / PMD_WEBHOOK_ALLOW_LOCAL: webhooks may reach loopback and
    #: private addresses (model/webhook_rules.py reads it from the environment).
    webhook_allow_local: bool = False
    #: Signal only the main command itself instead of its whole process group.
    single_child: bool = False
    #: What a received signal becomes before it is passed on to the main command; 0 drops
    #: it. Holds the default job-control rewrites too (see `job_control_rewrites`).
    rewrite: dict[int, int] = field(default_factory=dict)
    #: The signal pmd gets when its parent dies (prctl PR_SET_PDEATHSIG), or None.
    pdeathsig: int | None = None
    #: pmd stops itself after passing on TSTP, TTIN or TTOU (when it is not PID 1).
    job_control: bool = True
    #: Run programs.json (and keep state and logs). Off for a bare compatibility start.
    programs: bool = True
    #: pmd's own reactions to TERM/INT/QUIT (shutdown), HUP (reload), USR1 (reopen logs).
    #: Off for a bare compatibility start, which only passes signals on, as tini does.
    own_signals: bool = True
    #: pmd's own log level when asked for (PMD_LOG_LEVEL, tini's or dumb-init's -v), or
    #: None for the rule of pid1.main.log_level.
    log_level: str | None = None
    #: Warn about every orphan reaped (tini's -w).
    warn_reap: bool = False
    #: The main command starts with the signal mask pmd's caller gave pmd (tini restores
    #: it for its child); otherwise with an empty one (dumb-init's way, and pmd's).
    keep_mask: bool = False
    #: Which tool's command line started pmd ("tini", "dumb-init") or None: it decides
    #: the wording of a few error lines and the exit code of a main command that cannot run.
    compat: str | None = None
    #: A second listener that serves only /livez, /readyz and /startupz, without a key,
    #: answered by a thread of its own (api/probeport.py): (host, port) or None.
    probe_address: tuple[str, int] | None = None
    #: Seconds between a TERM (or INT, QUIT) and the start of the shutdown, during which
    #: /readyz says 503 and every program keeps running (an orchestrator's endpoints
    #: catch up meanwhile). A second signal skips what is left of it.
    shutdown_delay: float = 0.0
    #: The orchestrator's whole budget from its TERM to its KILL (Kubernetes'
    #: terminationGracePeriodSeconds), or None when pmd was not told.
    termination_grace: float | None = None
    #: A test hook (PMD_TEST_WEDGE): USR2 blocks pmd's loop this many seconds; 0: off.
    wedge_seconds: float = 0.0
    #: Start boot programs from a boot plan before pmd's imports (pid1/early.py);
    #: PMD_BOOT_PLAN=0 turns it off (the plan is then neither read nor written).
    boot_plan: bool = True
    #: --write-boot-plan: write the boot plan into the config dir and exit (an image's
    #: build step), instead of starting.
    write_boot_plan: bool = False


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _remap(text: str) -> dict[int, int]:
    result: dict[int, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        src, sep, dst = part.partition(":")
        if not sep:
            raise ValueError(f"--remap-exit takes FROM:TO pairs, got {part!r}")
        a, b = int(src), int(dst)
        if not (0 <= a <= 255 and 0 <= b <= 255):
            raise ValueError("exit codes are 0-255")
        result[a] = b
    return result


def parse_signal(text: str) -> int:
    """A signal by name (TERM, SIGTERM, RTMIN+1) or number; ValueError if there is none."""
    name = text.strip().upper()
    if name.isdigit():
        number = int(name)
    else:
        name = name if name.startswith("SIG") else "SIG" + name
        base, plus, offset = name.partition("+")
        if base in ("SIGRTMIN", "SIGRTMAX"):
            number = getattr(signal, base) + (int(offset) if plus else 0)
        elif not plus and hasattr(signal.Signals, name):
            number = signal.Signals[name].value
        else:
            raise ValueError(f"no signal named {text!r}")
    if number not in signal.valid_signals():
        raise ValueError(f"no signal numbered {number}")
    return int(number)


#: Signals pmd never receives, so they cannot be the left side of a rewrite.
_NOT_RECEIVED = {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD}

#: dumb-init's job-control rewrites, on when signals go to the process group: a stopped
#: group whose parent is in another session (an orphaned group) ignores TSTP, TTIN and
#: TTOU with the default action, so only STOP really suspends it.
JOB_CONTROL = {signal.SIGTSTP: signal.SIGSTOP, signal.SIGTTIN: signal.SIGSTOP,
               signal.SIGTTOU: signal.SIGSTOP}


def parse_rewrites(parts: list[str]) -> dict[int, int]:
    """`SIG:SIG` pairs (names or numbers); a target of 0 drops the signal."""
    result: dict[int, int] = {}
    for part in parts:
        src, sep, dst = part.partition(":")
        if not sep:
            raise ValueError(f"--rewrite takes SIG:SIG, got {part!r}")
        source = parse_signal(src)
        if source in _NOT_RECEIVED:
            raise ValueError(f"--rewrite: pmd never receives {signal.Signals(source).name}")
        result[source] = 0 if dst.strip() == "0" else parse_signal(dst)
    return result


def job_control_rewrites(rewrite: dict[int, int], single_child: bool) -> dict[int, int]:
    """The rewrites in force: the user's, over the job-control defaults in group mode."""
    if single_child:
        return dict(rewrite)
    return {**{int(k): int(v) for k, v in JOB_CONTROL.items()}, **rewrite}


def _seconds(parser: argparse.ArgumentParser, what: str, text: str) -> float:
    """A number of seconds, 0 or more, or a usage error naming the setting."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        parser.error(f"{what} must be a number of seconds, got {text!r}")
    if not math.isfinite(value) or value < 0:
        parser.error(f"{what} must be a number of seconds, 0 or more, got {text!r}")
    return value


def parse_probe_address(text: str | None) -> tuple[str, int] | None:
    """`PORT` or `HOST:PORT` (`[::1]:PORT` for IPv6) for the probe listener; None for
    none (empty, or -1). The host defaults to every IPv4 address: an orchestrator probes
    the pod's address, not its loopback."""
    if text is None or text.strip() in ("", "-1"):
        return None
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host = "0.0.0.0"
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected [HOST:]PORT with a port 0-65535, got {text!r}")
    return host, int(port)


def _flag(name: str) -> bool:
    return (_env(name, "0") or "0").lower() not in ("0", "false", "no", "off")


#: The level names logging knows (logging.getLevelNamesMapping()), kept here so that the
#: settings are checked without importing logging before a first start's spawns.
LEVEL_NAMES = frozenset({"CRITICAL", "FATAL", "ERROR", "WARN", "WARNING", "INFO", "DEBUG",
                         "NOTSET"})


def env_log_level() -> str | None:
    """PMD_LOG_LEVEL, upper-cased, or None when it is not set."""
    level = _env("PMD_LOG_LEVEL")
    return level.upper() if level else None


def _terminal_columns() -> int:
    """shutil.get_terminal_size().columns: COLUMNS when it is a positive number, else the
    width of the terminal on stdout, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, at the width argparse gives it (the terminal's, less 2),
    without importing shutil for it: argparse makes a formatter at every add_argument, and
    shutil (with bz2 and lzma) was 1.6 ms of every start before its first spawn."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_columns() - 2 if width is None else width)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pmd_init",
        formatter_class=_HelpFormatter,
        description="pmd: container init (PID 1) and process supervisor with an HTTP API.",
        epilog="Every flag has an environment variable (PMD_CONFIG_DIR, PMD_STATE_DIR, "
        "PMD_LOG_DIR, PMD_HOST, PMD_PORT, PMD_SOCKET, PMD_API_KEY, PMD_API_KEY_FILE, "
        "PMD_TLS_CERT, PMD_TLS_KEY, PMD_TLS_CLIENT_CA, "
        "PMD_GRACE, PMD_REMAP_EXIT, PMD_LOG_FORWARD, PMD_LOG_ROOTS, PMD_RATE_LIMIT, "
        "PMD_RATE_BURST, PMD_CORS_ORIGINS, PMD_SINGLE_CHILD, PMD_REWRITE, PMD_PDEATHSIG, "
        "PMD_PROBE_PORT, PMD_SHUTDOWN_DELAY, PMD_TERMINATION_GRACE). "
        "Anything after -- is the main command: pmd exits with its exit code. "
        "`pmd_init --compat tini|dumb-init ARGS...` (the pmd-tini and pmd-dumb-init "
        "scripts) reads tini's or dumb-init's command line instead.",
    )
    p.add_argument("--version", action="version", version=f"pmd_init {__version__}")
    p.add_argument("--config-dir", default=_env("PMD_CONFIG_DIR", "/etc/pmd"),
                   help="folder of programs.json (default /etc/pmd)")
    p.add_argument("--state-dir", default=_env("PMD_STATE_DIR", "/var/lib/pmd"),
                   help="folder of ephemeral.json and re-exec state (default /var/lib/pmd)")
    p.add_argument("--log-dir", default=_env("PMD_LOG_DIR", "/var/log/pmd"),
                   help="root of program logs (default /var/log/pmd)")
    p.add_argument("--host", default=_env("PMD_HOST", "127.0.0.1"),
                   help="HTTP address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(_env("PMD_PORT", "9615") or 9615),
                   help="HTTP port, 0 for any free port, -1 for no TCP listener (default 9615)")
    p.add_argument("--socket", default=_env("PMD_SOCKET", "/run/pmd/pmd.sock"),
                   help="Unix socket path, mode 0600; '' for none (default /run/pmd/pmd.sock)")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--api-key", default=None, help="require this API key (or PMD_API_KEY)")
    keys.add_argument("--api-key-file", default=None,
                      help="read the API key from this file (or PMD_API_KEY_FILE)")
    p.add_argument("--tls-cert", default=_env("PMD_TLS_CERT"),
                   help="serve the TCP API over TLS with this certificate chain (PEM)")
    p.add_argument("--tls-key", default=_env("PMD_TLS_KEY"),
                   help="the TLS private key (PEM); default: the key in --tls-cert's file")
    p.add_argument("--tls-client-ca", default=_env("PMD_TLS_CLIENT_CA"),
                   help="CA certificates (PEM) whose client certificates are accepted and "
                   "map to identities (mTLS); needs --tls-cert")
    p.add_argument("--grace", default=_env("PMD_GRACE", "8"),
                   help="seconds the whole shutdown may take (default 8)")
    p.add_argument("--shutdown-delay", default=_env("PMD_SHUTDOWN_DELAY", "0"),
                   metavar="SECONDS",
                   help="on TERM, answer /readyz with 503 and keep every program running "
                   "this long before stopping them; a second TERM skips it (default 0)")
    p.add_argument("--termination-grace", default=_env("PMD_TERMINATION_GRACE"),
                   metavar="SECONDS",
                   help="the orchestrator's time from its TERM to its KILL (Kubernetes' "
                   "terminationGracePeriodSeconds): the shutdown fits in it (default: "
                   "not known)")
    p.add_argument("--probe-port", default=_env("PMD_PROBE_PORT"), metavar="[HOST:]PORT",
                   help="also serve /livez, /readyz and /startupz (no key) on this port, "
                   "on all addresses unless HOST is given (default: API listeners only)")
    p.add_argument("--remap-exit", default=_env("PMD_REMAP_EXIT", ""),
                   help="map the main command's exit codes, e.g. 143:0,130:0")
    p.add_argument("--log-roots", default=_env("PMD_LOG_ROOTS", "/var/log"),
                   help="colon-separated folders where API-given log files may live, "
                   "besides --log-dir (default /var/log)")
    p.add_argument("--no-api", action="store_true", help="do not serve HTTP at all")
    p.add_argument("--write-boot-plan", action="store_true",
                   help="write boot-plan.json into the config dir and exit: run at an "
                   "image's build, it lets the container's first start spawn its boot "
                   "programs before pmd's imports (docs/performance.md)")
    p.add_argument("--webhook-allow-local", action="store_true",
                   default=_flag("PMD_WEBHOOK_ALLOW_LOCAL"),
                   help="let webhooks reach loopback, private and link-local addresses "
                   "(a receiver inside the container or its pod); off by default")
    p.add_argument("--rate-limit", type=int, default=int(_env("PMD_RATE_LIMIT", "100") or 100),
                   help="requests a minute per client address on the process API, 0 for no "
                   "limit (default 100; the Unix socket is never limited)")
    p.add_argument("--rate-burst", type=int, default=int(_env("PMD_RATE_BURST", "20") or 20),
                   help="requests in 10 seconds per client address, 0 for no burst limit "
                   "(default 20)")
    p.add_argument("--cors-origins", default=_env("PMD_CORS_ORIGINS", "*"),
                   help="comma-separated origins browsers may call the API from (default *)")
    p.add_argument("--single-child", action="store_true", default=_flag("PMD_SINGLE_CHILD"),
                   help="pass signals to the main command only, not to its process group")
    p.add_argument("--rewrite", action="append", metavar="SIG:SIG",
                   default=[r for r in (_env("PMD_REWRITE", "") or "").split(",") if r.strip()],
                   help="pass signal SIG on as another one, 0 to drop it (repeatable; in "
                   "group mode TSTP, TTIN and TTOU become STOP unless rewritten)")
    p.add_argument("--pdeathsig", metavar="SIG", default=_env("PMD_PDEATHSIG"),
                   help="the signal pmd gets when its parent dies, e.g. TERM or KILL")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="-- CMD ARGS...: the main command")
    return p


def parse_settings(argv: list[str] | None = None) -> Settings:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    api_key = args.api_key or _env("PMD_API_KEY")
    key_file = args.api_key_file or _env("PMD_API_KEY_FILE")
    if key_file and not args.api_key:
        try:
            api_key = Path(key_file).read_text().strip()
        except OSError as exc:
            parser.error(f"cannot read the API key file {key_file}: {exc.strerror}")
        if not api_key:
            parser.error(f"the API key file {key_file} is empty")
    tls = {name: Path(value).absolute() if value else None for name, value in
           (("cert", args.tls_cert), ("key", args.tls_key), ("client_ca", args.tls_client_ca))}
    if tls["cert"] is None and (tls["key"] or tls["client_ca"]):
        parser.error("--tls-key and --tls-client-ca need --tls-cert")
    try:
        remap = _remap(args.remap_exit or "")
    except ValueError as exc:
        parser.error(str(exc))
    grace = _seconds(parser, "--grace (PMD_GRACE)", args.grace)
    delay = _seconds(parser, "--shutdown-delay (PMD_SHUTDOWN_DELAY)", args.shutdown_delay)
    termination = None if args.termination_grace in (None, "") else _seconds(
        parser, "--termination-grace (PMD_TERMINATION_GRACE)", args.termination_grace)
    try:
        probe = parse_probe_address(args.probe_port)
    except ValueError as exc:
        parser.error(f"--probe-port (PMD_PROBE_PORT): {exc}")
    if probe is not None and args.no_api:
        parser.error("--probe-port needs the HTTP stack: drop --no-api")
    wedge = _seconds(parser, "PMD_TEST_WEDGE", _env("PMD_TEST_WEDGE", "0") or "0")
    if not -1 <= args.port <= 65535:
        parser.error("--port must be 0-65535 (or -1 for none)")
    try:
        rewrite = parse_rewrites(args.rewrite)
        pdeathsig = parse_signal(args.pdeathsig) if args.pdeathsig else None
    except ValueError as exc:
        parser.error(str(exc))
    forward = forward_mode(_env("PMD_LOG_FORWARD", "1") or "1")
    if forward is None:
        parser.error("PMD_LOG_FORWARD must be 1, 0, prefixed, timestamped, raw, json or off")
    roots = [Path(r) for r in (args.log_roots or "").split(":") if r]
    try:
        ephemeral_grace = float(_env("PMD_EPHEMERAL_GRACE") or 600.0)
    except ValueError:
        parser.error("PMD_EPHEMERAL_GRACE must be a number of seconds")
    try:
        memory_interval = float(_env("PMD_MEMORY_INTERVAL") or 5.0)
    except ValueError:
        parser.error("PMD_MEMORY_INTERVAL must be a number of seconds")
    ca_file = _env("PMD_WEBHOOK_CA_FILE")
    log_level = env_log_level()
    boot_plan = _env("PMD_BOOT_PLAN", "1")
    if boot_plan not in ("0", "1"):
        parser.error("PMD_BOOT_PLAN must be 1 or 0")
    if log_level is not None and log_level not in LEVEL_NAMES:
        parser.error(f"PMD_LOG_LEVEL: unknown level {log_level!r}")
    return Settings(
        config_dir=Path(args.config_dir).absolute(),
        state_dir=Path(args.state_dir).absolute(),
        log_dir=Path(args.log_dir).absolute(),
        host=args.host,
        port=args.port,
        socket=Path(args.socket).absolute() if args.socket else None,
        api_key=api_key,
        tls_cert=tls["cert"],
        tls_key=tls["key"],
        tls_client_ca=tls["client_ca"],
        grace=grace,
        shutdown_delay=delay,
        termination_grace=termination,
        probe_address=probe,
        wedge_seconds=wedge,
        command=command,
        remap_exit=remap,
        log_forward=forward,
        log_roots=roots,
        api=not args.no_api,
        rate_limit=max(0, args.rate_limit),
        rate_burst=max(0, args.rate_burst),
        cors_origins=tuple(o.strip() for o in args.cors_origins.split(",") if o.strip()),
        ephemeral_grace=max(0.0, ephemeral_grace),
        memory_interval=memory_interval,
        webhook_ca_file=Path(ca_file).absolute() if ca_file else None,
        webhook_allow_local=args.webhook_allow_local,
        log_level=log_level,
        single_child=args.single_child,
        rewrite=job_control_rewrites(rewrite, args.single_child),
        pdeathsig=pdeathsig,
        boot_plan=boot_plan == "1",
        write_boot_plan=args.write_boot_plan,
    )


def forward_mode(value: str) -> str | None:
    """PMD_LOG_FORWARD: a mode of logs.capture.FORWARD_MODES, or the switch it was
    (1/true/yes/on: prefixed; 0/false/no: off); None when it is neither."""
    value = value.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return "prefixed"
    if value in ("0", "false", "no"):
        return "off"
    return value if value in ("prefixed", "timestamped", "raw", "json", "off") else None
