"""A start that found no boot plan of its configuration (a container's first start, a
configuration changed since the plan was written): its boot programs are started as soon
as the configuration validates, before asyncio, the supervisor and the HTTP stack.

pmd reads and validates its configuration as the start will load it (programs.json, or
programs.default.json when it is absent, and programs.d), which takes the models and
pydantic and nothing else of pmd, then spawns the programs that a plan of this
configuration would list, in boot's order, through pid1/early.py's functions: as if that
plan had been read from a file. The supervisor then loads the configuration as always and
takes each process over at its first spawn, or kills it (pid1/early.py says when).
Nothing is spawned here when the configuration has a problem: the start's own load
reports it and falls back as it always does.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..store.programs import ConfigError, ProgramStore
from ..supervisor.plan import plan_entries
from .early import EarlyBoot, PlannedSpec, program_base_env, raise_nofile, start_planned


def start_validated(early: EarlyBoot, environ: Mapping[str, str]) -> None:
    """Spawn the boot programs a plan of the configuration would hold, into `early`
    (`early.may_spawn` and no plan used; the models' switches already in os.environ)."""
    settings = early.settings
    store = ProgramStore(settings.config_dir, settings.state_dir)
    try:
        specs = store.read_only(report=False)
        planned = [PlannedSpec.load(entry) for entry in plan_entries(specs)]
    except (ConfigError, OSError, ValueError):
        return  # the start's load says what is wrong, and what it boots instead
    if store.dropins.problems or not planned:
        return
    raise_nofile()  # as pmd's start does before any spawn: programs inherit it
    early.started, early.problems = start_planned(planned, program_base_env(environ))
    early.validated = True
