"""pmd_init's command line: flags, environment variables, --help, --version, bad flags."""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pmd_init import __version__
from pmd_init.settings import LEVEL_NAMES, _terminal_columns, build_parser, parse_settings

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pmd_init", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=30)


def test_help_and_version():
    helped = run("--help")
    assert helped.returncode == 0
    assert "--config-dir" in helped.stdout and "PMD_GRACE" in helped.stdout
    version = run("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"pmd_init {__version__}"


def test_a_bad_flag_prints_usage_and_exits_2():
    bad = run("--no-such-flag")
    assert bad.returncode == 2
    assert "usage: pmd_init" in bad.stderr


def test_defaults(monkeypatch):
    for key in ("PMD_CONFIG_DIR", "PMD_STATE_DIR", "PMD_LOG_DIR", "PMD_HOST", "PMD_PORT",
                "PMD_SOCKET", "PMD_API_KEY", "PMD_API_KEY_FILE", "PMD_GRACE"):
        monkeypatch.delenv(key, raising=False)
    s = parse_settings([])
    assert (str(s.config_dir), str(s.state_dir), str(s.log_dir)) == \
        ("/etc/pmd", "/var/lib/pmd", "/var/log/pmd")
    assert (s.host, s.port, str(s.socket), s.api_key, s.grace) == \
        ("127.0.0.1", 9615, "/run/pmd/pmd.sock", None, 8.0)
    assert s.command == []


def test_environment_and_flags(monkeypatch, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    monkeypatch.setenv("PMD_CONFIG_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("PMD_PORT", "1234")
    monkeypatch.setenv("PMD_GRACE", "2.5")
    monkeypatch.setenv("PMD_API_KEY_FILE", str(key_file))
    monkeypatch.setenv("PMD_REMAP_EXIT", "143:0")
    s = parse_settings(["--host", "::1", "--", "sh", "-c", "exit 3"])
    assert s.config_dir == tmp_path / "c"
    assert (s.port, s.grace, s.api_key, s.host) == (1234, 2.5, "s3cret", "::1")
    assert s.remap_exit == {143: 0}
    assert s.command == ["sh", "-c", "exit 3"]
    assert parse_settings(["--api-key", "flag-wins"]).api_key == "flag-wins"


@pytest.mark.parametrize("args", [["--grace", "-1"], ["--port", "70000"],
                                  ["--remap-exit", "143"], ["--api-key-file", "/nonexistent"]])
def test_bad_values_exit_2(args):
    with pytest.raises(SystemExit) as info:
        parse_settings(args)
    assert info.value.code == 2


def test_variables_without_a_flag(monkeypatch, tmp_path):
    """The knobs tests and operators set in pmd's environment only: read here, once, and
    passed down (no other module reads the environment; tests/test_module_state.py)."""
    for key in ("PMD_MEMORY_INTERVAL", "PMD_WEBHOOK_CA_FILE", "PMD_LOG_LEVEL",
                "PMD_EPHEMERAL_GRACE"):
        monkeypatch.delenv(key, raising=False)
    s = parse_settings([])
    assert (s.memory_interval, s.webhook_ca_file, s.log_level, s.ephemeral_grace) == \
        (5.0, None, None, 600.0)
    monkeypatch.setenv("PMD_MEMORY_INTERVAL", "0.2")
    monkeypatch.setenv("PMD_WEBHOOK_CA_FILE", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("PMD_LOG_LEVEL", "debug")
    monkeypatch.setenv("PMD_EPHEMERAL_GRACE", "1.5")
    s = parse_settings([])
    assert (s.memory_interval, s.webhook_ca_file, s.log_level, s.ephemeral_grace) == \
        (0.2, tmp_path / "ca.pem", "DEBUG", 1.5)


@pytest.mark.parametrize("name, value", [("PMD_MEMORY_INTERVAL", "often"),
                                         ("PMD_EPHEMERAL_GRACE", "soon"),
                                         ("PMD_LOG_LEVEL", "chatty")])
def test_bad_variables_exit_2(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as info:
        parse_settings([])
    assert info.value.code == 2


def test_signal_flags_and_their_environment(monkeypatch):
    for key in ("PMD_SINGLE_CHILD", "PMD_REWRITE", "PMD_PDEATHSIG"):
        monkeypatch.delenv(key, raising=False)
    s = parse_settings([])
    assert (s.single_child, s.pdeathsig) == (False, None)
    # group mode: dumb-init's job-control rewrites
    stop = signal.SIGSTOP
    assert s.rewrite == {signal.SIGTSTP: stop, signal.SIGTTIN: stop, signal.SIGTTOU: stop}
    s = parse_settings(["--rewrite", "TERM:QUIT", "--rewrite", "SIGTSTP:TSTP",
                        "--rewrite", "RTMIN+1:0", "--pdeathsig", "KILL"])
    assert s.rewrite[signal.SIGTERM] == signal.SIGQUIT
    assert s.rewrite[signal.SIGTSTP] == signal.SIGTSTP  # the user's word wins
    assert s.rewrite[signal.SIGRTMIN + 1] == 0
    assert s.pdeathsig == signal.SIGKILL
    assert parse_settings(["--single-child"]).rewrite == {}  # no defaults for one child
    monkeypatch.setenv("PMD_SINGLE_CHILD", "1")
    monkeypatch.setenv("PMD_REWRITE", "15:3,USR1:0")
    monkeypatch.setenv("PMD_PDEATHSIG", "SIGTERM")
    s = parse_settings([])
    assert s.single_child and s.pdeathsig == signal.SIGTERM
    assert s.rewrite == {signal.SIGTERM: signal.SIGQUIT, signal.SIGUSR1: 0}


@pytest.mark.parametrize("args", [["--rewrite", "TERM"], ["--rewrite", "KILL:TERM"],
                                  ["--rewrite", "TERM:NOPE"], ["--pdeathsig", "99"]])
def test_bad_signal_flags_exit_2(args):
    with pytest.raises(SystemExit) as info:
        parse_settings(args)
    assert info.value.code == 2


def test_log_level_rule(monkeypatch):
    from pmd_init.pid1.main import log_level

    monkeypatch.delenv("PMD_LOG_LEVEL", raising=False)
    plain = parse_settings([])
    main = parse_settings(["--", "sh"])
    assert log_level(plain, stderr_is_tty=True) == "INFO"
    assert log_level(main, stderr_is_tty=False) == "INFO"
    # an interactive main command's screen is not pmd's log, unless asked
    assert log_level(main, stderr_is_tty=True) == "WARNING"
    monkeypatch.setenv("PMD_LOG_LEVEL", "info")
    assert log_level(parse_settings(["--", "sh"]), stderr_is_tty=True) == "INFO"


@pytest.mark.parametrize(("args", "env", "named"), [
    (["--shutdown-delay", "-1"], {}, "--shutdown-delay"),
    ([], {"PMD_SHUTDOWN_DELAY": "soon"}, "PMD_SHUTDOWN_DELAY"),
    ([], {"PMD_TERMINATION_GRACE": "nan"}, "PMD_TERMINATION_GRACE"),
    (["--termination-grace", "-5"], {}, "--termination-grace"),
    ([], {"PMD_GRACE": "ten"}, "PMD_GRACE"),
    (["--grace", "inf"], {}, "--grace"),
    (["--probe-port", "http"], {}, "--probe-port"),
    (["--probe-port", "70000"], {}, "--probe-port"),
])
def test_bad_shutdown_and_probe_settings_are_usage_errors(args, env, named):
    import os

    result = run(*args, env={**os.environ, **env, "PMD_CONFIG_DIR": "/nonexistent"})
    assert result.returncode == 2
    assert named in result.stderr and "Traceback" not in result.stderr


def test_shutdown_and_probe_settings(monkeypatch):
    monkeypatch.setenv("PMD_SHUTDOWN_DELAY", "5")
    monkeypatch.setenv("PMD_TERMINATION_GRACE", "30")
    monkeypatch.setenv("PMD_PROBE_PORT", "9616")
    s = parse_settings([])
    assert (s.shutdown_delay, s.termination_grace, s.probe_address) == \
        (5.0, 30.0, ("0.0.0.0", 9616))
    s = parse_settings(["--probe-port", "[::1]:0", "--shutdown-delay", "0.5"])
    assert (s.probe_address, s.shutdown_delay) == (("::1", 0), 0.5)
    monkeypatch.delenv("PMD_PROBE_PORT")
    monkeypatch.delenv("PMD_TERMINATION_GRACE")
    assert (parse_settings([]).probe_address, parse_settings([]).termination_grace) == \
        (None, None)


def test_the_level_names_checked_without_logging_are_loggings_own() -> None:
    # PMD_LOG_LEVEL is checked before logging is imported (a first start spawns first)
    assert LEVEL_NAMES == set(logging.getLevelNamesMapping())


@pytest.mark.parametrize("columns", [None, "50", "200", "0", "wide"])
def test_help_is_as_wide_as_argparse_makes_it(monkeypatch, columns: str | None) -> None:
    # pmd's formatter asks for the terminal's width without shutil (settings are parsed
    # before a first start's first spawn): the same width, the same help
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert _terminal_columns() == shutil.get_terminal_size().columns
    parser = build_parser()
    ours = parser.format_help(), parser.format_usage()
    parser.formatter_class = argparse.HelpFormatter
    assert ours == (parser.format_help(), parser.format_usage())


def test_a_start_before_its_first_spawn_leaves_what_it_needs_later_unimported() -> None:
    # what pid1/entry.py imports and runs before the boot plan's programs (and, without a
    # plan, before pydantic): argparse's formatter, the signal set-up, the plan's key and
    # the spawn module would each import one of these, which pmd needs only later
    code = ("import sys\n"
            "before = set(sys.modules)\n"
            "from pmd_init.pid1 import early, entry, signals\n"
            "from pmd_init.settings import parse_settings\n"
            "parse_settings([])\n"
            "new = set(sys.modules) - before\n"
            "later = {'shutil', 'socket', 'hashlib', 'subprocess'}\n"
            "print(' '.join(sorted(later & new)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=30, check=True)
    assert done.stdout.split() == []
