"""The main command as tini and dumb-init run theirs, through `pmd_init --` and through the
compatibility command lines (`pmd_init --compat tini|dumb-init`, what `pmd-tini` and
`pmd-dumb-init` run): every signal passed on, the process group, rewrites, TERM to what
the command leaves behind, job control, inherited dispositions and mask, the working
directory, the terminal, and an exit code after a SIGKILL at the grace deadline.

Nothing here times anything: each step waits for a marker a child writes, or for a
process state in /proc.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from integration.helpers import children, proc_state, zombies_under
from tests.harness import ROOT, Pmd, can_unshare

needs_unshare = pytest.mark.skipif(not can_unshare(), reason="needs unshare --pid (root)")

#: A main command that records every signal it gets as "<pid> <NAME>" lines, after it has
#: written its pid to `ready`. With an argument `bg` it first starts a copy of itself in
#: the background (same process group), which records into the same file.
TRAPPER = """
import os, signal, sys, time
record, ready = sys.argv[1], sys.argv[2]
SKIP = {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD, signal.SIGCONT, signal.SIGTSTP,
        signal.SIGTTIN, signal.SIGTTOU}
if len(sys.argv) > 3 and sys.argv[3] == "bg":
    import subprocess
    subprocess.Popen([sys.executable, sys.argv[0], record, ready + ".bg"])
    while not os.path.exists(ready + ".bg"):
        time.sleep(0.01)
def got(signum, frame):
    name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ \\
        else str(signum)
    with open(record, "a") as f:
        f.write(f"{os.getpid()} {name}\\n")
    if signum == signal.SIGTERM and os.environ.get("TRAP_EXIT"):
        sys.exit(int(os.environ["TRAP_EXIT"]))
for s in signal.valid_signals() - SKIP:
    try:
        signal.signal(s, got)
    except OSError:
        pass
