"""`pmd exec`, the real client against a real pmd: a terminal, stdin byte for byte, exit
codes (128+N for a signal, 127 for a missing command), signals passed on, a client that dies
taking its command along, and a detached command that outlives it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.helpers import API, wait_until
from tests.api.process_helpers import ENV
from tests.harness import ROOT, Pmd

KEY = "exec-secret"


@pytest.fixture(scope="module")
def pmd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pmd]:
    base: Path = tmp_path_factory.mktemp("exec-cli")
    with Pmd(base, [], env=ENV, api_key=KEY) as running:
        yield running


def _env(pmd: Pmd, tcp: bool) -> dict[str, str]:
    env = {**os.environ, "PMD_SOCKET": str(pmd.socket), "PYTHONPATH": str(ROOT)}
    for name in ("PMD_URL", "PMD_API_KEY"):
        env.pop(name, None)
    if tcp:
        env.update(PMD_URL=pmd.url, PMD_API_KEY=KEY)
    return env


def pmd_exec(pmd: Pmd, *args: str, stdin: bytes | None = None, tcp: bool = False,
             timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "pmd_init.cli.pmd", "exec", *args],
                          input=stdin if stdin is not None else b"", capture_output=True,
                          env=_env(pmd, tcp), timeout=timeout)


def start_exec(pmd: Pmd, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pmd_init.cli.pmd", "exec", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(pmd, False))


def read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float = 10) -> bytes:
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} in {seen!r}"
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, f"output ended before {marker!r}: {seen!r}"
            seen += chunk
    return seen


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_terminal_name_and_exit_code(pmd: Pmd) -> None:
    result = pmd_exec(pmd, "-t", "--", "sh", "-c", "tty; exit 3")
    assert result.returncode == 3, result.stderr
    assert result.stdout.startswith(b"/dev/pts/"), result.stdout  # a terminal, CRLF ends
    assert result.stdout.endswith(b"\r\n")


def test_without_terminal_stdout_and_stderr_stay_apart(pmd: Pmd) -> None:
    result = pmd_exec(pmd, "--", "sh", "-c", "tty; echo out; echo err >&2; exit 4")
    assert result.returncode == 4
    assert result.stdout == b"not a tty\nout\n"
    assert result.stderr == b"err\n"


def test_ten_mebibytes_of_stdin_come_back_byte_for_byte(pmd: Pmd) -> None:
    data = os.urandom(10 << 20)
    result = pmd_exec(pmd, "-i", "--", "cat", stdin=data)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == len(data)
    assert result.stdout == data


def test_over_tcp_with_the_key(pmd: Pmd) -> None:
    data = os.urandom(1 << 20)
    result = pmd_exec(pmd, "-i", "--env", "GREETING=hi", "--", "sh", "-c",
                      'printf "$GREETING "; wc -c', stdin=data, tcp=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [b"hi", str(len(data)).encode()]


def test_killed_by_a_signal_exits_128_plus_n(pmd: Pmd) -> None:
    assert pmd_exec(pmd, "--", "sh", "-c", "kill -TERM $$").returncode == 143
    assert pmd_exec(pmd, "--", "sh", "-c", "kill -KILL $$").returncode == 137


def test_missing_command_is_127_with_the_reason(pmd: Pmd) -> None:
    result = pmd_exec(pmd, "--", "/no/such/binary")
    assert result.returncode == 127
    assert b"not found" in result.stderr and b"/no/such/binary" in result.stderr


def test_user_workdir_and_timeout(pmd: Pmd, tmp_path: Path) -> None:
    result = pmd_exec(pmd, "--user", "nobody", "--workdir", "/tmp", "--", "sh", "-c",
                      'id -un; pwd; echo "$HOME"')
    assert result.returncode == 0, result.stderr
    name, cwd, home = result.stdout.decode().split("\n")[:3]
    assert (name, cwd) == ("nobody", "/tmp") and home  # the account's own HOME
    timed = pmd_exec(pmd, "--timeout", "0.5", "--", "sleep", "30")
    assert timed.returncode == 137  # SIGKILL


def test_bad_user_or_directory_runs_nothing(pmd: Pmd, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = pmd_exec(pmd, "--user", "no-such-user-x", "--", "touch", str(marker))
    assert result.returncode == 1
    assert b"VALIDATION_ERROR" in result.stderr and b"user" in result.stderr
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    result = pmd_exec(pmd, "--user", "nobody", "--workdir", str(closed), "--", "touch",
                      str(marker))
    assert result.returncode == 1 and b"directory" in result.stderr
    assert b"cannot be entered by nobody" in result.stderr
    assert not marker.exists()


def test_sigint_to_the_client_reaches_the_command(pmd: Pmd) -> None:
    proc = start_exec(pmd, "--", "sh", "-c",
                      'trap "echo got-INT; exit 5" INT; echo ready; '
                      "while :; do sleep 0.05; done")
    try:
        read_until(proc, b"ready")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
        assert b"got-INT" in out
        assert proc.returncode == 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_killing_the_client_kills_the_command(pmd: Pmd) -> None:
    proc = start_exec(pmd, "--", "sh", "-c", "echo $$; exec sleep 60")
    line = read_until(proc, b"\n")
    pid = int(line.split()[0])
    assert alive(pid)
    proc.kill()
    proc.wait()
    wait_until(lambda: not alive(pid), 5, "the command to be gone")


def test_a_detached_command_survives_its_client(pmd: Pmd) -> None:
    proc = start_exec(pmd, "-d", "--", "sh", "-c", "echo $$; exec sleep 60")
    line = read_until(proc, b"\n")
    pid = int(line.split()[0])
    proc.kill()
    proc.wait()
    time.sleep(2.5)  # past the hang-up grace a non-detached command gets
    assert alive(pid)
    listed = pmd.uds.get(f"{API}/quick-start").json()["ephemeral_programs"]
    (entry,) = [e for e in listed if e.get("kind") == "exec" and e.get("pid") == pid]
    assert entry["status"] == "running" and entry["command"] == "sh -c 'echo $$; exec sleep 60'"
    stopped = pmd.uds.post(f"{API}/quick-start/{entry['temporary_id']}/stop").json()
    assert stopped["success"] is True
    wait_until(lambda: not alive(pid), 5, "the detached command to stop")
    status = wait_until(lambda: (s := pmd.uds.get(
        f"{API}/quick-start/{entry['temporary_id']}/status").json())["status"] == "exited"
        and s, 5, "its status to say exited")
    assert status["exit_code"] == 143 and status["signal"] == "SIGTERM"


def test_a_terminal_here_raw_mode_window_size_and_ctrl_c(pmd: Pmd) -> None:
    """`pmd exec -t -i` in a real terminal: the local one goes raw (so ^C travels as a
    byte and the remote terminal makes it SIGINT), its size is passed on and followed."""
    env = _env(pmd, False)
    child, fd = pty.fork()
    if child == 0:  # the client, in a terminal of 33 rows and 111 columns
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
        os.execve(sys.executable, [sys.executable, "-m", "pmd_init.cli.pmd", "exec", "-t",
                                   "-i", "--", "sh"], env)
    seen = bytearray()

    def until(marker: bytes) -> None:
        deadline = time.monotonic() + 15
        while marker not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no {marker!r} in {bytes(seen)!r}"
            if select.select([fd], [], [], left)[0]:
                try:
                    seen.extend(os.read(fd, 65536))
                except OSError:
                    break

    try:
        until(b"# ")  # the remote shell's prompt: it reads its terminal from now on
        os.write(fd, b"stty size; echo s1-$((6*7))\r")
        until(b"s1-42")
        assert b"33 111" in seen
        os.write(fd, b"sleep 30\r")
        time.sleep(0.5)  # let the shell start sleep; ^C then interrupts it, not the shell
        os.write(fd, b"\x03")
        os.write(fd, b"echo after-$?\r")
        until(b"after-130")
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        time.sleep(0.3)  # SIGWINCH reaches the client, its resize message pmd
        os.write(fd, b"stty size; echo s2-$((6*7))\r")
        until(b"s2-42")
        assert b"40 120" in seen
        os.write(fd, b"exit 4\r")
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 4
    finally:
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
        os.close(fd)
