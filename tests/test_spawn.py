"""spawn's errors, from real execs: what failed, and the exit code a shell (and tini)
gives a command that could not run."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pmd_init.supervisor import spawn as spawn_module
from pmd_init.supervisor.spawn import Spawner, SpawnError, SpawnRequest, spawn


@pytest.fixture(autouse=True, params=["fork_exec", "popen"])
def spawn_path(request: pytest.FixtureRequest,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test here runs on both of spawn's paths: fork_exec called directly (this
    Python's), and Popen, which a Python whose fork_exec is unknown to spawn goes through."""
    if request.param == "popen":
        monkeypatch.setattr(spawn_module, "_FORK_EXEC_TAIL", None)
    elif spawn_module._FORK_EXEC_TAIL is None:
        pytest.skip("this Python's fork_exec is not one spawn calls directly")
    yield request.param


def spawn_error(argv: list[str]) -> SpawnError:
    with pytest.raises(SpawnError) as caught:
        spawn(SpawnRequest(argv=argv, env=dict(os.environ)))
    return caught.value


def test_a_missing_binary_is_enoent_and_127(tmp_path: Path) -> None:
    error = spawn_error([str(tmp_path / "no-such-binary")])
    assert (error.errno, error.exit_code) == (errno.ENOENT, 127)
    assert "command not found" in str(error)


def test_a_file_without_execute_permission_is_eacces_and_126(tmp_path: Path) -> None:
    # a folder whose name reads like the other case: the code comes from errno, not text
    folder = tmp_path / "not found"
    folder.mkdir()
    script = folder / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    if os.geteuid() == 0 and os.access(script, os.X_OK):
        pytest.skip("root with execute permission everywhere")
    error = spawn_error([str(script)])
    assert (error.errno, error.exit_code) == (errno.EACCES, 126)


