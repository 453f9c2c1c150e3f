"""`pmd`: the command line client of a running pmd (what `docker exec <container> pmd ...`
gives operators).

It talks to pmd over its Unix socket by default (PMD_SOCKET, default /run/pmd/pmd.sock;
no key needed: pmd knows the caller by its uid), or over HTTP with --url (PMD_URL) and
--api-key (PMD_API_KEY), over HTTPS with --cacert, and --cert/--key for a client
certificate. `pmd whoami` says who pmd takes the caller for and what it may run.
Output is a human table by default and the API's JSON with --json. Any failure prints
one line on stderr and exits non-zero; `pmd status` exits 0 exactly when pmd answers,
which is what a Docker HEALTHCHECK needs; `pmd ready` exits 0 exactly when
every enabled boot program is ready (GET /api/v1/daemon/ready), 1 otherwise. `pmd livez`,
`pmd readyz` and `pmd startupz` are the orchestrator's probes (GET /livez, /readyz,
/startupz) for exec probes and a HEALTHCHECK: 0 on a 200, 1 otherwise, within 2 s.

Only the standard library is imported here: the client starts fast and needs nothing of
the server side.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import signal
import socket
import ssl
import sys
import time
import urllib.parse
from typing import Any

DEFAULT_SOCKET = "/run/pmd/pmd.sock"
TIMEOUT = 60.0
#: The probe commands' default: an exec probe that hangs tells the orchestrator nothing.
PROBE_TIMEOUT = 2.0


class CliError(Exception):
    """One line for stderr."""


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    def __init__(self, url: str | None, socket_path: str, api_key: str | None,
                 timeout: float = TIMEOUT, tls: ssl.SSLContext | None = None) -> None:
        self.url = url.rstrip("/") if url else None
        self.socket_path = socket_path
        self.api_key = api_key
        self.timeout = timeout
        self.tls = tls

    @property
    def where(self) -> str:
        return self.url or f"unix:{self.socket_path}"

    def _connection(self) -> tuple[http.client.HTTPConnection, str]:
        if self.url is None:
            return UnixHTTPConnection(self.socket_path, self.timeout), ""
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CliError(f"--url must be http://HOST:PORT or https://HOST:PORT, "
                           f"not {self.url!r}")
        prefix = parts.path.rstrip("/")
        if parts.scheme == "https":
            return http.client.HTTPSConnection(parts.netloc, timeout=self.timeout,
                                               context=self.tls), prefix
        return http.client.HTTPConnection(parts.netloc, timeout=self.timeout), prefix

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             query: dict[str, Any] | None = None) -> Any:
        """The decoded JSON answer of a 2xx response; CliError otherwise."""
        status, data = self.request(method, path, body, query)
        if not 200 <= status < 300:
            raise CliError(error_line(status, data))
        return data

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                query: dict[str, Any] | None = None) -> tuple[int, Any]:
        """The status and decoded JSON answer, whatever the status; CliError when pmd
        cannot be reached."""
        conn, prefix = self._connection()
        if query:
            path += "?" + urllib.parse.urlencode({k: v for k, v in query.items()
                                                  if v is not None})
        headers = {"Accept": "application/json", "User-Agent": "pmd-cli"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        try:
            conn.request(method, prefix + path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise CliError(f"cannot reach pmd at {self.where}: {reason}") from None
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        return response.status, data


def error_line(status: int, data: Any) -> str:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        error = data["error"]
        return f"{error.get('code', status)}: {error.get('message', '')}".strip()
    return f"HTTP {status}"


# ---- output ----------------------------------------------------------------------------

def human_bytes(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{value}B"


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def status_text(process: dict[str, Any]) -> str:
    """`launching (waiting for db (healthy))`, or `... (blocked: migrate exited 3)`."""
    status = text(process.get("status"))
    if process.get("blocked"):
        return f"{status} (blocked: {process['blocked']})"
    if process.get("waiting_for"):
        return f"{status} (waiting for {', '.join(process['waiting_for'])})"
    return status


def print_processes(processes: list[dict[str, Any]]) -> None:
    if not processes:
        print("no processes")
        return
    rows = [[text(p.get("id")), text(p.get("name")), status_text(p),
             text(p.get("pid")), text(p.get("port")), f"{p.get('cpu_usage', 0):.1f}%",
             human_bytes(p.get("memory_usage")), text(p.get("uptime")),
             text(p.get("restarts")), text(p.get("health_status"))] for p in processes]
    print(table(rows, ["ID", "NAME", "STATUS", "PID", "PORT", "CPU", "MEMORY", "UPTIME",
                       "RESTARTS", "HEALTH"]))


BYTE_SECTIONS = ("memory", "disk")


def print_mapping(data: dict[str, Any], indent: int = 0, in_bytes: bool = False) -> None:
    pad = " " * indent
    width = max((len(str(k)) for k in data), default=0)
    for key, value in data.items():
        if isinstance(value, dict):
            print(f"{pad}{key}:")
            if value:
                print_mapping(value, indent + 2, in_bytes=key in BYTE_SECTIONS)
            else:
                print(f"{pad}  -")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            print(f"{pad}{key}:")
            for item in value:
                print(f"{pad}  - " + ", ".join(f"{k}={text(v)}" for k, v in item.items()))
        elif isinstance(value, list):
            print(f"{pad}{str(key).ljust(width)}  {' '.join(map(str, value)) or '-'}")
        else:
            as_bytes = key == "memory_usage" or (in_bytes and key in ("total", "used", "free"))
            shown = human_bytes(value) if as_bytes and isinstance(value, int) else text(value)
            print(f"{pad}{str(key).ljust(width)}  {shown}")


def print_logs(logs: list[dict[str, Any]]) -> None:
    for line in logs:
        stamp = line.get("timestamp") or "-"
        where = f":{line['port']}" if line.get("port") is not None else ""
        print(f"{stamp} [{line.get('type')}{where}] {line.get('message', '')}")


def emit(args: argparse.Namespace, data: Any, human: Any) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        human(data)


# ---- commands --------------------------------------------------------------------------

def quoted(ident: str) -> str:
    return urllib.parse.quote(ident, safe="")


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    query = {"status": args.status, "name": args.name}
    emit(args, client.call("GET", "/api/processes", query=query), print_processes)
    return 0


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    emit(args, client.call("GET", f"/api/processes/{quoted(args.id)}"), print_mapping)
    return 0


def parse_env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--env takes KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def default_name(command: str) -> str:
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    first = os.path.basename(words[0]) if words else "process"
    return first or "process"


def cmd_start(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name or default_name(args.command),
                            "script": args.command}
    if args.port:
        body["port"] = args.port
    if args.env:
        body["env"] = parse_env(args.env)
    for key in ("cwd", "user", "max_memory_restart"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.no_autorestart:
        body["autorestart"] = False
    data = client.call("POST", "/api/processes", body=body)
    emit(args, data, lambda d: print(f"{d['message']}: {d['process']['name']} "
                                     f"(id {d['process']['id']})"))
    return 0


def simple_action(action: str) -> Any:
    def run(client: Client, args: argparse.Namespace) -> int:
        body = {"port": args.port} if getattr(args, "port", None) else None
        data = client.call("POST", f"/api/processes/{quoted(args.id)}/{action}", body=body)
        emit(args, data, lambda d: print(d.get("message", "done")))
        return 0
    return run


def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    data = client.call("DELETE", f"/api/processes/{quoted(args.id)}")
    emit(args, data, lambda d: print(d.get("message", "done")))
    return 0


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    path = f"/api/processes/{quoted(args.id)}/logs"
    data = client.call("GET", path, query={"lines": args.lines, "type": args.type})
    emit(args, data, lambda d: print_logs(d["logs"]))
    if not args.follow:
        return 0
    seen = data.get("total_lines", 0)
    try:
        while True:
            time.sleep(args.interval)
            data = client.call("GET", path, query={"lines": 1, "type": args.type})
            total = data.get("total_lines", 0)
            if total < seen:  # rotated: start over from the new file
                seen = 0
            if total > seen:
                fresh = client.call("GET", path, query={"lines": min(total - seen, 10000),
                                                        "type": args.type})
                emit(args, fresh, lambda d: print_logs(d["logs"]))
                seen = fresh.get("total_lines", total)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 0


def cmd_system(client: Client, args: argparse.Namespace) -> int:
    emit(args, client.call("GET", "/api/system"), print_mapping)
    return 0


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    data = client.call("GET", "/api/status")
    emit(args, data, lambda d: print(f"pmd {d.get('version', '?')}: {d.get('status')} "
                                     f"({client.where})"))
    return 0


def print_ready(data: dict[str, Any]) -> None:
    counts = data.get("programs") or {}
    verdict = "ready" if data.get("ready") else "not ready"
    print(f"{verdict}: {counts.get('ready', '?')} of {counts.get('total', '?')} boot "
          "programs ready")
    for item in data.get("not_ready") or []:
        print(f"  {item.get('name')} ({item.get('state')}): {item.get('reason')}")


def cmd_ready(client: Client, args: argparse.Namespace) -> int:
    """0 when the container is ready, 1 when it is not or pmd does not answer: the verdict
    of GET /api/v1/daemon/ready, for a HEALTHCHECK or a script. With --wait, asks again
    until it is ready or the time is up."""
    deadline = time.monotonic() + max(0.0, args.wait)
    while True:
        problem: str | None
        try:
            status, data = client.request("GET", "/api/v1/daemon/ready")
        except CliError as exc:
            status, data, problem = 0, None, str(exc)
        else:
            problem = None if status in (200, 503) and isinstance(data, dict) \
                else error_line(status, data)
        if status == 200 or time.monotonic() >= deadline:
            break
        time.sleep(min(args.interval, max(0.0, deadline - time.monotonic())))
    if problem is not None:
        raise CliError(problem)
    emit(args, data, print_ready)
    return 0 if status == 200 else 1


def probe_command(path: str, verdict: str) -> Any:
    """`pmd livez|readyz|startupz`: 0 on a 200, 1 on anything else (a 503, no answer in
    time, pmd not there), with the answer's verdict and reason on stdout."""
    def run(client: Client, args: argparse.Namespace) -> int:
        try:
            status, data = client.request(
                "GET", path, query={"verbose": "1"} if args.verbose else None)
        except CliError as exc:
            print(f"pmd: {exc}", file=sys.stderr)
            return 1
        if not isinstance(data, dict):
            print(f"pmd: {error_line(status, data)}", file=sys.stderr)
            return 1

        def show(d: dict[str, Any]) -> None:
            counts = d.get("programs") or {}
            line = f"{path[1:]}: {'yes' if d.get(verdict) else 'no'}"
            if counts:
                line += " (" + ", ".join(f"{k.replace('_', ' ')} {v}"
                                         for k, v in counts.items()) + ")"
            if d.get("reason"):
                line += f": {d['reason']}"
            if d.get("shutting_down"):
                line += ": shutting down"
            print(line)
            for item in d.get("not_ready") or d.get("not_started") or []:
                print(f"  {item.get('name')} ({item.get('state')}): {item.get('reason')}")

        emit(args, data, show)
        return 0 if status == 200 else 1
    return run


