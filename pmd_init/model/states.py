"""Program states and the transitions between them (supervisord's machine).

This module imports nothing from pmd: the states are shared by the supervisor, the API
views and the event stream.
"""

from __future__ import annotations

from enum import StrEnum


class ProgramState(StrEnum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"
    UNKNOWN = "UNKNOWN"


S = ProgramState

# The allowed transitions, as supervisord's process.py asserts them.
# pmd adds three: EXITED -> BACKOFF when the start-rate limit holds back a restart (or a
# program was not ready in time), STOPPED -> UNKNOWN when a fresh slot adopts a process it
# did not start (re-exec, or a restarted pmd), on its way to the state the previous pmd
# recorded, and RUNNING -> FATAL when a oneshot exits with a code not in its exitcodes.
TRANSITIONS: dict[ProgramState, frozenset[ProgramState]] = {
    S.STOPPED: frozenset({S.STARTING, S.UNKNOWN}),
    S.STARTING: frozenset({S.RUNNING, S.BACKOFF, S.STOPPING}),
    S.RUNNING: frozenset({S.EXITED, S.STOPPING, S.FATAL}),
    S.BACKOFF: frozenset({S.STARTING, S.FATAL, S.STOPPED}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.EXITED: frozenset({S.STARTING, S.STOPPED, S.BACKOFF}),
    S.FATAL: frozenset({S.STARTING, S.STOPPED}),
    S.UNKNOWN: frozenset(S),
}

#: A process exists (or is about to) in these states.
RUNNING_STATES = frozenset({S.STARTING, S.RUNNING, S.STOPPING})
#: Nothing runs and nothing will run until someone asks.
STOPPED_STATES = frozenset({S.STOPPED, S.EXITED, S.FATAL, S.UNKNOWN})
#: The program is up or on its way up; used by `if_not_running` and `pmd list`.
ACTIVE_STATES = frozenset({S.STARTING, S.RUNNING, S.BACKOFF})


class InvalidTransition(RuntimeError):
    """A state change the machine does not allow: a bug in pmd, never user input."""


def check_transition(old: ProgramState, new: ProgramState) -> None:
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(f"{old} -> {new}")