def test_an_executable_that_is_no_program_is_enoexec_and_126(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00\x01 not a program\n")
    junk.chmod(0o755)
    error = spawn_error([str(junk)])
    assert (error.errno, error.exit_code) == (errno.ENOEXEC, 126)


@pytest.mark.parametrize("number, code", [
    (errno.ENOENT, 127), (errno.EACCES, 126), (errno.ENOEXEC, 126), (errno.ENOTDIR, 126),
    (errno.EISDIR, 126), (None, 126),
])
def test_exit_code_follows_errno(number: int | None, code: int) -> None:
    assert SpawnError("whatever the text says: not found", number).exit_code == code


@pytest.mark.parametrize("busy", [False, True])
def test_an_extra_fd_reaches_the_child_at_its_number_whether_or_not_pmd_uses_it(
        busy: bool) -> None:
    target = 250
    held = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    if busy:  # our own fd at that number: the child moves the pipe there itself
        os.dup2(held, target, inheritable=False)
    else:
        assert os.get_inheritable(held) is False
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        child = spawn(SpawnRequest(
            argv=["python3", "-c", f"import os; os.write({target}, b'hello\\n')"],
            env=dict(os.environ), extra_fd=(w, target)))
        os.close(w)
        assert os.read(r, 100) == b"hello\n"
        os.waitpid(child.pid, 0)
        child.returncode = 0
        if busy:  # ours is untouched
            assert os.path.samestat(os.fstat(target), os.fstat(held))
        else:  # the copy made for the spawn is closed again
            with pytest.raises(OSError):
                os.fstat(target)
    finally:
        os.close(r)
        os.close(held)
        if busy:
            os.close(target)


def test_the_child_gets_its_environment_directory_session_and_only_its_fds(
        tmp_path: Path, spawn_path: str) -> None:
    """What a program sees is the same on both paths: its environment only, its working
    directory, a session of its own, /dev/null as stdin, stdout where pmd put it, and no
    fd of pmd's beyond those."""
    leaked = os.open("/dev/null", os.O_RDONLY)  # inheritable: close_fds must close it
    os.set_inheritable(leaked, True)
    r, w = os.pipe2(os.O_CLOEXEC)
    script = ("import os; print(os.environ.get('ONLY'), ','.join(sorted(os.environ)), os.getcwd(),"
              " os.getsid(0) == os.getpid(), os.path.realpath('/proc/self/fd/0'),"
              " sorted(int(fd) for fd in os.listdir('/proc/self/fd')))")
    try:
        child = spawn(SpawnRequest(argv=[sys.executable, "-c", script], env={"ONLY": "yes"},
                                   cwd=str(tmp_path), stdout=w))
        assert isinstance(child, subprocess.Popen) is (spawn_path == "popen")
        os.close(w)
        w = -1
        out = b""
        while part := os.read(r, 4096):
            out += part
        _, status = os.waitpid(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    finally:
        os.close(r)
        os.close(leaked)
        if w >= 0:
            os.close(w)
    assert child.returncode == 0
    only, names, cwd, own_session, stdin, fds = out.decode().split(" ", 5)
    assert (only, cwd, own_session, stdin) == ("yes", str(tmp_path), "True", "/dev/null")
    # Python sets LC_CTYPE in its own environment when the locale is C
    assert set(names.split(",")) - {"LC_CTYPE"} == {"ONLY"}
    assert fds.strip() == "[0, 1, 2, 3]"  # 3: the listing's own


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(SpawnError) as caught:
        spawn(SpawnRequest(argv=["true"], env=dict(os.environ),
                           cwd=str(tmp_path / "gone")))
    assert "gone" in str(caught.value) and "does not exist" in str(caught.value)


def _open_fds() -> set[int]:
    """This process's descriptors (not the one the listing itself held)."""
    return {int(fd) for fd in os.listdir("/proc/self/fd")
            if os.path.lexists(f"/proc/self/fd/{fd}")}


def _run(spawner: Spawner, argv: list[str], env: dict[str, str]) -> str:
    """One spawn through `spawner` with stdout on a pipe; what the child printed."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        child = spawner.spawn(SpawnRequest(argv=argv, env=env, stdout=w))
        os.close(w)
        w = -1
        out = b""
        while part := os.read(r, 4096):
            out += part
        os.waitpid(child.pid, 0)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    return out.decode()


def test_a_spawner_reuses_only_what_is_the_same_and_keeps_one_devnull(
        spawn_path: str) -> None:
    """A restart spawns the same argv again: what the spawner kept of the last spawn
    serves it only while the environment is the same; a changed variable (an edited
    env file, a reload) reaches the child, a PATH too. Every child's stdin is the one
    /dev/null the spawner holds, close-on-exec: spawns open no descriptor of their own
    (Popen's path opens its own, as Popen does)."""
    before = _open_fds()
    spawner = Spawner()
    held = _open_fds() - before
    assert len(held) == 1  # its /dev/null, from the start
    fd = next(iter(held))
    assert os.readlink(f"/proc/self/fd/{fd}") == "/dev/null"
    assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    argv = ["sh", "-c", 'echo "$X $(readlink /proc/self/fd/0)"']
    path = os.environ.get("PATH", "/usr/bin:/bin")
    assert _run(spawner, argv, {"X": "one", "PATH": path}) == "one /dev/null\n"
    assert _open_fds() - before == held
    assert _run(spawner, argv, {"X": "one", "PATH": path}) == "one /dev/null\n"
    assert _run(spawner, argv, {"X": "two", "PATH": path}) == "two /dev/null\n"
    assert _open_fds() - before == held
    with pytest.raises(SpawnError, match="command not found"):  # sh is not along this PATH
        spawner.spawn(SpawnRequest(argv=argv, env={"X": "three", "PATH": "/nonexistent"}))
    os.close(fd)


def test_devnull_is_subprocesss(spawn_path: str) -> None:
    # spawn takes subprocess.DEVNULL (the supervisor's, probes', hooks') without importing
    # subprocess itself (pid1/early.py spawns before pmd imports it)
    assert spawn_module.DEVNULL == subprocess.DEVNULL
    w = -1
    r, w = os.pipe()
    try:
        child = spawn(SpawnRequest(argv=["sh", "-c", "echo out; echo err >&2"],
                                   env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=w))
        os.close(w)
        w = -1
        assert os.read(r, 100) == b"err\n"
        os.waitpid(child.pid, 0)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


ENOTDIR_REPORT = b"OSError:%x:noexec" % errno.ENOTDIR  # the chdir failed: no exec


@pytest.mark.parametrize("report, kind, args", [
    (b"OSError:2:", FileNotFoundError, (errno.ENOENT, os.strerror(errno.ENOENT), "prog")),
    (ENOTDIR_REPORT, NotADirectoryError, (errno.ENOTDIR, os.strerror(errno.ENOTDIR), "/dir")),
    (b"SubprocessError:0:Exception occurred in preexec_fn.", subprocess.SubprocessError,
     ("Exception occurred in preexec_fn.",)),
    (b"ValueError:0:bad value", ValueError, ("bad value",)),
    (b"NoSuchName:0:text", subprocess.SubprocessError, ("text",)),
    (b"garbage", subprocess.SubprocessError, ("Bad exception data from child: b'garbage'",)),
])
def test_a_childs_report_is_the_exception_popen_raises(
        report: bytes, kind: type, args: tuple[object, ...]) -> None:
    error = spawn_module._exec_error(report, "prog", "/dir")
    assert type(error) is kind
    if isinstance(error, OSError):
        assert (error.errno, error.strerror, error.filename) == args
    else:
        assert error.args == args
