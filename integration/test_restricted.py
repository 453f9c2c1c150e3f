"""pmd in a restricted pod: an arbitrary uid with group 0 (OpenShift's way), a read-only
root file system, and only its config, state, log and socket folders writable (tmpfs, as
an emptyDir of medium Memory is). Made real with a mount namespace of the test's own
(`unshare --mount`): / bound read-only there, tmpfs on the four folders, then `setpriv`
to uid 12345 gid 0 and pmd as PID 1 of a fresh PID namespace."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from integration.helpers import children, status
from tests.api.process_helpers import free_ports
from tests.harness import Pmd, can_unshare

pytestmark = pytest.mark.skipif(
    not can_unshare() or shutil.which("setpriv") is None or os.geteuid() != 0,
    reason="needs root, unshare and setpriv")

UID, GID = 12345, 0

#: Run as root in the new mount namespace, then exec pmd as UID:GID. $1: the test's base,
#: $2: the interpreter's installation, $3: its first ancestor others cannot enter (or
#: "-"), $4...: what the writable folders are ("config state log run" by default).
SCRIPT = r"""
set -eu
base=$1 prefix=$2 closed=$3; shift 3
folders=$1; shift
if [ "$closed" != - ]; then
    # The interpreter lives under a folder only root may enter (a home): show the
    # installation alone there, on a tmpfs that anyone may cross.
    mkdir -p "$base/hold"
    mount --bind "$prefix" "$base/hold"
    mount -t tmpfs -o mode=755 tmpfs "$closed"
    mkdir -p "$prefix"
    mount --move "$base/hold" "$prefix"
fi
for name in $folders; do  # what the test put there, carried onto the tmpfs
    mkdir -p "$base/seed-$name"
    cp -a "$base/$name/." "$base/seed-$name/"
done
mount --bind / /
mount -o remount,bind,ro /
for name in $folders; do
    mount -t tmpfs -o mode=0775,uid=0,gid=0 tmpfs "$base/$name"
    cp -a "$base/seed-$name/." "$base/$name/"
    chmod -R g+w "$base/$name"
done
cd "$base"
shift  # the --
exec setpriv --reuid @UID@ --regid @GID@ --clear-groups -- "$@"
""".replace("@UID@", str(UID)).replace("@GID@", str(GID))


def closed_ancestor(path: Path) -> Path | None:
    for folder in reversed(path.parents):
        if folder != Path("/") and not os.stat(folder).st_mode & stat.S_IXOTH:
            return folder
    return None


class RestrictedPmd(Pmd):
    def __init__(self, base: Path, folders: str = "config state log run", **kw: object
                 ) -> None:
        self.api_port = free_ports(1)
        super().__init__(base, args=["--socket", str(base / "run" / "pmd.sock"),
                                     "--port", str(self.api_port)], **kw)  # type: ignore[arg-type]
        (base / "run").mkdir(exist_ok=True)
        self.folders = folders
        (base / "restricted.sh").write_text(SCRIPT)

    def argv(self) -> list[str]:
        prefix = Path(os.path.realpath(sys.base_prefix))
        closed = closed_ancestor(prefix)
        inner = super().argv()  # its --socket and --port come last: they win
        return ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "sh",
                str(self.base / "restricted.sh"), str(self.base), str(prefix),
                str(closed) if closed else "-", self.folders, "--", *inner]

    @property
    def pid(self) -> int:
        """pmd's pid out here: the child of unshare (sh, then setpriv, then pmd_init)."""
        assert self.proc is not None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            kids = children(self.proc.pid)
            if kids:
                return kids[0]
            time.sleep(0.01)
        raise RuntimeError("no pmd under unshare")

    def start(self, wait: bool = True, timeout: float = 15.0) -> RestrictedPmd:
        self.env = {**self.env, "PYTHONDONTWRITEBYTECODE": "1"}
        super().start(wait=False)
        self.port = self.api_port
        if wait:
            self.wait_for(lambda: self._answers(), timeout=timeout, what="the API")
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"pmd exited with {self.proc.returncode}:\n"
                               f"{self.stderr_text()}")
        try:
            return httpx.get(f"{self.url}/livez", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def inside(self, path: Path) -> Path:
        """A path as pmd sees it (its mount namespace), from out here."""
        return Path(f"/proc/{self.pid}/root{path}")


def ids_of(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])


@pytest.fixture
def base() -> Iterator[Path]:
    """A folder uid 12345 can reach (pytest's own are root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="pmd-restricted-", dir="/tmp"))
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_an_arbitrary_uid_with_group_0_on_a_read_only_root(base):
    tmp_path = base
    web = {"name": "web", "boot": True, "command": "sh -c 'id -u; id -g; exec sleep 600'"}
    with RestrictedPmd(tmp_path, programs=[web]) as pmd:
        assert ids_of(pmd.pid) == (UID, GID)
        http = pmd.http
        pmd.wait_for(lambda: status(http, 1)["status"] == "RUNNING", what="web running")
        assert ids_of(pmd_child(pmd)) == (UID, GID)  # web, pmd's own user
        for path in ("/livez", "/readyz", "/startupz", "/api/v1/daemon/health"):
            assert http.get(path).status_code == 200, path
        log = pmd.inside(pmd.log_dir / "web" / "stdout.log")
        pmd.wait_for(lambda: log.exists() and log.read_text().split()[:2] == ["12345", "0"],
                     what="web's log in the tmpfs log dir")
        # The API writes programs.json in the (writable) config folder, and restarts.
        edited = http.post("/api/v1/daemon/programs/edit/1", json={"description": "edited"})
        assert edited.status_code == 200, edited.text
        assert "edited" in pmd.inside(pmd.config_dir / "programs.json").read_text()
        old_pid = status(http, 1)["pid"]
        assert http.post("/api/v1/daemon/programs/1/restart").status_code == 200
        pmd.wait_for(lambda: status(http, 1)["status"] == "RUNNING"
                     and status(http, 1)["pid"] != old_pid, what="web restarted")
        assert pmd.inside(pmd.base / "run" / "pmd.sock").is_socket()
        storage = http.get("/api/v1/daemon/health").json()["storage"]
        assert "Read-only" not in str(storage)
    text = pmd.stderr_text()
    assert "Read-only file system" not in text and "not writable" not in text, text
    assert "Traceback" not in text


def pmd_child(pmd: RestrictedPmd) -> int:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        kids = children(pmd.pid)
        if kids:
            return kids[0]
        time.sleep(0.02)
    raise AssertionError("pmd has no child")


def test_a_log_dir_that_is_not_writable_is_said_clearly_and_programs_still_run(base):
    tmp_path = base
    web = {"name": "web", "boot": True, "command": "sleep 600"}
    # The log dir stays on the read-only root: no tmpfs there.
    with RestrictedPmd(tmp_path, folders="config state run", programs=[web]) as pmd:
        pmd.wait_for(lambda: status(pmd.http, 1)["status"] == "RUNNING", what="web running")
        assert pmd.http.get("/livez").status_code == 200
    assert (f"the log dir (--log-dir) {tmp_path / 'log'} is not writable by uid {UID} "
            f"gid {GID}") in pmd.stderr_text()
