"""Starting a process: the only place pmd forks.

The C fork+exec that `subprocess.Popen` itself uses (`_posixsubprocess.fork_exec`: vfork
when no Python must run in the child, no preexec_fn for programs), called with exactly
what a program needs: a new session so signals reach the whole process group, every fd
but stdio (and the ones passed) closed, the signal dispositions Python changed reset, and
the privilege drop (uid, gid, groups). Popen's own Python around that call (its handles,
pipes, locks, the environment's encoding and the errors' decoding) was a third of a
restart's spawn; the exec's errors are read and reported as Popen reports them. On a
Python whose fork_exec takes other arguments than the ones known here, Popen is used.
pmd never waits on the child: the reaper owns waitpid and writes the status back into
`returncode`.

One fd besides stdio can be given to the child at a number of pmd's choosing (`extra_fd`,
for s6's notification-fd). Popen keeps a passed fd at the number it has, so the copy must
be at that number in pmd already: when the number is free in pmd, a copy is put there
just for the spawn and nothing changes in the child's path. When pmd uses that number
itself (low numbers always are: the loop's epoll, its wakeup pipe, log files), the child
moves it with one dup2 in a preexec_fn; Popen then forks instead of vforking, for such a
program's spawns only (every other spawn keeps the fast path).

A child inherits the signal mask of the thread that forks it. pmd keeps the fault signals
and PIPE blocked in its own threads (pid1/signals.py says why); they are unblocked around
each fork, so every child starts with the mask its program would get from a shell.
"""

from __future__ import annotations

import _signal
import builtins
import fcntl
import os
import pwd
import resource
import shlex
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from errno import EACCES, ENOENT, ENOTDIR
from typing import TYPE_CHECKING, Any

# subprocess (with locale and selectors, 2 ms) is imported by the spawns that need it
# only: a Python whose fork_exec is unknown (Popen), a child's report of a failed exec.
# pid1/early.py spawns the boot programs through this module before pmd imports it.
if TYPE_CHECKING:
    import subprocess

_fork_exec: Callable[..., int] | None
try:
    from _posixsubprocess import fork_exec as _fork_exec
except ImportError:  # not a POSIX Python
    _fork_exec = None

#: Blocked in every thread of pmd, never in a child.
WAITED = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL,
                    signal.SIGTRAP, signal.SIGSYS, signal.SIGPIPE})

#: subprocess.DEVNULL (tests/test_spawn.py holds it to subprocess's).
DEVNULL = -3

SHELL_PATHS = {"bash": "bash", "zsh": "zsh", "fish": "fish", "sh": "sh", "tmux": "bash"}


