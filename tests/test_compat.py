"""tini's and dumb-init's command lines (`pmd_init --compat ...`, the `pmd-tini` and
`pmd-dumb-init` scripts): help, version, bad usage and a command that cannot run, with
the exit codes and streams the originals document. Signals: integration/test_main_command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pmd_init import __version__
from pmd_init.pid1 import compat, main

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("PMD_", "TINI_", "DUMB_INIT_"))}
    return subprocess.run([sys.executable, "-m", "pmd_init", "--compat", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=30,
                          env={**clean, "PYTHONPATH": str(ROOT), **(env or {})})


def test_the_console_scripts_exist():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["pmd-tini"] == "pmd_init.pid1.main:tini"
    assert scripts["pmd-dumb-init"] == "pmd_init.pid1.main:dumb_init"
    assert callable(main.tini) and callable(main.dumb_init)


# ---- tini ----------------------------------------------------------------------------


def test_tini_version_and_help_on_stdout():
    version = run("tini", "--version")
    assert (version.returncode, version.stderr) == (0, "")
    assert __version__ in version.stdout
    helped = run("tini", "-h")
    assert helped.returncode == 0 and "-e CODE" in helped.stdout and helped.stderr == ""
    licence = run("tini", "-l")
    assert licence.returncode == 0 and "MIT" in licence.stdout


@pytest.mark.parametrize("args", [[], ["-x", "true"], ["-e", "256", "true"],
                                  ["-e", "x", "true"], ["-p", "NOPE", "true"],
                                  ["-R", "A", "true"]])
def test_tini_bad_usage_exits_1_on_stderr(args):
    bad = run("tini", *args)
    assert bad.returncode == 1 and bad.stdout == "" and bad.stderr


@pytest.mark.parametrize("path,code", [("/nonexistent/cmd", 127), ("/etc/hostname", 126)])
def test_tini_a_command_that_cannot_run(path, code):
    failed = run("tini", "--", path)
    assert failed.returncode == code
    # tini's line: "[FATAL tini (PID)] exec CMD failed: REASON"
    assert re.match(rf"\[FATAL pmd-tini \(\d+\)\] exec {path} failed: \S", failed.stderr)
    assert "Traceback" not in failed.stderr


def test_tini_and_dumb_init_word_bad_options_as_the_c_library_does():
    assert run("tini", "-x", "true").stderr.startswith("pmd-tini: invalid option -- 'x'\n")
    assert run("dumb-init", "--yolo", "true").stderr == \
        "pmd-dumb-init: unrecognized option '--yolo'\n"
    assert run("dumb-init", "true", "-r").returncode == 0  # options end at the command
    assert run("dumb-init", "-r").stderr == \
        "pmd-dumb-init: option requires an argument -- 'r'\n"


def test_tini_exit_codes_and_remap():
    assert run("tini", "--", "sh", "-c", "exit 3").returncode == 3
    assert run("tini", "-e", "3", "-e", "4", "--", "sh", "-c", "exit 3").returncode == 0
    assert run("tini", "--", "sh", "-c", "kill -TERM $$").returncode == 143
    quiet = run("tini", "-s", "--", "sh", "-c", "echo out; exit 0")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "out\n", "")


def test_tini_settings():
    s = compat.parse_tini(["-g", "-w", "-vv", "-p", "SIGKILL", "-e", "143", "cmd", "-x"],
                          "pmd-tini")
    assert s.command == ["cmd", "-x"]  # options stop at the command
    assert (s.single_child, s.warn_reap, s.log_level) == (False, True, "DEBUG")
    assert (s.pdeathsig, s.remap_exit, s.rewrite) == (signal.SIGKILL, {143: 0}, {})
    assert (s.programs, s.api, s.own_signals, s.job_control) == (False, False, False, False)
    assert compat.parse_tini(["cmd"], "pmd-tini").single_child  # tini's default


# ---- dumb-init -----------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_dumb_init_version_on_stderr(flag):
    version = run("dumb-init", flag)
    assert (version.returncode, version.stdout) == (0, "")
    assert version.stderr == f"pmd-dumb-init v{__version__}\n"


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_dumb_init_help_on_stderr(flag):
    helped = run("dumb-init", flag)
    assert (helped.returncode, helped.stdout) == (0, "")
    assert "--single-child" in helped.stderr and "--rewrite" in helped.stderr


@pytest.mark.parametrize("args", [[], ["--yolo", "true"], ["-r", "15", "true"],
                                  ["-r", "15:x", "true"], ["-r", "x:3", "true"],
                                  ["-r", "15:3", "-r"]])
def test_dumb_init_bad_usage_exits_1(args):
    bad = run("dumb-init", *args)
    assert bad.returncode == 1 and bad.stderr


@pytest.mark.parametrize("value", ["", "herp", "15", "15::12", "15:derp", "0", "1:32"])
def test_dumb_init_words_a_bad_rewrite_as_dumb_init_does(value):
    bad = run("dumb-init", "-r", "15:12", "-r", value, "echo", "hi")
    assert (bad.returncode, bad.stderr) == (1, (
        "Usage: -r option takes <signum>:<signum>, where <signum> is between 1 and 31.\n"
        "This option can be specified multiple times.\nUse --help for full usage.\n"))


def test_dumb_init_without_a_command_prints_its_two_usage_lines():
    alone = run("dumb-init")
    assert (alone.returncode, alone.stderr) == (
        1, "Usage: pmd-dumb-init [option] program [args]\n"
           "Try pmd-dumb-init --help for full usage.\n")


def test_dumb_init_a_command_that_cannot_run_exits_2():
    failed = run("dumb-init", "/nonexistent/cmd")
    assert failed.returncode == 2
    assert failed.stderr == "[pmd-dumb-init] /nonexistent/cmd: No such file or directory\n"


def test_dumb_init_settings_and_environment(monkeypatch):
    monkeypatch.delenv("DUMB_INIT_SETSID", raising=False)
    s = compat.parse_dumb_init(["-r", "15:3", "--rewrite", "TSTP:0", "cmd"],
                               "pmd-dumb-init")
    assert s.rewrite == {signal.SIGTERM: signal.SIGQUIT, signal.SIGTSTP: 0,
                         signal.SIGTTIN: signal.SIGSTOP, signal.SIGTTOU: signal.SIGSTOP}
    assert (s.single_child, s.job_control, s.programs) == (False, True, False)
    monkeypatch.setenv("DUMB_INIT_SETSID", "0")
    monkeypatch.setenv("DUMB_INIT_DEBUG", "1")
    s = compat.parse_dumb_init(["cmd"], "pmd-dumb-init")
    assert (s.single_child, s.rewrite, s.log_level) == (True, {}, "DEBUG")


def test_a_compat_start_runs_programs_only_when_asked(monkeypatch, tmp_path):
    for key in ("PMD_CONFIG_DIR", "PMD_PORT", "PMD_SOCKET"):
        monkeypatch.delenv(key, raising=False)
    assert not compat.parse_tini(["cmd"], "pmd-tini").programs
    monkeypatch.setenv("PMD_CONFIG_DIR", str(tmp_path))
    s = compat.parse_tini(["cmd"], "pmd-tini")
    assert (s.programs, s.own_signals, s.config_dir) == (True, True, tmp_path)
    assert (s.port, s.socket) == (-1, None)  # no listener unless asked for too


def test_compat_needs_a_known_tool():
    assert run("nope").returncode == 2
    assert run().returncode == 2
