"""The shutdown's time budget: how long stopping every program may take at worst, and
whether that fits in what the orchestrator allows between its TERM and its KILL.

Pure: specs and seconds in, a plan out. Shutdown stops in waves (graph.stop_waves), one
after the other, each wave's programs at once; a program takes at most its `stop_timeout`
(then pmd sends SIGKILL). So a wave's worst case is its longest `stop_timeout`, and the
whole worst case is their sum. Kubernetes counts terminationGracePeriodSeconds from its
TERM, so pmd's `shutdown_delay` comes out of the same budget.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .graph import stop_waves
from .spec import ProgramSpec

#: Kept back from the orchestrator's budget: pmd's own SIGKILL, reaping and exit must
#: land before the orchestrator's SIGKILL does.
EXIT_MARGIN = 1.0


@dataclass(frozen=True, slots=True)
class Wave:
    """Programs stopped together, and the longest of their stop timeouts."""

    names: tuple[str, ...]
    seconds: float
    longest: str

    def as_dict(self) -> dict[str, object]:
        return {"programs": list(self.names), "seconds": self.seconds,
                "longest": self.longest}


@dataclass(frozen=True, slots=True)
class ShutdownPlan:
    waves: tuple[Wave, ...]
    delay: float
    grace: float
    termination_grace: float | None

    @property
    def worst_case(self) -> float:
        return sum(w.seconds for w in self.waves)

    @property
    def budget(self) -> float:
        """What the stopping itself may take: `--grace`, and within the orchestrator's
        budget less the delay and pmd's exit margin when that is known."""
        if self.termination_grace is None:
            return self.grace
        return max(0.0, min(self.grace,
                            self.termination_grace - self.delay - EXIT_MARGIN))

    @property
    def problem(self) -> str | None:
        """Why the worst case does not fit in the orchestrator's budget (None when it
        does, or when that budget is not known): names the programs whose stop timeouts
        make it up, and the figures."""
        worst = self.worst_case
        if self.termination_grace is None or worst <= self.budget:
            return None  # without the orchestrator's figure, --grace caps it as always
        chain = " + ".join(f"{w.longest} {_secs(w.seconds)}" for w in self.waves
                           if w.seconds > 0)
        if self.budget < self.grace:
            limit = (f"the termination grace of {_secs(self.termination_grace)} less the "
                     f"shutdown delay of {_secs(self.delay)} and {_secs(EXIT_MARGIN)} for "
                     f"pmd's exit leaves {_secs(self.budget)}")
        else:
            limit = f"--grace is {_secs(self.grace)}"
        return (f"stopping every program may take {_secs(worst)} ({chain}, one stop "
                f"group after the other) but {limit}: each group gets a share and the "
                "slowest are killed early")

    def as_dict(self) -> dict[str, object]:
        return {"delay_seconds": self.delay, "grace_seconds": self.grace,
                "termination_grace_seconds": self.termination_grace,
                "worst_case_seconds": self.worst_case, "budget_seconds": self.budget,
                "waves": [w.as_dict() for w in self.waves], "problem": self.problem}


def plan_shutdown(specs: Iterable[ProgramSpec], *, delay: float, grace: float,
                  termination_grace: float | None) -> ShutdownPlan:
    by_name = {spec.name: spec for spec in specs}
    waves = []
    for names in stop_waves(by_name.values()):
        longest = max(names, key=lambda n: (by_name[n].stop_timeout, n))
        waves.append(Wave(tuple(names), float(by_name[longest].stop_timeout), longest))
    return ShutdownPlan(tuple(waves), delay, grace, termination_grace)


def share(remaining: float, wave_worst: float, worst_left: float) -> float:
    """How long one wave may take when `remaining` seconds are left for this wave and the
    ones after it (`worst_left` is their worst case, this one's included): all it needs
    when everything fits, else a share in proportion to its worst case, so that every
    later wave still gets its stop signal before the deadline."""
    if worst_left <= remaining:
        return remaining
    if worst_left <= 0:
        return 0.0
    return max(0.0, remaining) * wave_worst / worst_left


def _secs(value: float) -> str:
    return f"{value:g} s"