class SpawnError(Exception):
    """The program could not be executed; the message is shown in its status. `errno` is
    the OS's reason when there is one (exec or chdir failed), None for pmd's own refusals."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno

    @property
    def exit_code(self) -> int:
        """A shell's and tini's code for a command that could not run: 127 when it does
        not exist, 126 when it exists but cannot be executed (or for any other reason)."""
        return 127 if self.errno == ENOENT else 126


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    groups: tuple[int, ...]


def resolve_account(user: str | None) -> Account | None:
    """None means: run as pmd's own user, with pmd's environment untouched."""
    if user is None:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SpawnError(f"user '{user}' does not exist") from None
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        raise SpawnError(f"cannot run as '{user}': pmd is not root")
    try:
        groups = tuple(os.getgrouplist(user, entry.pw_gid))
    except OSError:
        groups = (entry.pw_gid,)
    return Account(user, entry.pw_uid, entry.pw_gid, entry.pw_dir, groups)


def build_argv(command: str, terminal_shell: str | None) -> list[str]:
    """Split like a shell splits words, without a shell; or hand the line to a login shell
    (which loads the user's profile first) when terminal_shell asks for one."""
    if terminal_shell:
        shell = SHELL_PATHS[terminal_shell]
        return [shell, "-l", "-c", command]
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise SpawnError(f"cannot split command: {exc}") from None
    if not argv:
        raise SpawnError("empty command")
    return argv


@dataclass(slots=True)
class SpawnRequest:
    argv: list[str]
    env: dict[str, str]
    cwd: str | None = None
    account: Account | None = None
    stdout: int | None = None  # an fd, or None to inherit pmd's
    stderr: int | None = None
    stdin_devnull: bool = True
    #: an fd for the child's stdin (a hook's event pipe, an exec's), over stdin_devnull
    stdin_fd: int | None = None
    new_session: bool = True
    extra: dict[str, object] = field(default_factory=dict)
    #: Python run in the child before exec. Only the main command has one (it must take
    #: the terminal in the child); programs never do: it costs 5-50 ms a spawn.
    preexec: Callable[[], None] | None = None
    #: (an fd of pmd's, the number the child gets it at): readiness `fd`.
    extra_fd: tuple[int, int] | None = None
    #: Sockets passed with systemd's protocol: (name, pmd's fd), given at 3, 4, ... in
    #: this order, with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (the child's own pid).
    listen_fds: list[tuple[str, int]] = field(default_factory=list)
    #: (RLIMIT_*, soft, hard) set in the child before exec.
    rlimits: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass(slots=True)
class Prespawned:
    """A boot program started before the supervisor existed (pid1/early.py: a boot plan),
    with what it was started with. Its instance takes it over in place of a spawn when
    what it would spawn now is the same (`matches`); otherwise it is killed."""

    name: str
    popen: Spawned
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    account: Account | None
    rlimits: list[tuple[int, int, int]]
    #: The read ends of its stdout and stderr pipes (none when its logs are off).
    pipes: tuple[int, int] | None
    #: time.time() and time.monotonic() at the spawn.
    started_at: float
    started_mono: float
    #: Taken over by its instance, or discarded: either happens once.
    settled: bool = False

    def matches(self, argv: list[str], env: Mapping[str, str], cwd: str | None,
                account: Account | None, rlimits: list[tuple[int, int, int]],
                logs: bool) -> bool:
        return (self.argv == argv and self.env == dict(env) and self.cwd == cwd
                and self.account == account and self.rlimits == rlimits
                and (self.pipes is not None) == logs)

    def exited(self, status: int | None) -> None:
        """The reaper's report of a discarded one's exit."""
        if status is not None:
            self.popen.returncode = describe_exit(status)

    def discard(self, kill: Callable[[int, int], bool] | None = None) -> None:
        """Kill its process group (with `kill`, a runtime's killpg) and close its pipes
        (the reaper collects the exit)."""
        if self.settled:
            return
        self.settled = True
        (kill or killpg)(self.popen.pid, signal.SIGKILL)
        if self.pipes is not None:
            for fd in self.pipes:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.pipes = None


class Process:
    """A started child: its pid, and its exit code once the reaper has written it back
    (a shell's: the code, or -N for signal N, as Popen's `returncode`). Not its argv:
    each running program holds one for as long as it runs, and nothing reads it."""

    __slots__ = ("pid", "returncode")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def __repr__(self) -> str:
        return f"<Process {self.pid} returncode={self.returncode}>"


if TYPE_CHECKING:
    #: What spawn returns (Popen only on a Python whose fork_exec is unknown).
    Spawned = Process | subprocess.Popen[bytes]

#: fork_exec's parameters on the Pythons whose subprocess calls it the way spawn does.
_FORK_EXEC_PARAMETERS = (
    "args", "executable_list", "close_fds", "pass_fds", "cwd", "env", "p2cread", "p2cwrite",
    "c2pread", "c2pwrite", "errread", "errwrite", "errpipe_read", "errpipe_write",
    "restore_signals", "call_setsid", "pgid_to_set", "gid", "extra_groups", "uid",
    "child_umask", "preexec_fn")


def _fork_exec_tail() -> tuple[bool, ...] | None:
    """What follows preexec_fn in this Python's fork_exec call: (allow_vfork,) on 3.11 to
    3.13, nothing where that argument is gone; None when the parameters are not the ones
    spawn knows (a later Python): spawn then goes through Popen."""
    if _fork_exec is None:
        return None
    text: str | None = getattr(_fork_exec, "__text_signature__", None)
    # subprocess's own switch; True unless set, and set only once subprocess is imported
    vfork = (bool(getattr(sys.modules.get("subprocess"), "_USE_VFORK", True)),)
    if text is None:  # 3.11's fork_exec has no signature; its call is 3.12's
        return vfork if sys.version_info[:2] == (3, 11) else None
    names = tuple(name.strip() for name in text.strip("()").split(","))
    names = tuple(name for name in names if name not in ("$module", "/", ""))
    names = tuple("extra_groups" if name == "groups_list" else name for name in names)
    if names == (*_FORK_EXEC_PARAMETERS, "allow_vfork"):
        return vfork
    if names == _FORK_EXEC_PARAMETERS:
        return ()
    return None


_FORK_EXEC_TAIL = _fork_exec_tail()


@dataclass(frozen=True, slots=True)
class Encoded:
    """What fork_exec takes of an argv and an environment, as bytes: the arguments, the
    paths to try for the program (its PATH search), and the NAME=value list."""

    env: dict[str, str]  # a copy of the environment it was made from
    args: list[bytes]
    executables: tuple[bytes, ...]
    env_list: list[bytes]


def encode(argv: list[str], env: Mapping[str, str]) -> Encoded:
    """ValueError for a variable whose name holds "=" (as Popen)."""
    args = [os.fsencode(arg) for arg in argv]
    env_list = []
    for key, value in env.items():
        if "=" in key:
            raise ValueError("illegal environment variable name")
        env_list.append(os.fsencode(f"{key}={value}"))
    executable = args[0]
    if b"/" in executable:
        executables: tuple[bytes, ...] = (executable,)
    else:  # as os.execvpe: along the program's PATH
        executables = tuple(os.path.join(os.fsencode(folder), executable)
                            for folder in os.get_exec_path(env))
    return Encoded(dict(env), args, executables, env_list)


#: Encoded argvs and environments a Spawner keeps (the most recently used).
ENCODED_KEPT = 32


class Spawner:
    """`spawn` with what one spawn leaves for the next: one /dev/null, opened with the
    spawner and kept (close-on-exec: a re-exec lets go of it), for every child's stdin, so
    that pmd's open files are the same before its first spawn and after; and the encoded
    argv, PATH search and environment of recent spawns, reused by a spawn of the same argv
    whose environment is the same, compared by content (a restart's, unless its env file
    or the configuration changed). Encoding 35 variables and searching PATH cost more than
    the rest of a restart's Python before the fork."""

    __slots__ = ("_devnull", "_encoded")

    def __init__(self) -> None:
        self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self._encoded: dict[tuple[str, ...], Encoded] = {}

    def spawn(self, req: SpawnRequest) -> Spawned:
        return spawn(req, self)

    def devnull(self) -> int:
        return self._devnull

    def encode(self, argv: list[str], env: Mapping[str, str]) -> Encoded:
        key = tuple(argv)
        kept = self._encoded.pop(key, None)
        if kept is None or kept.env != env:
            kept = encode(argv, env)
            if len(self._encoded) >= ENCODED_KEPT:
                del self._encoded[next(iter(self._encoded))]  # the least recently used
        self._encoded[key] = kept
        return kept


def spawn(req: SpawnRequest, spawner: Spawner | None = None) -> Spawned:
    """Fork and exec; raises SpawnError with a readable reason when exec cannot happen.
    `spawner`: its /dev/null and encodings are used (otherwise made for this spawn)."""
    uid = gid = None
    groups: list[int] | None = None
    if req.account is not None and req.account.uid != os.geteuid():
        uid, gid, groups = req.account.uid, req.account.gid, list(req.account.groups)
    preexec = req.preexec
    placed: int | None = None
    env = req.env
    pass_fds: tuple[int, ...] = ()
    if req.listen_fds or req.rlimits:
        assert preexec is None  # programs have none; the main command has no sockets
        moves = [(fd, 3 + index) for index, (_, fd) in enumerate(req.listen_fds)]
        if req.extra_fd is not None:
            moves.append(req.extra_fd)
        env = dict(req.env)
        if req.listen_fds:
            env.update(listen_env(req.listen_fds))
        preexec = in_child(moves, req.rlimits, req.argv,
                           env if req.listen_fds else None)
        pass_fds = tuple(target for _, target in moves)
    elif req.extra_fd is not None:
        source, target = req.extra_fd
        placed, move = place_fd(source, target)
        pass_fds = (target,)
        if move is not None:
            assert preexec is None  # programs have none; the main command has no extra fd
            preexec = move
    stdin = req.stdin_fd if req.stdin_fd is not None \
        else DEVNULL if req.stdin_devnull else None
    held = _signal.pthread_sigmask(signal.SIG_UNBLOCK, WAITED)
    try:
        if _FORK_EXEC_TAIL is None:
            return _popen(req, env, stdin, pass_fds, preexec, uid, gid, groups)
        return _fork_and_exec(req.argv, env, req.cwd, stdin, req.stdout, req.stderr,
                              pass_fds, req.new_session, uid, gid, groups, preexec, spawner)
    except FileNotFoundError as exc:
        if req.cwd and exc.filename == req.cwd:
            raise SpawnError(f"directory '{req.cwd}' does not exist", exc.errno) from None
        raise SpawnError(f"command not found: {req.argv[0]}", exc.errno) from None
    except PermissionError as exc:
        what = exc.filename or req.argv[0]
        raise SpawnError(f"permission denied: {what}", exc.errno) from None
    except NotADirectoryError as exc:
        raise SpawnError(f"not a directory: {exc.filename or req.cwd}", exc.errno) from None
    except OSError as exc:
        raise SpawnError(f"cannot execute {req.argv[0]}: {exc.strerror or exc}",
                         exc.errno) from None
    except (ValueError, KeyError) as exc:
        raise SpawnError(f"cannot execute {req.argv[0]}: {exc}") from None
    except Exception as exc:
        # Popen's SubprocessError, or _exec_error's: subprocess is imported when it is one
        subprocess_module = sys.modules.get("subprocess")
        if subprocess_module is None or not isinstance(exc, subprocess_module.SubprocessError):
            raise
        raise SpawnError(f"cannot execute {req.argv[0]}: {exc}") from None
    finally:
        _signal.pthread_sigmask(signal.SIG_SETMASK, held)
        if placed is not None:
            os.close(placed)


def _fork_and_exec(argv: list[str], env: Mapping[str, str], cwd: str | None,
                   stdin: int | None, stdout: int | None, stderr: int | None,
                   pass_fds: tuple[int, ...], new_session: bool, uid: int | None,
                   gid: int | None, groups: list[int] | None,
                   preexec: Callable[[], None] | None,
                   spawner: Spawner | None = None) -> Process:
    """Popen's POSIX spawn without Popen: stdin, stdout and stderr each an fd, DEVNULL,
    or None (pmd's own); raises what Popen raises when the exec (or the chdir) fails."""
    devnull = -1  # opened for this spawn alone (no spawner)
    fds = [-1 if fd is None else fd for fd in (stdin, stdout, stderr)]
    if DEVNULL in fds:
        if spawner is not None:
            null = spawner.devnull()
        else:
            null = devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        fds = [null if fd == DEVNULL else fd for fd in fds]
    try:
        encoded = spawner.encode(argv, env) if spawner is not None else encode(argv, env)
        # The child reports a failed exec (or chdir) here, as "ExceptionName:hex errno:";
        # a successful exec closes it (close-on-exec), and the read sees EOF.
        errpipe_read, errpipe_write = os.pipe2(os.O_CLOEXEC)
        if errpipe_write < 3:  # pmd without a stdin or stdout: the child dup2s over those
            low, errpipe_write = errpipe_write, fcntl.fcntl(errpipe_write,
                                                            fcntl.F_DUPFD_CLOEXEC, 3)
            os.close(low)
        try:
            try:
                assert _fork_exec is not None
                pid = _fork_exec(
                    encoded.args, encoded.executables, True,
                    tuple(sorted({*pass_fds, errpipe_write})),
                    cwd, encoded.env_list, fds[0], -1, -1, fds[1], -1, fds[2],
                    errpipe_read, errpipe_write, True, new_session,
                    -1 if new_session else 0, gid, groups, uid, -1, preexec,
                    *(_FORK_EXEC_TAIL or ()))
            finally:
                os.close(errpipe_write)
            report = b""
            while part := os.read(errpipe_read, 50000):
                report += part
                if len(report) > 50000:
                    break
        finally:
            os.close(errpipe_read)
    finally:
        if devnull >= 0:
            os.close(devnull)
    if report:
        _reap_failed(pid)
        raise _exec_error(report, argv[0], cwd)
    return Process(pid)


def _reap_failed(pid: int) -> None:
    """A child whose exec failed has exited already: collected here, as Popen does, so
    that the reaper never hears of a process nobody started."""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _exec_error(report: bytes, argv0: str, cwd: str | None) -> Exception:
    """The exception Popen raises for the child's report of a failed exec or chdir."""
    try:
        name, hex_errno, message = report.split(b":", 2)
        text = message.decode()
    except ValueError:
        import subprocess

        return subprocess.SubprocessError(f"Bad exception data from child: {report!r}")
    kind = getattr(builtins, name.decode("ascii", "replace"), None)
    if not (isinstance(kind, type) and issubclass(kind, Exception)):
        import subprocess

        kind = subprocess.SubprocessError
    if issubclass(kind, OSError) and hex_errno:
        number = int(hex_errno, 16)
        never = text == "noexec"  # the exec was never called: the chdir failed
        if number:
            text = os.strerror(number)
        elif never:
            text = ""
        return kind(number, text, cwd if never else argv0)
    return kind(text)


def _popen(req: SpawnRequest, env: Mapping[str, str], stdin: int | None,
           pass_fds: tuple[int, ...], preexec: Callable[[], None] | None,
           uid: int | None, gid: int | None, groups: list[int] | None) -> Spawned:
    """The same spawn through subprocess.Popen, for a Python whose fork_exec is unknown."""
    import subprocess

    kwargs: dict[str, Any] = {}
    if uid is not None:
        kwargs.update(user=uid, group=gid, extra_groups=groups)
    if req.new_session:
        kwargs["start_new_session"] = True
    else:
        kwargs["process_group"] = 0
    return subprocess.Popen(req.argv, executable=None, stdin=stdin, stdout=req.stdout,
                            stderr=req.stderr, cwd=req.cwd, env=env, close_fds=True,
                            restore_signals=True, preexec_fn=preexec, pass_fds=pass_fds,
                            **kwargs)


def place_fd(source: int, target: int) -> tuple[int | None, Callable[[], None] | None]:
    """Arrange for a child to get `source` at `target`, with `target` in pass_fds: either
    a copy at `target` in pmd, to close after the spawn (F_DUPFD hands out the lowest free
    number from `target` up, atomically, so it is `target` exactly when that was free),
    or, when pmd uses `target` itself, the dup2 for the child to run before exec."""
    if source == target:
        return None, None
    copy = fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, target)
    if copy == target:
        return copy, None
    os.close(copy)

    def move() -> None:  # in the child, after fork: a plain system call, no import
        os.dup2(source, target)

    return None, move