def cmd_reexec(client: Client, args: argparse.Namespace) -> int:
    data = client.call("POST", "/api/v1/daemon/reexec")
    emit(args, data, lambda d: print(d.get("message", "re-executing")))
    return 0


def own_user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def cmd_quick_start(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"command": args.command, "user": args.user or own_user()}
    if args.name:
        body["name"] = args.name
    if args.ttl is not None:
        body["ttl"] = args.ttl
    if args.wait:
        body["wait"] = True
    if args.env:
        body["environment"] = parse_env(args.env)
    data = client.call("POST", "/api/v1/daemon/quick-start", body=body)
    emit(args, data, lambda d: print(
        f"started {d.get('temporary_id')} ({d.get('name')}): {d.get('status')}"
        + (f", pid {d['pid']}" if d.get("pid") else "")))
    return 0


#: The level each command needs (the server's table is api/access.py; this one only
#: decides what `pmd whoami` lists).
COMMAND_LEVELS = {
    "status": "read", "ready": "open", "livez": "open", "readyz": "open",
    "startupz": "open", "whoami": "open", "list": "read", "show": "read",
    "logs": "read", "system": "read", "stop": "operate", "restart": "operate",
    "reload": "operate", "signal": "operate", "start": "admin", "delete": "admin",
    "quick-start": "admin", "reexec": "admin",
}


