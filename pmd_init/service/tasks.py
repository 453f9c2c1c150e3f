"""The tasks of long operations: each outlives the request that started it, and has an
owner that cancels and awaits it at shutdown.

Sanic cancels a request's task when its client disconnects. A reset or a reload run
inside that task would stop half way (the defaults saved and none booted, a replacement
running outside any slot), so each runs in a task of its own, which the request awaits
through `asyncio.shield`: the request may be cancelled, the operation is not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..supervisor.errors import Refused, SupervisorError

log = logging.getLogger("pmd.service")
T = TypeVar("T")


class OwnedTasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, operation: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        if self._closed:
            operation.close()
            raise Refused("pmd is shutting down", code="SHUTTING_DOWN")
        task = asyncio.get_running_loop().create_task(operation, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    async def run(self, operation: Coroutine[Any, Any, T], name: str) -> T:
        """The operation's result, in a task that goes on if the caller is cancelled."""
        return await asyncio.shield(self.spawn(operation, name))

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        # Retrieved here too, so that an operation whose client has gone is not reported
        # as an exception nobody retrieved; its caller, if still there, gets it as well.
        exc = task.exception()
        if isinstance(exc, SupervisorError):
            log.info("%s: %s", task.get_name(), exc.message)
        elif exc is not None:
            log.error("%s failed", task.get_name(), exc_info=exc)

    async def settle(self, timeout: float) -> None:
        """Let the operations under way finish, for at most `timeout` seconds."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def close(self) -> None:
        """No new operation; those under way are cancelled and awaited."""
        self._closed = True
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