def listen_env(listen_fds: list[tuple[str, int]]) -> dict[str, str]:
    """systemd's sd_listen_fds variables (LISTEN_PID is set in the child), and
    PMD_SOCKET_<NAME> = the fd number for programs that do not speak the protocol."""
    env = {"LISTEN_FDS": str(len(listen_fds)),
           "LISTEN_FDNAMES": ":".join(name for name, _ in listen_fds)}
    for index, (name, _) in enumerate(listen_fds):
        env["PMD_SOCKET_" + name.upper()] = str(3 + index)
    return env


def in_child(moves: list[tuple[int, int]], rlimits: list[tuple[int, int, int]],
             argv: list[str], env: dict[str, str] | None) -> Callable[[], None]:
    """What runs in the child between fork and exec (after the privilege drop, before
    Popen's own exec): put each (fd, target) at its target, set the rlimits, and, when
    `env` is given (sockets), exec the program here with LISTEN_PID = its own pid, which
    nobody knows before the fork. If that exec fails, Popen's exec of the same argv
    follows and reports the error as it does for every program (127, 126)."""
    top = max([3, *(target for _, target in moves), *(fd for fd, _ in moves)]) + 1

    def run() -> None:  # plain system calls: nothing imported, nothing allocated much
        # First out of the way (a source may sit at another one's target), then in place.
        staged = [(fcntl.fcntl(fd, fcntl.F_DUPFD, top), target) for fd, target in moves]
        for fd, target in staged:
            os.dup2(fd, target)  # inheritable, as dup2 makes it
            os.close(fd)
        for which, soft, hard in rlimits:
            resource.setrlimit(which, (soft, hard))
        if env is None:
            return
        env["LISTEN_PID"] = str(os.getpid())
        try:
            os.execvpe(argv[0], argv, env)
        except OSError:
            return

    return run


