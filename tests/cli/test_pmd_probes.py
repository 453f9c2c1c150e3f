"""`pmd livez|readyz|startupz`: the probes as commands, for exec probes and a Docker
HEALTHCHECK, against a real pmd over its Unix socket."""

from __future__ import annotations

import json
import signal

from tests.cli.test_pmd_cli import command, run
from tests.harness import Pmd


def test_probe_commands_exit_0_on_200_and_1_otherwise(tmp_path):
    gate = {"name": "gate", "user": "root", "boot": True, "directory": str(tmp_path),
            "command": "sh -c 'while [ ! -e go ]; do sleep 0.05; done; echo up; "
                       "exec sleep 600'",
            "readiness": {"log_line": "^up$"}}
    with Pmd(tmp_path, [gate], env={"PMD_TEST_WEDGE": "4"}) as pmd:
        assert run(pmd, "livez").returncode == 0
        pmd.wait_for(lambda: run(pmd, "startupz").returncode == 0, what="boot finished")
        not_ready = run(pmd, "readyz", "--verbose")
        assert not_ready.returncode == 1
        assert "readyz: no" in not_ready.stdout
        assert ": not ready yet (log_line)" in not_ready.stdout
        assert "  gate (" in not_ready.stdout
        (tmp_path / "go").touch()
        pmd.wait_for(lambda: run(pmd, "readyz").returncode == 0, what="ready")
        answer = json.loads(run(pmd, "readyz", "--json").stdout)
        assert answer["ready"] is True

        # A wedged loop: the command gives up after its 2 s and says so, exit 1.
        pmd.signal(signal.SIGUSR2)
        pmd.wait_for(lambda: "PMD_TEST_WEDGE: blocking" in pmd.stderr_text(),
                     what="the wedge")
        wedged = run(pmd, "livez")
        assert wedged.returncode == 1 and "cannot reach pmd" in wedged.stderr
        # it gave up by its own timeout, while pmd was still wedged (pmd's own log says
        # when the wedge ends)
        assert "PMD_TEST_WEDGE: the loop runs again" not in pmd.stderr_text()

    gone = run(pmd, "livez")  # pmd has exited: no socket
    assert gone.returncode == 1 and command()
