"""The start's floor: the least a start on pmd's stack does before its programs run, without
pmd's start-up.

Run as PID 1 of its own PID namespace, like the inits: the interpreter and pydantic (with
pydantic's plugin lookup left out, as pmd leaves it out), programs.json validated by the
model that defines it (pmd_init.model.spec.ProgramSpec: the contract's schema, as pydantic
builds it), then each program spawned with posix_spawn into a session of its own, its
output to /dev/null. None of pmd's entry, settings, store, boot plan, log pipes or
supervisor. The bench times it exactly as it times pmd's first start (its first `sleep`
running, all of them running), in the same rounds: what is left between it and pmd is
pmd's own, what is left between it and tini is the stack's.

Usage: python bench/startfloor.py PROGRAMS_JSON   (then waits for SIGTERM)
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys


def main() -> None:
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))  # PID 1: none by default
    # pydantic's plugin lookup left out as pmd leaves it out: its imports and its reading
    # of every installed distribution's entry points are not the stack's least
    os.environ["PYDANTIC_DISABLE_PLUGINS"] = "__all__"
    from pmd_init.pid1 import noplugins

    noplugins.install(os.environ["PYDANTIC_DISABLE_PLUGINS"])
    from pmd_init.model.spec import ProgramSpec

    with open(sys.argv[1], "rb") as f:
        document = json.load(f)
    specs = [ProgramSpec.model_validate(item) for item in document["programs"]]
    null = os.open(os.devnull, os.O_RDWR)
    actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1),
               (os.POSIX_SPAWN_DUP2, null, 2)]
    for spec in specs:
        argv = shlex.split(spec.command)
        os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions, setsid=True)
    while True:  # reap, as PID 1 must, until SIGTERM
        try:
            os.wait()
        except ChildProcessError:
            signal.pause()


if __name__ == "__main__":
    main()
