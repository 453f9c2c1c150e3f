"""Waiting for an instance to come up: one rule for a start that is waited for and for a
reload's replacement."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..model.states import STOPPED_STATES, ProgramState

if TYPE_CHECKING:
    from .instance import Instance

S = ProgramState

#: Where a start settles on its first try; anything but RUNNING is a failure.
SETTLED = frozenset({S.RUNNING, S.BACKOFF, S.FATAL, S.EXITED, S.STOPPED})


async def until_running(inst: Instance, timeout: float, *, retries: bool) -> ProgramState:
    """RUNNING, or the state in which the instance gave up; TimeoutError after `timeout`.

    With `retries`, what the state machine will try again is not the end: a BACKOFF, or a
    STOPPED or EXITED instance that is still wanted (a restart, a start delay); only FATAL
    or a stop that is no longer wanted is. Without, the first settled state is the
    answer: a reload's replacement gets one try while the old instance keeps serving."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        state = inst.state
        if state == S.RUNNING:
            return state
        if retries:
            ended = state == S.FATAL or (state in STOPPED_STATES and not inst.want)
        else:
            ended = state in SETTLED
        if ended:
            return state
        # a state, or only `want`: a stop of a stopped instance that a restart was queued
        # for changes nothing else, and must end the wait at once, not at its timeout
        await asyncio.wait_for(inst.wait_change(), max(0.0, deadline - loop.time()))