def print_whoami(data: dict[str, Any]) -> None:
    who = data.get("identity") or {"admin-key": "the admin key", "open": "anyone (no "
                                   "authentication configured)", "anonymous": "anonymous"
                                   }.get(str(data.get("kind")), str(data.get("kind")))
    where = f"uid {data['uid']} on the socket" if "uid" in data else data.get("transport")
    print(f"{who} ({data.get('kind')}, {where}): level {data.get('level')}")
    if data.get("key"):
        print(f"the API key given is {data['key']}")
    levels = set(data.get("levels") or [])
    allowed = [name for name, level in COMMAND_LEVELS.items() if level in levels]
    print("may run: " + (" ".join(allowed) or "nothing"))


def cmd_whoami(client: Client, args: argparse.Namespace) -> int:
    emit(args, client.call("GET", "/api/v1/daemon/whoami"), print_whoami)
    return 0


def signal_name(text: str) -> str:
    """USR1, SIGUSR1, usr1 or 10 as the API's name, USR1 (unknown names are the
    server's 400)."""
    if text.isdigit():
        try:
            return signal.Signals(int(text)).name.removeprefix("SIG")
        except ValueError:
            raise CliError(f"no signal numbered {text}") from None
    return text.upper().removeprefix("SIG")


def cmd_signal(client: Client, args: argparse.Namespace) -> int:
    body = {"signal": signal_name(args.signal), "main_pid": args.main_pid}
    data = client.call("POST", f"/api/processes/{quoted(args.id)}/signal", body=body)
    emit(args, data, lambda d: print(", ".join(
        f"{d['signal_name']} sent to {i['instance_name']} (pid {i['pid']})"
        for i in d["signalled"]) or "no process signalled"))
    return 0