with open(ready + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(ready + ".tmp", ready)
while True:
    signal.pause()
"""

#: How each command line asks for the same thing.
GROUP = {"pmd": [], "tini": ["-g"], "dumb-init": []}
SINGLE = {"pmd": ["--single-child"], "tini": [], "dumb-init": ["-c"]}


class Main(Pmd):
    """pmd_init with a main command, through pmd's own command line or a compat one."""

    def __init__(self, base: Path, mode: str, command: list[str], flags: list[str] = (),
                 *, pid1: bool = True, prefix: list[str] = (), listen: bool = False,
                 programs: list[dict] | None = None, **kw) -> None:
        super().__init__(base, programs if programs is not None else [], pid1=pid1,
                         command=command, **kw)
        self.mode = mode
        self.flags = list(flags)
        self.prefix = list(prefix)
        self.listen = listen

    def argv(self) -> list[str]:
        if self.mode == "pmd":
            core = [sys.executable, "-m", "pmd_init",
                    "--config-dir", str(self.config_dir), "--state-dir", str(self.state_dir),
                    "--log-dir", str(self.log_dir), "--grace", str(self.grace),
                    "--port", "-1", "--socket", str(self.socket) if self.listen else "",
                    *self.flags, "--", *self.command]
        else:
            core = [sys.executable, "-m", "pmd_init", "--compat", self.mode, *self.flags,
                    "--", *self.command]
        if self.pid1:
            core = ["unshare", "--pid", "--fork", "--mount-proc", *core]
        return [*self.prefix, *core]

    def main_pid(self, ready: Path) -> int:
        self.wait_for(ready.exists, what="the main command ready")
        return int(ready.read_text())


def trapper(tmp_path: Path, *extra: str) -> tuple[list[str], Path, Path]:
    script = tmp_path / "trapper.py"
    script.write_text(TRAPPER)
    record, ready = tmp_path / "record", tmp_path / "ready"
    return [sys.executable, str(script), str(record), str(ready), *extra], record, ready


def got(record: Path, pid: int) -> list[str]:
    if not record.exists():
        return []
    return [line.split()[1] for line in record.read_text().splitlines()
            if line.split()[0] == str(pid)]


def signum(name: str) -> int:
    if name.startswith("SIGRTM"):
        base, _, offset = name.partition("+")
        return getattr(signal, base) + int(offset or 0)
    return signal.Signals[name].value


def label(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


#: Signals that neither tini's nor pmd's old fixed list nor a default action let through.
ODD = ["SIGPWR", "SIGALRM", "SIGURG", "SIGIO", "SIGXFSZ", "SIGVTALRM", "SIGPROF",
       "SIGABRT", "SIGUSR2", "SIGWINCH", "SIGRTMIN+1", "SIGRTMAX"]

#: What a crash raises, and what a write to a closed pipe raises: sent by another process
#: they are signals like the rest.
WAITED = ["SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGSYS", "SIGPIPE"]

MODES = ["pmd", "tini", "dumb-init"]


# ---- signals -----------------------------------------------------------------------


@needs_unshare
@pytest.mark.parametrize("mode,pid1", [("pmd", True), ("pmd", False), ("tini", True),
                                       ("tini", False), ("dumb-init", True),
                                       ("dumb-init", False)])
def test_every_catchable_signal_reaches_the_group(tmp_path, mode, pid1):
    """Not as PID 1 too: ALRM, IO, PWR, ABRT used to kill pmd there with their default
    action; the real-time signals were never passed on."""
    main_got = send_each_to_the_group(tmp_path, mode, pid1, ODD)
    assert main_got.count("SIGTERM") == 1


@needs_unshare
@pytest.mark.parametrize("mode,pid1", [("pmd", True), ("pmd", False), ("dumb-init", True),
                                       ("tini", False)])
def test_fault_and_pipe_signals_sent_by_a_process_reach_the_group_and_pmd_lives(
        tmp_path, mode, pid1):
    """dumb-init's way: a `kill -SEGV` (or BUS, FPE, ILL, TRAP, SYS) from outside is
    passed on, where it used to end pmd with its default action, and so is a `kill
    -PIPE`, which used to be dropped."""
    main_got = send_each_to_the_group(tmp_path, mode, pid1, WAITED)
    assert sorted(set(main_got) - {"SIGTERM"}) == sorted(WAITED)


def send_each_to_the_group(tmp_path: Path, mode: str, pid1: bool, names: list[str]
                           ) -> list[str]:
    """Send each signal to the init, see it reach the main command and its background
    copy, check the init is alive, end with TERM; what the main command got, in order."""
    command, record, ready = trapper(tmp_path, "bg")
    init = Main(tmp_path, mode, command, GROUP[mode], pid1=pid1, env={"TRAP_EXIT": "0"})
    with init.start(wait=False):
        main = init.main_pid(ready)
        background = int(Path(f"{ready}.bg").read_text())
        for name in names:
            init.signal(signum(name))
            number = label(signum(name))
            init.wait_for(lambda n=number: n in got(record, main) and
                          n in got(record, background), what=f"{name} at both")
        assert proc_state(init.pid) not in (None, "Z")
        init.signal(signal.SIGTERM)
        assert init.wait(timeout=15) in (0, 143)
    return got(record, main)


@needs_unshare
@pytest.mark.parametrize("mode", MODES)
def test_single_child_leaves_the_rest_of_the_group_alone(tmp_path, mode):
    command, record, ready = trapper(tmp_path, "bg")
    init = Main(tmp_path, mode, command, SINGLE[mode], pid1=False, env={"TRAP_EXIT": "0"})
    with init.start(wait=False):
        main = init.main_pid(ready)
        background = int(Path(f"{ready}.bg").read_text())
        init.signal(signal.SIGUSR1)
        init.wait_for(lambda: "SIGUSR1" in got(record, main), what="USR1 at the command")
        # Had pmd signalled the group, the background copy would have USR1 pending now;
        # pending signals are handled lowest number first, so it would record USR1 before
        # this WINCH (28).
        os.kill(background, signal.SIGWINCH)
        init.wait_for(lambda: "SIGWINCH" in got(record, background), what="WINCH")
        assert got(record, background) == ["SIGWINCH"]
        os.kill(background, signal.SIGKILL)
        init.signal(signal.SIGTERM)
        init.wait(timeout=15)


@needs_unshare
@pytest.mark.parametrize("mode,flags", [("pmd", ["--rewrite", "TERM:QUIT",
                                                 "--rewrite", "USR2:0"]),
                                        ("dumb-init", ["-r", "15:3", "-r", "12:0"])])
def test_rewrite_and_drop(tmp_path, mode, flags):
    command, record, ready = trapper(tmp_path)
    with Main(tmp_path, mode, command, flags, pid1=False).start(wait=False) as init:
        main = init.main_pid(ready)
        init.signal(signal.SIGUSR2)  # dropped
        init.signal(signal.SIGTERM)  # arrives as QUIT
        init.wait_for(lambda: "SIGQUIT" in got(record, main), what="QUIT")
        os.kill(main, signal.SIGWINCH)  # after any USR2 (12) that might be pending
        init.wait_for(lambda: "SIGWINCH" in got(record, main), what="WINCH")
        assert got(record, main) == ["SIGQUIT", "SIGWINCH"]
        os.kill(main, signal.SIGKILL)
        init.wait(timeout=15)


#: A main command that leaves 200 orphans (double forks whose middle child exits at
#: once, so the grandchild is re-parented to the init), then says so and waits.
ORPHANER = """
import os, sys, time
for _ in range(200):
    if os.fork() == 0:
        if os.fork() == 0:
            time.sleep(0.05)
            os._exit(0)
        os._exit(0)
    os.wait()
open(sys.argv[1], "w").close()
time.sleep(1000)
"""


@needs_unshare
@pytest.mark.parametrize("mode,pid1,flags", [
    ("pmd", True, []), ("pmd", False, []), ("tini", True, []), ("tini", False, ["-w"]),
    ("dumb-init", True, []), ("dumb-init", False, [])])
def test_orphans_the_command_leaves_are_reaped(tmp_path, mode, pid1, flags):
    """As PID 1, and as a subreaper under another process (tini -s, which pmd always
    is); tini's -w warns about every orphan reaped, and nothing does without it."""
    script, done = tmp_path / "orphaner.py", tmp_path / "orphaned"
    script.write_text(ORPHANER)
    init = Main(tmp_path, mode, [sys.executable, str(script), str(done)], flags, pid1=pid1)
    with init.start(wait=False):
        init.wait_for(done.exists, timeout=30, what="200 orphans made")
        init.wait_for(lambda: len(children(init.pid)) == 1 and zombies_under(init.pid) == 0,
                      timeout=15, what="every orphan reaped")
        line = "Reaped zombie process with pid="  # tini's own words
        warned = init.stderr_text().count(line)
        if "-w" in flags:
            init.wait_for(lambda: init.stderr_text().count(line) >= 200,
                          what="a warning for each orphan")
        else:
            assert warned == 0
        init.signal(signal.SIGTERM)
        assert init.wait(timeout=15) == 143


@needs_unshare
@pytest.mark.parametrize("sig", [signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU])
def test_under_pmd_tini_job_control_signals_pass_on_unchanged(tmp_path, sig):
    """tini passes TSTP on and does not stop itself; pmd-tini passes all three on."""
    record, ready = tmp_path / "record", tmp_path / "ready"
    name = signal.Signals(sig).name
    # One process that catches the signal: a shell's `sleep` child would be stopped by it
    # (the group gets the signal) and hold the shell's trap back.
    command = [sys.executable, "-c",
               "import os, signal, sys\n"
               f"signal.signal({int(sig)}, lambda *_: open(sys.argv[1], 'a').write("
               f"'{name}\\n'))\n"
               "open(sys.argv[2] + '.tmp', 'w').close()\n"
               "os.rename(sys.argv[2] + '.tmp', sys.argv[2])\n"
               "while True:\n    signal.pause()\n", str(record), str(ready)]
    init = Main(tmp_path, "tini", command, ["-g"], pid1=False)
    with init.start(wait=False):
        init.wait_for(ready.exists, what="ready")
        init.signal(sig)
        init.wait_for(lambda: record.exists() and name in record.read_text(),
                      what=f"{name} at the command")
        main = children(init.pid)[0]
        assert proc_state(main) != "T" and proc_state(init.pid) != "T"
        init.signal(signal.SIGTERM)
        assert init.wait(timeout=15) == 143


@needs_unshare
@pytest.mark.parametrize("mode", MODES)
def test_only_pmd_dumb_init_lets_go_of_its_directory(tmp_path, mode):
    """dumb-init moves itself to / once the command runs, so it keeps no mount busy;
    tini and pmd stay where they were started (programs without a directory start
    there)."""
    ready = tmp_path / "ready"
    command = ["sh", "-c", f"pwd -P > {ready}.tmp; mv {ready}.tmp {ready}; sleep 1000"]
    init = Main(tmp_path, mode, command, pid1=False)
    with init.start(wait=False):
        init.wait_for(ready.exists, what="ready")
        assert Path(ready.read_text().strip()) == tmp_path.resolve()
        expected = Path("/") if mode == "dumb-init" else tmp_path.resolve()
        init.wait_for(lambda: Path(os.readlink(f"/proc/{init.pid}/cwd")) == expected,
                      what=f"pmd's directory {expected}")
        init.signal(signal.SIGTERM)
        init.wait(timeout=15)


# ---- the end of the main command ---------------------------------------------------


@needs_unshare
@pytest.mark.parametrize("mode", MODES)
def test_what_the_command_leaves_behind_gets_term(tmp_path, mode):
    """A shell that exits with a background job: the job gets TERM (not PID 1 here, so
    nothing but pmd could have sent it)."""
    command, record, ready = trapper(tmp_path)
    shell = ["sh", "-c", f"{' '.join(command)} & "
                         f"while [ ! -e {ready} ]; do sleep 0.01; done; exit 4"]
    init = Main(tmp_path, mode, shell, GROUP[mode], pid1=False)
    with init.start(wait=False):
        assert init.wait(timeout=15) == 4
        background = int(ready.read_text())
        init.wait_for(lambda: "SIGTERM" in got(record, background), what="TERM at the job")
    _reap_or_kill(background)


def _reap_or_kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@needs_unshare
def test_a_command_that_ignores_term_is_killed_at_the_deadline_with_137(tmp_path):
    command = ["sh", "-c", f"trap '' TERM; echo 1 > {tmp_path}/ready; "
                           f"while :; do sleep 0.05; done"]
    init = Main(tmp_path, "pmd", command, grace=1)
    with init.start(wait=False):
        init.wait_for((tmp_path / "ready").exists, what="ready")
        init.signal(signal.SIGTERM)
        assert init.wait(timeout=20) == 137
    err = init.stderr_text()
    assert "Traceback" not in err and "CancelledError" not in err
    assert "did not exit within the grace period" in err


# ---- job control -------------------------------------------------------------------


@needs_unshare
@pytest.mark.parametrize("mode,pid1", [("pmd", False), ("dumb-init", False), ("pmd", True)])
@pytest.mark.parametrize("sig", [signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU])
def test_job_control_stops_the_command_and_pmd_and_cont_resumes(tmp_path, mode, pid1, sig):
    ready = tmp_path / "ready"
    # No fork in the command's loop: a shell stopped while it waits for a vfork'ed child
    # that has not exec'd yet stays in D (the kernel's vfork wait), not T, for as long as
    # that child is stopped too: the job is stopped, but the shell never shows T.
    command = ["sh", "-c", f"echo $$ > {ready}.tmp; mv {ready}.tmp {ready}; exec sleep 100"]
    init = Main(tmp_path, mode, command, pid1=pid1, env={"PMD_LOG_LEVEL": "DEBUG"})
    with init.start(wait=False):
        init.main_pid(ready)
        main = children(init.pid)[0]  # as seen from here, not inside pmd's namespace
        init.signal(sig)
        init.wait_for(lambda: proc_state(main) == "T", what="the command stopped")
        if not pid1:  # as PID 1 the kernel would not stop pmd; it does not try
            init.wait_for(lambda: proc_state(init.pid) == "T", what="pmd stopped")
        init.signal(signal.SIGCONT)
        init.wait_for(lambda: proc_state(main) not in ("T", None), what="command resumed")
        assert proc_state(init.pid) != "T"
        init.signal(signal.SIGTERM)
        init.wait(timeout=15)


# ---- what the command inherits -----------------------------------------------------

#: Starts pmd with INT and HUP ignored (as nohup and some CI runners do) and TERM blocked.
HOSTILE_PARENT = [sys.executable, "-c",
                  "import os, signal, sys\n"
                  "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                  "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
                  "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
                  "os.execvp(sys.argv[1], sys.argv[1:])"]


def sig_fields(path: Path) -> dict[str, int]:
    fields = dict(re.findall(r"^(Sig\w+):\s+([0-9a-f]+)$", path.read_text(), re.M))
    return {k: int(v, 16) for k, v in fields.items()}


def bit(sig: int) -> int:
    return 1 << (sig - 1)


@needs_unshare
@pytest.mark.parametrize("mode,pid1", [("pmd", True), ("pmd", False), ("tini", True),
                                       ("tini", False), ("dumb-init", False)])
def test_ignored_signals_stay_ignored_for_the_command_and_the_mask_as_the_tool_does(
        tmp_path, mode, pid1):
    out = tmp_path / "main.status"
    # The handlers are in place before the status file says the command is up (a TERM
    # that came first would kill it: 143). Not a shell: dash clears its mask at start.
    command = [sys.executable, "-c",
               "import os, signal, sys\n"
               "for s in (signal.SIGTERM, signal.SIGUSR1):\n"
               "    signal.signal(s, lambda *_: os._exit(9))\n"
               "status = open('/proc/self/status').read()\n"
               "with open(sys.argv[1] + '.tmp', 'w') as f:\n"
               "    f.write(status)\n"
               "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
               "while True:\n    signal.pause()\n", str(out)]
    programs = [{"name": "svc", "boot": True, "startsecs": 0,
                 "command": f"sh -c 'grep ^Sig /proc/self/status > {tmp_path}/svc.tmp; "
                            f"mv {tmp_path}/svc.tmp {tmp_path}/svc.status; sleep 1000'"}]
    init = Main(tmp_path, mode, command, pid1=pid1, prefix=HOSTILE_PARENT,
                programs=programs)
    with init.start(wait=False):
        init.wait_for(out.exists, what="the command's status")
        main = sig_fields(out)
        assert main["SigIgn"] & bit(signal.SIGINT) and main["SigIgn"] & bit(signal.SIGHUP)
        # tini gives its child the mask it was given; dumb-init and pmd an empty one
        assert main["SigBlk"] == (bit(signal.SIGTERM) if mode == "tini" else 0)
        assert not main["SigIgn"] & bit(signal.SIGTERM)
        pmd = sig_fields(Path(f"/proc/{init.pid}/status"))
        # TERM was blocked by the parent; pmd blocks only what a thread of its own waits
        # for, and none of its children inherits that
        assert pmd["SigBlk"] == sum(bit(signum(name)) for name in WAITED)
        if mode == "pmd":
            svc = tmp_path / "svc.status"
            init.wait_for(svc.exists, what="the program's status")
            program = sig_fields(svc)
            assert not program["SigIgn"] & (bit(signal.SIGINT) | bit(signal.SIGHUP))
            assert program["SigBlk"] == 0
        # blocked by the parent: pmd must get it all the same (and under pmd-tini the
        # command has it blocked as its parent asked: USR1 ends it there)
        init.signal(signal.SIGUSR1 if mode == "tini" else signal.SIGTERM)
        assert init.wait(timeout=15) == 9


@needs_unshare
@pytest.mark.parametrize("mode", MODES)
def test_the_command_runs_where_pmd_was_started(tmp_path, mode):
    where = tmp_path / "a dir"
    where.mkdir()
    out = tmp_path / "cwd"
    init = Main(tmp_path, mode, ["sh", "-c", f"pwd -P > '{out}'"])
    init.start(wait=False)
    init.proc.wait(15)  # started with cwd=tmp_path by the harness
    assert Path(out.read_text().strip()) == tmp_path.resolve()
    # and from another directory
    init = Main(tmp_path, mode, ["sh", "-c", f"pwd -P > '{out}'"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert subprocess.run(init.argv(), cwd=where, env=env, timeout=30,
                          stdin=subprocess.DEVNULL, capture_output=True).returncode == 0
    assert Path(out.read_text().strip()) == where.resolve()


# ---- the parent-death signal -------------------------------------------------------


@needs_unshare
@pytest.mark.parametrize("mode,flags", [("pmd", ["--pdeathsig", "TERM"]),
                                        ("tini", ["-p", "SIGTERM"])])
def test_pdeathsig_reaches_pmd_when_its_parent_dies(tmp_path, mode, flags):
    command, record, ready = trapper(tmp_path)
    init = Main(tmp_path, mode, command, flags, pid1=False)
    go = tmp_path / "go"
    # pmd's parent is a shell that exits once the command is ready
    shell = ("\"$@\" & echo $! > " + str(tmp_path / "pmd.pid") +
             f"; while [ ! -e {go} ]; do sleep 0.01; done")
    parent = subprocess.Popen(["sh", "-c", shell, "sh", *init.argv()], cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        init.wait_for(ready.exists, what="ready")
        main = int(ready.read_text())
        pmd = int((tmp_path / "pmd.pid").read_text())
        go.write_text("1")
        parent.wait(15)
        init.wait_for(lambda: "SIGTERM" in got(record, main), what="TERM passed on")
        os.kill(main, signal.SIGKILL)
        init.wait_for(lambda: proc_state(pmd) in (None, "Z"), what="pmd gone")
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait(5)


# ---- the terminal ------------------------------------------------------------------


def _interactive_shell_once(tmp_path: Path, mode: str) -> str:
    """Run an interactive shell under pmd (PID 1) on a fresh pty, as `docker run -it`
    does; answer one command, exit 3. Returns what the terminal showed."""
    master, slave = os.openpty()
    init = Main(tmp_path, mode, ["sh", "-i"])

    def take_the_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PS1": "$ ", "ENV": ""}
    env.pop("PMD_LOG_LEVEL", None)
    proc = subprocess.Popen(init.argv(), stdin=slave, stdout=slave, stderr=slave,
                            cwd=tmp_path, env=env, start_new_session=True,
                            preexec_fn=take_the_terminal)
    os.close(slave)
    seen = b""
    try:
        os.write(master, b"echo hel''lo-$((6*7))\n")
        deadline = time.monotonic() + 20
        while b"hello-42" not in seen:
            assert time.monotonic() < deadline, f"the shell never answered: {seen!r}"
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        os.write(master, b"exit 3\n")
        assert proc.wait(20) == 3, seen
        while True:  # what is left on the terminal
            ready, _, _ = select.select([master], [], [], 0)
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        os.close(master)
    return seen.decode(errors="replace")


@needs_unshare
@pytest.mark.parametrize("mode,tries", [("pmd", 30), ("tini", 5), ("dumb-init", 5)])
def test_an_interactive_shell_gets_the_terminal_every_time(tmp_path, mode, tries):
    for attempt in range(tries):
        shown = _interactive_shell_once(tmp_path, mode)
        assert "hello-42" in shown, f"try {attempt}: {shown!r}"
        # pmd's own INFO lines stay off the command's screen
        assert " pmd INFO " not in shown, f"try {attempt}: {shown!r}"


# ---- no HTTP stack without a listener ----------------------------------------------


@needs_unshare
@pytest.mark.parametrize("listen", [False, True])
def test_no_listener_loads_nothing_of_the_api(tmp_path, listen):
    """The HTTP parser's shared library (httptools, which sanic imports) shows in pmd's
    memory map exactly when a listener was asked for."""
    ready = tmp_path / "ready"
    command = ["sh", "-c", f"echo $$ > {ready}; while :; do sleep 0.05; done"]
    with Main(tmp_path, "pmd", command, listen=listen).start(wait=False) as init:
        init.wait_for(ready.exists, what="ready")
        line = "API on unix:" if listen else "HTTP API: none (no port, no socket)"
        init.wait_for(lambda: line in init.stderr_text(), what=line)
        maps = Path(f"/proc/{init.pid}/maps").read_text()
        assert ("httptools" in maps) == listen
        init.signal(signal.SIGTERM)
        init.wait(timeout=15)


@needs_unshare
def test_no_api_line_with_an_empty_address_after_the_command_is_done(tmp_path):
    init = Main(tmp_path, "pmd", ["true"], listen=True)
    init.start(wait=False)
    assert init.wait(timeout=15) == 0
    assert not re.search(r"API on\s*$", init.stderr_text(), re.M)


@needs_unshare
def test_a_compat_start_runs_programs_json_when_asked(tmp_path):
    marker = tmp_path / "svc-ran"
    programs = [{"name": "svc", "boot": True, "startsecs": 0,
                 "command": f"sh -c 'echo 1 > {marker}; sleep 1000'"}]
    command = ["sh", "-c", f"while [ ! -e {marker} ]; do sleep 0.02; done; exit 5"]
    init = Main(tmp_path, "tini", command, programs=programs)
    init.env = {"PMD_CONFIG_DIR": str(init.config_dir), "PMD_STATE_DIR": str(init.state_dir),
                "PMD_LOG_DIR": str(init.log_dir)}
    init.start(wait=False)
    try:
        assert init.wait(timeout=20) == 5
    finally:
        init.kill_all()
