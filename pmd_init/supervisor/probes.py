"""The one implementation of a probe: http (the url answers the expected status), tcp (a
port accepts a connection) or script (a command exits 0). Health checks (health.py) run
probes on a timer for as long as an instance is RUNNING; a readiness `probe`
(readiness.py) runs them until the first success.

A probe returns None when it succeeded, else the reason it did not, as text for the
status. Script probes are spawned through `spawn.spawn` and their exit comes from the
reaper like every other child (pmd has a single waitpid owner, so no subprocess.run here).
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .expansion import expand_spec
from .spawn import (
    SpawnError,
    SpawnRequest,
    describe_exit,
    killpg,
    program_env,
    resolve_account,
    spawn,
)

if TYPE_CHECKING:
    from ..model.spec import HealthCheckSpec, ProgramSpec
    from .runtime import ChildWatcher


async def probe(check: HealthCheckSpec, program: ProgramSpec, port: int | None,
                children: ChildWatcher, base_env: Mapping[str, str]) -> str | None:
    """Run `check` once for an instance of `program` (on `port`, for a port range)."""
    if check.type == "http":
        return await probe_http(expand(check.url or "", port), check.expected_status)
    if check.type == "tcp":
        target = check.port or port or env_port(program)
        if target is None:
            return "a tcp probe needs a port (port, port_range or PORT)"
        return await probe_tcp(check.host, target)
    return await probe_script(expand(check.command or "", port), program, port, children,
                              base_env)


def expand(text: str, port: int | None) -> str:
    """`{port}` in a url or command is the instance's port (one check for a port range)."""
    return text.replace("{port}", str(port)) if port is not None else text


def env_port(program: ProgramSpec) -> int | None:
    raw = program.environment.get("PORT")
    return int(raw) if raw and raw.isdigit() and 0 < int(raw) < 65536 else None


async def probe_script(command: str, program: ProgramSpec, port: int | None,
                       children: ChildWatcher, base_env: Mapping[str, str]) -> str | None:
    """`sh -c command` as the program's user, in its directory, with its environment."""
    done: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
    try:
        fields = expand_spec(program, base_env)
        account = resolve_account(fields.user)
        env = program_env(base_env, account, fields.environment, program.display, port)
        popen = spawn(SpawnRequest(argv=["/bin/sh", "-c", command], env=env,
                                   cwd=fields.directory, account=account,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    except SpawnError as exc:
        return str(exc)

    def exited(status: int | None) -> None:
        # The reaper has the status: tell Popen, so that it never waits itself.
        popen.returncode = os.waitstatus_to_exitcode(status) if status is not None else -1
        if not done.done():
            done.set_result(None if status is None else describe_exit(status))

    children.watch(popen.pid, exited)
    try:
        code = await asyncio.shield(done)
    except asyncio.CancelledError:
        # Timed out or no longer wanted: kill the probe's group; the reaper still reaps it.
        killpg(popen.pid, signal.SIGKILL)
        raise
    return None if code == 0 else f"script exited with {code}"


async def probe_tcp(host: str, port: int) -> str | None:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return f"tcp {host}:{port}: {exc.strerror or exc}"
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return None


async def probe_http(url: str, expected: int) -> str | None:
    """A bare HTTP/1.1 GET (pmd carries no HTTP client library): only the status line
    matters."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"not an http(s) url: {url}"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    context = ssl.create_default_context() if parts.scheme == "https" else None
    try:
        reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=context)
    except OSError as exc:
        return f"GET {url}: {exc.strerror or exc}"
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        host = parts.netloc.rpartition("@")[2]
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: pmd-health\r\n"
                     f"Connection: close\r\n\r\n".encode())
        await writer.drain()
        line = await reader.readline()
    except OSError as exc:
        return f"GET {url}: {exc.strerror or exc}"
    finally:
        writer.close()
    fields = line.split()
    if len(fields) < 2 or not fields[1].isdigit():
        return f"GET {url}: not an HTTP answer"
    status = int(fields[1])
    return None if status == expected else f"GET {url}: status {status}, want {expected}"