def cmd_key_hash(client: Client, args: argparse.Namespace) -> int:
    """What identities.json stores of a key (its SHA-256); --new makes a key first."""
    import hashlib
    import secrets

    if args.new:
        key = secrets.token_urlsafe(32)
        print(f"key:        {key}")
        print(f"key_sha256: {hashlib.sha256(key.encode()).hexdigest()}")
        return 0
    key = sys.stdin.readline().strip()
    if not key:
        raise CliError("key-hash reads the key from stdin (or makes one with --new)")
    print(hashlib.sha256(key.encode()).hexdigest())
    return 0


def tls_context(cacert: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=cacert)
        if cert:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"TLS files: {getattr(exc, 'strerror', None) or exc}") from None
    return context


# ---- arguments -------------------------------------------------------------------------

def cmd_import(client: Client, args: argparse.Namespace) -> int:
    """Needs no pmd: reads a file, prints (or writes) programs.json."""
    from pathlib import Path

    from .importer import SourceError, import_file, write_atomically

    try:
        result = import_file(Path(args.file), args.format)
    except SourceError as exc:
        raise CliError(str(exc)) from None
    for where, what, why in result.skipped:
        print(f"pmd import: {where}: {what} not carried over: {why}", file=sys.stderr)
    data = json.dumps(result.document(), indent=2) + "\n"
    if args.write:
        try:
            write_atomically(Path(args.write), data.encode())
        except OSError as exc:
            raise CliError(f"cannot write {args.write}: {exc.strerror or exc}") from None
        print(f"pmd import: {len(result.programs)} programs written to {args.write}",
              file=sys.stderr)
    else:
        sys.stdout.write(data)
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the API's JSON instead of a table")
    common.add_argument("--url", default=argparse.SUPPRESS,
                        help="pmd's HTTP address, e.g. http://127.0.0.1:9615 (or PMD_URL); "
                        "default: the Unix socket")
    common.add_argument("--api-key", default=argparse.SUPPRESS,
                        help="API key for --url (or PMD_API_KEY)")
    common.add_argument("--cacert", default=argparse.SUPPRESS,
                        help="CA file that signed pmd's TLS certificate (or PMD_CACERT)")
    common.add_argument("--cert", default=argparse.SUPPRESS,
                        help="client certificate for an https --url (or PMD_CERT)")
    common.add_argument("--key", default=argparse.SUPPRESS,
                        help="its private key (or PMD_KEY; default: in --cert's file)")
    common.add_argument("--socket", default=argparse.SUPPRESS,
                        help=f"Unix socket (or PMD_SOCKET; default {DEFAULT_SOCKET})")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                        help=f"seconds to wait for an answer (default {TIMEOUT:g})")

    parser = argparse.ArgumentParser(
        prog="pmd", parents=[common],
        description="Manage the programs of a running pmd (PM2-style).")
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)

    def add(name: str, func: Any, help_text: str,
            parents: list[argparse.ArgumentParser] | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=parents or [common], help=help_text,
                           description=help_text)
        p.set_defaults(func=func)
        return p

    p = add("list", cmd_list, "list processes")
    p.add_argument("--status", help="only this status (online, stopped, errored, ...)")
    p.add_argument("--name", help="only this name")
    p = add("show", cmd_show, "show one process in detail")
    p.add_argument("id", help="id, name or quick-start id")
    p = add("start", cmd_start, "create and start a process")
    p.add_argument("command", help='the command line, e.g. "node server.js"')
    p.add_argument("--name", help="process name (default: the command's first word)")
    p.add_argument("--port", help='a port ("3000": PORT=3000) or a range ("4000-4003": '
                   "one instance per port)")
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="environment variable (repeatable)")
    p.add_argument("--cwd", help="working directory")
    p.add_argument("--user", help="run as this user (pmd must be root)")
    p.add_argument("--max-memory-restart", dest="max_memory_restart",
                   help="restart when the process group uses more, e.g. 512M")
    p.add_argument("--no-autorestart", action="store_true",
                   help="do not restart the process when it exits")
    for name, help_text in (("stop", "stop a process"), ("restart", "restart a process"),
                            ("reload", "reload a process (zero-downtime for a port range)")):
        p = add(name, simple_action(name), help_text)
        p.add_argument("id", help="id, name or quick-start id")
        if name != "stop":
            p.add_argument("--port", help="move the process to this port or range")
    p = add("delete", cmd_delete, "stop and remove a process")
    p.add_argument("id", help="id, name or quick-start id")
    p = add("logs", cmd_logs, "show a process's last log lines")
    p.add_argument("id", help="id, name or quick-start id")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--lines", type=int, default=20, help="how many lines (default 20)")
    p.add_argument("--type", choices=("out", "error", "all"), default="all",
                   help="which stream (default all)")
    p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    add("system", cmd_system, "show system metrics")
    add("status", cmd_status, "check that pmd answers (exit 0 when it does)")
    p = add("ready", cmd_ready, "check that every enabled boot program is ready (exit 0 "
            "when they are, 1 when not or when pmd does not answer)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="ask again until ready, for up to this long (default: ask once)")
    p.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    for name, verdict, help_text in (
            ("livez", "live", "liveness probe: pmd's loop answers (exit 0 when it does)"),
            ("readyz", "ready", "readiness probe: every boot program is ready and no "
             "shutdown has begun (exit 0 when so)"),
            ("startupz", "started", "start-up probe: every boot program has started or "
             "settled (exit 0 when so)")):
        p = add(name, probe_command("/" + name, verdict), help_text)
        p.add_argument("--verbose", action="store_true",
                       help="list the programs that are not there yet")
        p.set_defaults(default_timeout=PROBE_TIMEOUT)
    add("reexec", cmd_reexec, "re-execute pmd in place; programs keep running")
    add("whoami", cmd_whoami, "show who pmd takes you for, your level and what you may run")
    p = add("signal", cmd_signal, "send a signal to a process's group (e.g. signal USR1 web)")
    p.add_argument("signal", help="USR1, SIGUSR1, HUP, 10, ...")
    p.add_argument("id", help="id, name or quick-start id")
    p.add_argument("--main-pid", action="store_true",
                   help="only the main process, not its whole process group")
    p = add("key-hash", cmd_key_hash, "print the SHA-256 of a key read from stdin, as "
            "identities.json stores it")
    p.add_argument("--new", action="store_true", help="make a random key and print both")
    p = add("quick-start", cmd_quick_start, "run a temporary program (not saved)")
    p.add_argument("command", help="the command line")
    p.add_argument("--name", help="program name")
    p.add_argument("--ttl", type=int, help="stop it after this many seconds")
    p.add_argument("--user", help="run as this user (default: yours)")
    p.add_argument("--wait", action="store_true", help="return once it is RUNNING")
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="environment variable (repeatable)")
    p = add("import", cmd_import, "print programs.json made from a supervisord .conf, a "
            "Procfile or a PM2 ecosystem file (what cannot be carried over is listed on "
            "stderr)")
    p.add_argument("file", help="supervisord.conf, Procfile, ecosystem.config.js or .json")
    p.add_argument("--format", choices=("supervisord", "procfile", "pm2"),
                   help="the file's format (default: from its name)")
    p.add_argument("--write", metavar="PATH",
                   help="write programs.json there (atomically) instead of printing it")
    add_exec(add)
    return parser