def cannot_run(argv0: str, env: Mapping[str, str], cwd: str | None
               ) -> tuple[str, SpawnError] | None:
    """Why an exec of `argv0` would fail before any process exists, found the way Popen
    finds it (a name with a slash from `cwd`, a bare name along the environment's PATH):
    ("directory" or "command", the error), or None when it would run. A check before
    the spawn, for requests that create and start in one step; the spawn itself still
    reports what changes in between."""
    if cwd is not None and not os.path.isdir(cwd):
        number = ENOENT if not os.path.exists(cwd) else ENOTDIR
        what = "does not exist" if number == ENOENT else "is not a directory"
        return "directory", SpawnError(f"directory '{cwd}' {what}", number)
    if "/" in argv0:
        candidates = [argv0]
    else:
        candidates = [os.path.join(folder, argv0) for folder in os.get_exec_path(dict(env))]
    found = [c for c in candidates
             if os.path.isfile(os.path.join(cwd, c) if cwd and not os.path.isabs(c) else c)]
    if not found:
        return "command", SpawnError(f"command not found: {argv0}", ENOENT)
    if not any(os.access(os.path.join(cwd, c) if cwd and not os.path.isabs(c) else c,
                         os.X_OK) for c in found):
        return "command", SpawnError(f"permission denied: {found[0]}", EACCES)
    return None


def program_env(
    base: Mapping[str, str],
    account: Account | None,
    extra: dict[str, str],
    display: str | None,
    port: int | None,
) -> dict[str, str]:
    env = dict(base)
    if account is not None:
        env.update(HOME=account.home, USER=account.name, LOGNAME=account.name)
    env.update(extra)
    if display:
        env["DISPLAY"] = display
    if port is not None:  # the instance's own port wins over a PORT in `environment`
        env["PORT"] = str(port)
    return env


def describe_exit(status: int) -> int:
    """waitpid status to a shell-style code: the exit code, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def kill(pid: int, signum: int) -> bool:
    """Signal one process (a program's main pid alone); False if gone."""
    try:
        os.kill(pid, signum)
        return True
    except OSError:
        return False


def killpg(pid: int, signum: int) -> bool:
    """Signal a process group (the program and everything it started); False if gone."""
    try:
        os.killpg(pid, signum)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        try:
            os.kill(pid, signum)
            return True
        except OSError:
            return False
