"""The three verdicts an orchestrator probes, each with one meaning (Kubernetes' own):

- `/livez`: pmd's loop is alive and turns. Never a child's state: a failed liveness probe
  restarts the whole container, every program with it, so one program crash-looping must
  not turn it red.
- `/readyz`: the container's readiness, the verdict of `GET /api/v1/daemon/ready` (this
  module computes both), and 503 from the moment a shutdown begins (`shutdown_delay`).
- `/startupz`: boot has finished: every enabled boot program has started or settled
  (supervisor/startup.py). Once true it stays true: a startup probe asks only until then.

Computed on pmd's loop, from what pmd keeps anyway: no psutil, no disk. The API routes
call them directly; the probe port (probeport.py) asks the loop for them from its own
thread, so that a wedged loop is reported instead of leaving the caller without an answer.
Imports nothing heavy: the probe port serves before the HTTP stack is imported.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..supervisor.depends import NotReady
    from ..supervisor.supervisor import Supervisor

#: The paths, each with the verdict's name in its answer.
PATHS = {"/livez": "live", "/readyz": "ready", "/startupz": "started"}


class ProbeOwner(Protocol):
    @property
    def supervisor(self) -> Supervisor | None: ...


class Verdicts:
    """The probes' verdicts, and the little they remember: when boot finished (a latch),
    and when the shutdown began (set by pid1 on TERM)."""

    def __init__(self, owner: ProbeOwner) -> None:
        self.owner = owner
        self.boot_finished_at: float | None = None
        self.stopping_since: float | None = None

    def answer(self, path: str, *, verbose: bool, names: bool) -> tuple[int, dict[str, Any]]:
        """The answer to GET `path` (one of PATHS): status and body. `names`: the caller
        may see program names (it has the read level, access.py);
        they are given only when it also asks with `?verbose`."""
        if path == "/livez":
            return self.livez()
        if path == "/readyz":
            return self.readyz(names=verbose and names)
        return self.startupz(names=verbose and names)

    def livez(self) -> tuple[int, dict[str, Any]]:
        # Answered at all means the loop turned: that is the verdict.
        return 200, {"live": True}

    def readyz(self, names: bool) -> tuple[int, dict[str, Any]]:
        sup = self.owner.supervisor
        total, missing = sup.not_ready() if sup is not None else (0, [])
        view: dict[str, Any] = {
            "ready": not missing and self.stopping_since is None,
            "programs": {"total": total, "ready": total - len(missing),
                         "not_ready": len(missing)},
        }
        if self.stopping_since is not None:
            view["shutting_down"] = True
        if names:
            view["not_ready"] = _listed(missing)
        return (200 if view["ready"] else 503), view

    def startupz(self, names: bool) -> tuple[int, dict[str, Any]]:
        sup = self.owner.supervisor
        total, missing = sup.not_started() if sup is not None else (0, [])
        if self.boot_finished_at is None and not missing:
            self.boot_finished_at = time.time()
        done = self.boot_finished_at is not None
        view: dict[str, Any] = {
            "started": done,
            "programs": {"total": total, "started": total - len(missing),
                         "not_started": len(missing)},
        }
        if names and not done:
            view["not_started"] = _listed(missing)
        return (200 if done else 503), view


def _listed(missing: list[NotReady]) -> list[dict[str, Any]]:
    return [{"name": r.name, "id": r.id, "state": r.state, "reason": r.reason}
            for r in missing]