def add_exec(add: Any) -> None:
    # exec's --timeout is the command's; the connection has none (a shell may sit idle).
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", default=argparse.SUPPRESS,
                            help="pmd's HTTP address (or PMD_URL); default: the Unix socket")
    connection.add_argument("--api-key", default=argparse.SUPPRESS,
                            help="API key for --url (or PMD_API_KEY)")
    connection.add_argument("--socket", default=argparse.SUPPRESS,
                            help=f"Unix socket (or PMD_SOCKET; default {DEFAULT_SOCKET})")
    p = add("exec", cmd_exec, "run a command in pmd's container with its output, input "
            "and terminal here; exits with its code (128+N for signal N)", [connection])
    p.add_argument("-t", "--tty", action="store_true", help="give it a terminal")
    p.add_argument("-i", "--interactive", action="store_true", help="pass stdin on")
    p.add_argument("-d", "--detach", action="store_true",
                   help="it keeps running when this client goes away")
    p.add_argument("--user", help="run as this user (default: pmd's)")
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="environment variable (repeatable)")
    p.add_argument("--workdir", help="working directory (default: the user's home)")
    p.add_argument("--timeout", dest="exec_timeout", type=float, metavar="S",
                   help="kill it (SIGKILL to its group) after S seconds")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...")


def cmd_exec(client: Client, args: argparse.Namespace) -> int:
    from . import execcmd

    client.timeout = TIMEOUT
    try:
        return execcmd.run(client, args)
    except execcmd.ExecError as exc:
        raise CliError(str(exc)) from None


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.json = getattr(args, "json", False)
    url = getattr(args, "url", None) or os.environ.get("PMD_URL") or None
    api_key = getattr(args, "api_key", None) or os.environ.get("PMD_API_KEY") or None
    socket_path = getattr(args, "socket", None) or os.environ.get("PMD_SOCKET") \
        or DEFAULT_SOCKET
    try:
        tls = None
        if url and url.startswith("https:"):
            tls = tls_context(*(getattr(args, name, None) or os.environ.get(f"PMD_{name.upper()}")
                                or None for name in ("cacert", "cert", "key")))
        client = Client(url, socket_path, api_key, getattr(
            args, "timeout", getattr(args, "default_timeout", TIMEOUT)), tls)
        code = args.func(client, args)
    except CliError as exc:
        print(f"pmd: {exc}", file=sys.stderr)
        code = 1
    except BrokenPipeError:
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
