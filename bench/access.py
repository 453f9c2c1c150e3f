"""What checking a request costs: req/s and latency of the program listing over TCP with
pmd's access control in each form, beside supervisord's XML-RPC listing without and with
its username/password, all as PID 1 of their own PID namespace with the same 20 programs.

Rows (one keep-alive connection asking as fast as answers come, for --seconds):
  pmd open        no key, no identities (the default)
  pmd admin key   --api-key, compared as it is (what every key was before identities)
  pmd hashed key  a read key of identities.json (4 identities), found by its SHA-256
  pmd TLS         the same hashed key over TLS (a session reused: keep-alive)
  supervisord     getAllProcessInfo on its inet_http_server, no auth
  supervisord auth  the same with username/password (HTTP basic)
Ratios: each form against its own init's open row, and pmd's against supervisord's.

Usage: .venv/bin/python bench/access.py [--seconds 4] [--reps 3]
Output: the table on stdout, every raw figure in bench/results/access-<time>.json.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clients import ALL_INFO  # noqa: E402
from inits import (  # noqa: E402
    Launch,
    Prog,
    kill_all_live,
    pmd_launch,
    supervisord_launch,
    wait_until,
)
from table import percentile  # noqa: E402

PROGRAMS = 20
LIST = "/api/v1/daemon/programs?include_status=true"
ADMIN_KEY = "bench-admin-key-0f3a9c1e7b5d2468"
KEYS = {f"reader-{n}": f"bench-read-key-{n}-9d8e7f6a5b4c3d2e" for n in range(4)}
USER, PASSWORD = "bench", "bench-password"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def closed_loop(port: int, request: bytes, seconds: float, tls: ssl.SSLContext | None,
                warmup: float = 0.5) -> dict[str, Any]:
    """One keep-alive connection: send, read the whole answer (Content-Length), again."""
    sock: socket.socket = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop = start + warmup, start + warmup + seconds
    buf = b""
    try:
        while True:
            sent = time.perf_counter()
            if sent >= stop:
                break
            sock.sendall(request)
            while b"\r\n\r\n" not in buf:
                buf += sock.recv(1 << 20)
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while len(buf) < length:
                buf += sock.recv(1 << 20)
            buf = buf[length:]
            if sent >= measure_from:
                latencies.append(time.perf_counter() - sent)
                errors += head[9:12] != b"200"
    finally:
        sock.close()
    ms = [x * 1000 for x in latencies]
    return {"req_per_s": len(ms) / seconds, "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99), "errors": errors}


def get(path: str, headers: dict[str, str]) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


def rpc(auth: bool) -> bytes:
    extra = ""
    if auth:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        extra = f"Authorization: Basic {token}\r\n"
    return (f"POST /RPC2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\n{extra}"
            f"Content-Length: {len(ALL_INFO)}\r\n\r\n").encode() + ALL_INFO


def make_tls(folder: Path) -> tuple[list[str], ssl.SSLContext]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.certs import CA

    ca = CA(folder / "ca")
    server = ca.issue("bench-server", server=True)
    client = ssl.create_default_context(cafile=str(ca.pem))
    return ["--tls-cert", str(server.cert), "--tls-key", str(server.key)], client


def pmd_port(base: Path, launch: Launch) -> int:
    api = base / "state" / "api.json"
    if not wait_until(api.exists, 30, 0.01):
        raise RuntimeError(f"pmd did not serve: {launch.stderr_tail()}")
    return int(json.loads(api.read_text())["port"])


def run_form(form: str, work: Path, opts: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix=f"access-{form.replace(' ', '-')}-", dir=work))
    progs = [Prog(f"p{i:02d}", ["sleep", "100000"]) for i in range(PROGRAMS)]
    tls: ssl.SSLContext | None = None
    if form.startswith("supervisord"):
        port = free_port()
        auth = form.endswith("auth")
        launch = supervisord_launch(base, progs, rpc=True,
                                    inet=(port, USER if auth else None,
                                          PASSWORD if auth else None)).start()
        request = rpc(auth)
        wait_until(lambda: _answers(port), 30, 0.02)
    else:
        args: list[str] = []
        headers: dict[str, str] = {}
        if form == "pmd admin key":
            args, headers = ["--api-key", ADMIN_KEY], {"X-API-Key": ADMIN_KEY}
        elif form in ("pmd hashed key", "pmd TLS"):
            config = base / "config"
            config.mkdir(parents=True, exist_ok=True)
            (config / "identities.json").write_text(json.dumps({"version": 1, "identities": {
                name: {"level": "read", "key_sha256": hashlib.sha256(key.encode()).hexdigest()}
                for name, key in KEYS.items()}}))
            headers = {"X-API-Key": KEYS["reader-3"]}
            if form == "pmd TLS":
                tls_args, tls = make_tls(base / "certs")
                args += tls_args
        launch = pmd_launch(base, progs, args=args).start()
        port = pmd_port(base, launch)
        request = get(LIST, headers)
    try:
        time.sleep(opts.settle)
        result = closed_loop(port, request, opts.seconds, tls)
        if result["errors"]:
            raise RuntimeError(f"{form}: {result['errors']} answers were not 200")
        return result
    finally:
        launch.terminate(15)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


FORMS = ["pmd open", "pmd admin key", "pmd hashed key", "pmd TLS", "supervisord",
         "supervisord auth"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--settle", type=float, default=1.0)
    opts = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pmd-bench-access-"))
    raw: dict[str, list[dict[str, Any]]] = {form: [] for form in FORMS}
    try:
        for rep in range(opts.reps):
            order = FORMS[rep % len(FORMS):] + FORMS[:rep % len(FORMS)]  # rotate the order
            for form in order:
                print(f"rep {rep + 1}: {form}", file=sys.stderr, flush=True)
                raw[form].append(run_form(form, work, opts))
    finally:
        kill_all_live()

    def med(form: str, key: str) -> float:
        return statistics.median(r[key] for r in raw[form])

    lines = ["| form | req/s | p50 ms | p99 ms | req/s vs its init's open row |",
             "|---|---|---|---|---|"]
    for form in FORMS:
        own = "supervisord" if form.startswith("supervisord") else "pmd open"
        lines.append(f"| {form} | {med(form, 'req_per_s'):.0f} | {med(form, 'p50_ms'):.2f} | "
                     f"{med(form, 'p99_ms'):.2f} | "
                     f"{med(form, 'req_per_s') / med(own, 'req_per_s'):.2f} |")
    lines += ["", "pmd / supervisord (req/s): open "
              f"{med('pmd open', 'req_per_s') / med('supervisord', 'req_per_s'):.2f}, "
              "with a key against with a password "
              f"{med('pmd hashed key', 'req_per_s') / med('supervisord auth', 'req_per_s'):.2f}"]
    print("\n".join(lines))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"access-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"opts": vars(opts), "raw": raw, "table": lines}, indent=2))
    print(f"\nraw figures: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
