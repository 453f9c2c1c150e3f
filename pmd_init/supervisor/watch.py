"""watch: restart a program when files it watches change, then, in dependency order, the
programs that depend on it (process-compose's `watch`, Go supervisord's
restart_directory_monitor).

One inotify descriptor for all watching programs, read by one task through the loop
(asyncinotify: the kernel wakes pmd, nothing polls), and only while some program watches
something. A directory is watched with its subdirectories (new ones are added as they
appear). Changes within a program's `debounce` are one change; a name or path matching
one of its `ignore` globs is no change. A change restarts the program if it is running;
once it is ready again, each running program that depends on it, directly or through
another, is restarted in start order, each after the one before it is ready. The
restarts' STOPPING events say `reason: "watch"`.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .program import Program

log = logging.getLogger("pmd.watch")

#: Paths watched at most, all programs together (inotify watches are a kernel resource:
#: fs.inotify.max_user_watches is often 8192 for everything the user runs).
MAX_DIRECTORIES = 4096


class FileWatch:
    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_change: Callable[[Program], Coroutine[Any, Any, None]],
                 env: Mapping[str, str] | None = None, own: Iterable[str] = ()) -> None:
        self.loop = loop
        #: pmd's own folders (logs, state): never watched, even inside a watched folder,
        #: or a program's own log lines would restart it forever
        self.own = tuple(os.path.realpath(p) for p in own)
        #: what `${VAR}`s in watch paths and directories expand from (pmd's environment)
        self.env = env
        self.on_change = on_change
        self.changes = 0
        self._inotify: Any = None
        self._reader: asyncio.Task[None] | None = None
        #: what the current inotify watches: (program, its paths)
        self._wanted: dict[Program, tuple[str, ...]] = {}
        #: watch descriptor -> [(program, the root path it was asked for)], and its Watch
        self._owners: dict[int, list[tuple[Program, str]]] = {}
        self._watches: dict[int, Any] = {}
        self._debounce: dict[Program, asyncio.TimerHandle] = {}
        self._chains: dict[Program, asyncio.Task[None]] = {}
        self._again: set[Program] = set()
        #: readers of an inotify replaced by `sync`, cancelled; awaited by `close`
        self._retired: list[asyncio.Task[None]] = []

    def sync(self, programs: Iterable[Program]) -> None:
        """Watch exactly the enabled programs' watch paths: a program whose paths
        changed is watched anew, the others keep their watches."""
        wanted = {p: tuple(p.spec.watched_paths(self.env)) for p in programs
                  if p.spec.watch is not None and p.spec.enabled}
        for program in [p for p, paths in self._wanted.items() if wanted.get(p) != paths]:
            self._forget(program)
        if not wanted:
            self._stop_reading()
            return
        if self._inotify is None:
            from asyncinotify import Inotify

            self._inotify = Inotify()
            self._reader = self.loop.create_task(self._read(), name="pmd watch")
        for program, paths in wanted.items():
            if program in self._wanted:
                continue
            self._wanted[program] = paths
            for path in paths:
                self._add_tree(program, path, path)

    def _forget(self, program: Program) -> None:
        self._wanted.pop(program, None)
        pending = self._debounce.pop(program, None)
        if pending is not None:
            pending.cancel()
        for wd, owners in list(self._owners.items()):
            owners[:] = [(p, root) for p, root in owners if p is not program]
            if not owners:
                del self._owners[wd]
                watch = self._watches.pop(wd, None)
                if watch is not None and self._inotify is not None:
                    try:
                        self._inotify.rm_watch(watch)
                    except OSError:
                        pass  # gone with its file

    def _add_tree(self, program: Program, root: str, path: str) -> None:
        """`path`, and below it every directory of the same file system (as `find -xdev`:
        a watch of / does not walk /proc), up to MAX_DIRECTORIES in all."""
        if not os.path.isdir(path):
            self._add(program, root, path)
            return
        try:
            device = os.stat(path).st_dev
        except OSError:
            return
        for directory, subdirs, _ in os.walk(path):
            if len(self._watches) >= MAX_DIRECTORIES:
                log.warning("%s: %d paths watched already: %s and below are not",
                            program.name, MAX_DIRECTORIES, directory)
                return
            if self._own(directory):
                subdirs[:] = []
                continue
            self._add(program, root, directory)
            subdirs[:] = [d for d in subdirs if _same_device(directory, d, device)]

    def _add(self, program: Program, root: str, path: str) -> None:
        from asyncinotify import Mask

        mask = (Mask.MODIFY | Mask.CLOSE_WRITE | Mask.CREATE | Mask.DELETE | Mask.MOVED_FROM
                | Mask.MOVED_TO | Mask.ATTRIB | Mask.DELETE_SELF | Mask.MOVE_SELF)
        try:
            watch = self._inotify.add_watch(path, mask)
        except OSError as exc:
            log.warning("%s: cannot watch %s: %s", program.name, path, exc)
            return
        self._watches[watch.wd] = watch
        owners = self._owners.setdefault(watch.wd, [])
        if (program, root) not in owners:
            owners.append((program, root))

    async def _read(self) -> None:
        from asyncinotify import Mask

        async for event in self._inotify:
            if event.watch is None or event.path is None:
                continue
            path = str(event.path)
            if self._own(path):
                continue
            for program, root in list(self._owners.get(event.watch.wd, ())):
                if Mask.ISDIR in event.mask and Mask.CREATE in event.mask:
                    self._add_tree(program, root, path)  # a new subdirectory
                if self._ignored(program, root, path):
                    continue
                self._changed(program, path)

    def _own(self, path: str) -> bool:
        real = os.path.realpath(path)
        return any(real == own or real.startswith(own + os.sep) for own in self.own)

    @staticmethod
    def _ignored(program: Program, root: str, path: str) -> bool:
        spec = program.spec.watch
        if spec is None:
            return True
        relative = os.path.relpath(path, root) if path != root else os.path.basename(path)
        name = os.path.basename(path)
        return any(fnmatch.fnmatch(name, glob) or fnmatch.fnmatch(relative, glob)
                   for glob in spec.ignore)

    def _changed(self, program: Program, path: str) -> None:
        spec = program.spec.watch
        debounce = spec.debounce if spec is not None else 0.5
        pending = self._debounce.pop(program, None)
        if pending is not None:
            pending.cancel()
        else:
            log.info("%s: %s changed", program.name, path)
        self._debounce[program] = self.loop.call_later(debounce, self._settled, program)

    def _settled(self, program: Program) -> None:
        self._debounce.pop(program, None)
        if program not in self._wanted:
            return
        self.changes += 1
        running = self._chains.get(program)
        if running is not None and not running.done():
            self._again.add(program)  # once this chain is done, one more
            return
        self._chains[program] = task = self.loop.create_task(
            self.on_change(program), name=f"pmd watch {program.name}")
        task.add_done_callback(lambda t: self._chain_done(program, t))

    def _chain_done(self, program: Program, task: asyncio.Task[None]) -> None:
        if self._chains.get(program) is task:
            del self._chains[program]
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: restart after a change failed: %s", program.name,
                      task.exception())
        if program in self._again and self._reader is not None:
            self._again.discard(program)
            self._settled(program)

    def _stop_reading(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            self._retired = [t for t in self._retired if not t.done()]
            self._retired.append(self._reader)
            self._reader = None
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._owners.clear()
        self._watches.clear()
        self._wanted = {}

    async def close(self) -> None:
        """Stop watching; cancel and await the reader and the restart chains."""
        self._stop_reading()
        self._wanted = {}
        for timer in self._debounce.values():
            timer.cancel()
        self._debounce.clear()
        tasks = [*self._retired, *self._chains.values()]
        self._retired = []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._chains.clear()


def _same_device(parent: str, name: str, device: int) -> bool:
    try:
        return os.lstat(os.path.join(parent, name)).st_dev == device
    except OSError:
        return False
