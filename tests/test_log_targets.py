"""Log targets end to end: a real pmd ships a real program's lines to Debian's rsyslog
(started here on loopback, UDP and TCP, and on Unix datagram sockets, one read as rsyslog
reads /dev/log), to an OTLP/HTTP receiver that parses the body with the official protobuf
definitions, and to a Loki push receiver that checks Loki's documented JSON. A target that
is down drops lines and counts them, each one, while capture goes on; a target that does
not parse, or whose label names an unset variable, is a problem naming it, and the others
load."""

from __future__ import annotations

import asyncio
import json
import mmap
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.helpers import API, wait_until
from tests.harness import Pmd

TALKER = ("i=0; while [ $i -lt 5 ]; do echo out-$i; echo err-$i >&2; i=$((i+1)); done; "
          "sleep 60")


def talker(name: str = "talker", command: str = TALKER) -> dict[str, Any]:
    return {"id": 1, "name": name, "command": f"sh -c '{command}'", "user": "root",
            "startsecs": 0, "boot": True}


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_pmd(base: Path, targets: dict[str, Any], programs: list[dict[str, Any]],
              env: dict[str, str] | None = None) -> Pmd:
    (base / "config").mkdir(parents=True, exist_ok=True)
    (base / "config" / "log_targets.json").write_text(json.dumps({"log_targets": targets}))
    return Pmd(base, programs, env=env).start()


# ---- rsyslog -------------------------------------------------------------------------

#: What rsyslog writes of each message it gets, split by "|" in the tests.
FIELDS = ("%inputname%|%app-name%|%syslogseverity-text%|%msgid%|%procid%|%structured-data%|"
          "%msg%\\n")


@dataclass(frozen=True)
class Rsyslog:
    udp: int
    tcp: int
    unix: Path  # a datagram socket as /dev/log is, read as rsyslog reads /dev/log
    unix_5424: Path  # one read by rsyslog's regular parsers (RFC 5424 among them)
    received: Path


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    binary = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
    if not os.path.exists(binary):
        pytest.skip("rsyslog is not installed (scripts/system-deps installs it)")
    work = tmp_path / "rsyslog"
    work.mkdir()
    udp, tcp = free_port(socket.SOCK_DGRAM), free_port()
    unix, unix_5424 = work / "log.sock", work / "log-5424.sock"
    received = work / "received.log"
    # imuxsock without the system socket (/dev/log is the machine's): sockets of its own,
    # one as imuxsock reads /dev/log by default, one with the regular parsers
    (work / "rsyslog.conf").write_text(f"""
global(workDirectory="{work}")
module(load="imudp")
module(load="imtcp")
module(load="imuxsock" SysSock.Use="off")
input(type="imudp" address="127.0.0.1" port="{udp}")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
input(type="imuxsock" Socket="{unix}")
input(type="imuxsock" Socket="{unix_5424}" UseSpecialParser="off")
template(name="fields" type="string" string="{FIELDS}")
action(type="omfile" file="{received}" template="fields")
""")
    proc = subprocess.Popen([binary, "-n", "-f", str(work / "rsyslog.conf"),
                             "-i", str(work / "rsyslog.pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", tcp), timeout=0.2).close()
                return True
            except OSError:
                return False
        wait_until(lambda: listening() and unix.exists() and unix_5424.exists(), 10,
                   "rsyslog to listen")
        yield Rsyslog(udp, tcp, unix, unix_5424, received)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_lines_reach_rsyslog_over_udp_tcp_and_unix_sockets(tmp_path: Path,
                                                           rsyslog: Rsyslog) -> None:
    targets = {
        "over-udp": {"type": "syslog", "address": f"udp://127.0.0.1:{rsyslog.udp}",
                     "labels": {"via": "udp", "zone": "${ZONE}"}, "batch_seconds": 0.2},
        "over-tcp": {"type": "syslog", "address": f"tcp://127.0.0.1:{rsyslog.tcp}",
                     "labels": {"via": "tcp"}, "batch_seconds": 0.2},
        "over-unix-5424": {"type": "syslog", "address": f"unix://{rsyslog.unix_5424}",
                           "format": "rfc5424", "labels": {"via": "unix-5424"},
                           "batch_seconds": 0.2},
        # as to /dev/log: the local format by default, which rsyslog reads as it comes
        "over-unix": {"type": "syslog", "address": f"unix://{rsyslog.unix}",
                      "batch_seconds": 0.2},
    }
    with start_pmd(tmp_path / "pmd", targets, [talker()], env={"ZONE": "eu-1"}) as pmd:
        def lines() -> list[list[str]]:
            text = rsyslog.received.read_text() if rsyslog.received.exists() else ""
            return [line.split("|", 6) for line in text.splitlines()]
        wait_until(lambda: len(lines()) >= 40, 15, "40 lines at rsyslog")
        pid = pmd.uds.get(f"{API}/status/1").json()["status"]["pid"]
        health = pmd.uds.get(f"{API}/health").json()["log_targets"]
    got = lines()
    for via, inputname in (("udp", "imudp"), ("tcp", "imtcp"), ("unix-5424", "imuxsock")):
        mine = [g[1:] for g in got if f'via="{via}"' in g[5]]
        assert len(mine) == 10, got
        assert all(g[0] == inputname for g in got if f'via="{via}"' in g[5])
        for app, severity, msgid, procid, sd, _ in mine:
            assert (app, procid) == ("talker", str(pid))
            assert sd.startswith('[pmd@32473 instance="talker"')
            assert (severity, msgid) in (("info", "stdout"), ("err", "stderr"))
        assert [m[5] for m in mine if m[2] == "stdout"] == [f"out-{i}" for i in range(5)]
        assert [m[5] for m in mine if m[1] == "err"] == [f"err-{i}" for i in range(5)]
    assert all('zone="eu-1"' in g[5] for g in got if 'via="udp"' in g[5])
    local = [g[1:] for g in got if g[0] == "imuxsock" and g[5] == "-"]
    assert len(local) == 10, got
    assert {(app, procid) for app, _, _, procid, _, _ in local} == {("talker", str(pid))}
    # %msg% keeps the space after "talker[PID]:", as for every syslog(3) message
    assert [m[5] for m in local if m[1] == "info"] == [f" out-{i}" for i in range(5)]
    assert [m[5] for m in local if m[1] == "err"] == [f" err-{i}" for i in range(5)]
    assert health["problems"] == []
    for name in targets:
        assert (health["targets"][name]["sent"], health["targets"][name]["dropped"]) == (10, 0)


def test_a_crash_loops_runs_ship_under_their_own_pids(tmp_path: Path,
                                                     rsyslog: Rsyslog) -> None:
    """Restarts at once write into the pipes of the run before: each run's lines still
    name its own pid, and its unfinished last line is shipped at its exit."""
    targets = {"udp": {"type": "syslog", "address": f"udp://127.0.0.1:{rsyslog.udp}",
                       "batch_seconds": 0.2}}
    # $$$$: the shell's $$ once pmd has expanded its command line ($$ is a $ there)
    loop = {**talker("loop", "echo line-$$$$; printf tail-$$$$; exit 1"), "boot": False,
            "autorestart": "true", "start_limit_burst": 3, "start_limit_interval": 60}
    with start_pmd(tmp_path / "pmd", targets, [loop]) as pmd:
        assert pmd.uds.post(f"{API}/programs/1/start").status_code == 200

        def lines() -> list[list[str]]:
            text = rsyslog.received.read_text() if rsyslog.received.exists() else ""
            return [line.split("|", 6) for line in text.splitlines()]
        wait_until(lambda: len(lines()) >= 6, 15, "6 lines at rsyslog")
    shipped = [(procid, msg) for _, app, _, _, procid, _, msg in lines() if app == "loop"]
    pids = [procid for procid, msg in shipped if msg.startswith("line-")]
    assert len(pids) == 3 and len(set(pids)) == 3
    assert shipped == [(pid, f"{what}-{pid}") for pid in pids for what in ("line", "tail")]


# ---- HTTP receivers ------------------------------------------------------------------

class Receiver:
    """An HTTP server on loopback that keeps every POST (path, headers, body)."""

    def __init__(self, status: int = 204) -> None:
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append((self.path, dict(self.headers), body))
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def test_otlp_payloads_parse_with_the_official_definitions(tmp_path: Path,
                                                           receiver: Receiver) -> None:
    pytest.importorskip("opentelemetry.proto")
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
        ExportLogsServiceRequest,
    )

    targets = {"collector": {"type": "otlp", "url": f"http://127.0.0.1:{receiver.port}/v1/logs",
                             "labels": {"deployment.environment": "test"},
                             "batch_seconds": 0.2, "headers": {"X-Tenant": "t1"}}}
    with start_pmd(tmp_path / "pmd", targets, [talker()]) as pmd:
        pmd.wait_for(lambda: sum(1 for _ in _otlp_records(receiver)) >= 10, 15,
                     what="10 OTLP records")
    path, headers, _ = receiver.posts[0]
    assert path == "/v1/logs" and headers["Content-Type"] == "application/x-protobuf"
    assert headers["X-Tenant"] == "t1"
    request = ExportLogsServiceRequest.FromString(receiver.posts[0][2])
    resource = {a.key: a.value.string_value
                for a in request.resource_logs[0].resource.attributes}
    assert resource == {"service.name": "talker", "deployment.environment": "test"}
    records = list(_otlp_records(receiver))
    by_stream: dict[str, list[str]] = {}
    for record in records:
        attrs = {a.key: a.value for a in record.attributes}
        stream = attrs["log.iostream"].string_value
        assert attrs["pmd.instance"].string_value == "talker"
        assert (record.severity_number, record.severity_text) == \
            ((9, "INFO") if stream == "stdout" else (17, "ERROR"))
        assert abs(record.time_unix_nano / 1e9 - time.time()) < 60
        by_stream.setdefault(stream, []).append(record.body.string_value)
    assert by_stream == {"stdout": [f"out-{i}" for i in range(5)],
                         "stderr": [f"err-{i}" for i in range(5)]}


def _otlp_records(receiver: Receiver) -> Iterator[Any]:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
        ExportLogsServiceRequest,
    )

    for _, _, body in list(receiver.posts):
        for resource in ExportLogsServiceRequest.FromString(body).resource_logs:
            for scope in resource.scope_logs:
                yield from scope.log_records


def test_loki_pushes_match_its_documented_json(tmp_path: Path, receiver: Receiver) -> None:
    targets = {"loki": {"type": "loki",
                        "url": f"http://127.0.0.1:{receiver.port}/loki/api/v1/push",
                        "labels": {"job": "pmd", "host": "${HOSTLABEL}",
                                   "region": "${PMD_TEST_UNSET_REGION:-eu}", "tag": "$$5"},
                        "batch_seconds": 0.2}}
    with start_pmd(tmp_path / "pmd", targets, [talker()], env={"HOSTLABEL": "h1"}) as pmd:
        pmd.wait_for(lambda: sum(len(v) for v in _loki_values(receiver).values()) >= 10, 15,
                     what="10 Loki values")
    for path, headers, body in receiver.posts:
        assert path == "/loki/api/v1/push"
        assert headers["Content-Type"] == "application/json"
        document = json.loads(body)
        # https://grafana.com/docs/loki/latest/reference/loki-http-api/#ingest-logs:
        # {"streams": [{"stream": {label: value}, "values": [["<unix ns>", "<line>"]]}]}
        assert set(document) == {"streams"}
        for stream in document["streams"]:
            assert set(stream) == {"stream", "values"}
            assert all(isinstance(k, str) and isinstance(v, str)
                       for k, v in stream["stream"].items())
            for value in stream["values"]:
                assert len(value) == 2 and value[0].isdigit() and isinstance(value[1], str)
                assert abs(int(value[0]) / 1e9 - time.time()) < 60
    values = _loki_values(receiver)
    base = {"job": "pmd", "host": "h1", "region": "eu", "tag": "$5", "program": "talker",
            "instance": "talker"}
    assert values == {
        json.dumps({**base, "stream": "stdout"}, sort_keys=True): [f"out-{i}" for i in range(5)],
        json.dumps({**base, "stream": "stderr"}, sort_keys=True): [f"err-{i}" for i in range(5)],
    }


def test_every_log_forward_mode_ships_the_programs_own_lines(tmp_path: Path,
                                                             receiver: Receiver) -> None:
    # The tap reads what the program wrote, whatever log_forward does to pmd's stdout:
    # no prefix, no time, no JSON wrapping, and lines even when forwarding is off.
    modes = ("prefixed", "timestamped", "raw", "json", "off")
    programs = [{**talker(f"fw-{mode}", f"echo {mode}-a; echo {mode}-b; sleep 60"),
                 "id": i + 1, "log_forward": mode} for i, mode in enumerate(modes)]
    targets = {"loki": {"type": "loki",
                        "url": f"http://127.0.0.1:{receiver.port}/loki/api/v1/push",
                        "batch_seconds": 0.2}}
    with start_pmd(tmp_path / "pmd", targets, programs) as pmd:
        pmd.wait_for(lambda: sum(len(v) for v in _loki_values(receiver).values()) >= 10, 15,
                     what="10 Loki values")
        forwarded = pmd.stdout_path.read_bytes()
    shipped = {json.loads(key)["program"]: lines
               for key, lines in _loki_values(receiver).items()}
    assert shipped == {f"fw-{mode}": [f"{mode}-a", f"{mode}-b"] for mode in modes}
    assert b"[fw-prefixed] prefixed-a\n" in forwarded
    assert b"\nraw-a\n" in forwarded
    assert b'"line":"json-a"' in forwarded
    assert b"off-a" not in forwarded


def _loki_values(receiver: Receiver) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for _, _, body in list(receiver.posts):
        for stream in json.loads(body)["streams"]:
            key = json.dumps(stream["stream"], sort_keys=True)
            values.setdefault(key, []).extend(v[1] for v in stream["values"])
    return values


# ---- a target down, a target that does not parse ----------------------------------

def test_a_target_down_drops_and_counts_while_capture_goes_on(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    count = 20000
    targets = {"down": {"type": "loki", "url": f"http://127.0.0.1:{closed}/loki/api/v1/push",
                        "buffer_lines": 1000, "batch_lines": 100}}
    program = talker("flood", f"seq 1 {count}; sleep 60")
    with start_pmd(tmp_path / "pmd", targets, [program]) as pmd:
        log = pmd.log_dir / "flood" / "stdout.log"
        pmd.wait_for(lambda: log.exists() and log.read_text().count("\n") == count, 15,
                     what="every line in the log file")
        health = pmd.wait_for(lambda: (h := pmd.uds.get(f"{API}/health").json()
                                       )["log_targets"]["targets"]["down"]["failures"] and h,
                              10, what="a failed send")
        metrics = pmd.uds.get("/metrics").text
    assert log.read_text().splitlines() == [str(i) for i in range(1, count + 1)]
    down = health["log_targets"]["targets"]["down"]
    assert down["sent"] == 0
    assert down["queued"] + down["dropped"] == count
    # queued: the buffer (at most buffer_lines) and the batch being sent (batch_lines)
    assert down["queued"] <= 1000 + 100 and down["dropped"] >= count - 1000 - 100
    assert "Connect" in down["last_error"] or "refused" in down["last_error"]
    found = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
             for family in text_string_to_metric_families(metrics)
             for sample in family.samples}
    # read after the health: a refused batch may have been dropped since, never sent
    dropped = found[("pmd_log_target_lines_total", (("result", "dropped"), ("target", "down")))]
    queued = found[("pmd_log_target_lines_queued", (("target", "down"),))]
    assert found[("pmd_log_target_lines_total", (("result", "sent"), ("target", "down")))] == 0
    assert dropped >= down["dropped"] and dropped + queued == count
    promtool = shutil.which("promtool")  # Prometheus' own parser and linter, when here
    if promtool is not None:
        checked = subprocess.run([promtool, "check", "metrics"], input=metrics,
                                 capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout.strip() == "" and checked.stderr.strip() == ""


def test_a_target_down_counts_every_dropped_line_in_each_log_forward_mode(tmp_path: Path
                                                                         ) -> None:
    # The count of a full target's lines comes from what forwarding found (prefixed,
    # timestamped, json) or from a count of its own (raw, off): exact in each, with reads
    # that cut lines anywhere (seq writes 4 KiB at a time).
    closed = free_port()
    count = 200_000
    modes = ("prefixed", "timestamped", "raw", "json", "off")
    programs = [{**talker(f"fw-{mode}", f"seq 1 {count}; sleep 60"), "id": i + 1,
                 "log_forward": mode} for i, mode in enumerate(modes)]
    targets = {mode: {"type": "loki", "url": f"http://127.0.0.1:{closed}/loki/api/v1/push",
                      "programs": [f"fw-{mode}"], "buffer_lines": 1000, "batch_lines": 100}
               for mode in modes}
    with start_pmd(tmp_path / "pmd", targets, programs) as pmd:
        def complete(mode: str) -> bool:
            log = pmd.log_dir / f"fw-{mode}" / "stdout.log"
            return log.exists() and log.stat().st_size == len(
                "".join(f"{i}\n" for i in range(1, count + 1)))
        pmd.wait_for(lambda: all(complete(mode) for mode in modes), 30,
                     what="every line in every log file")
        health = pmd.uds.get(f"{API}/health").json()["log_targets"]["targets"]
    for mode in modes:
        down = health[mode]
        assert down["sent"] == 0, (mode, down)
        assert down["queued"] + down["dropped"] == count, (mode, down)
        assert down["queued"] <= 1000 + 100, (mode, down)


def test_a_target_that_does_not_parse_is_named_and_the_rest_load(tmp_path: Path,
                                                                 receiver: Receiver) -> None:
    targets = {
        "broken-url": {"type": "loki", "url": "http//nowhere"},
        "broken-address": {"type": "syslog", "address": "udp://127.0.0.1:notaport"},
        "unset-label": {"type": "loki", "url": "http://127.0.0.1:9/loki/api/v1/push",
                        "labels": {"zone": "${PMD_TEST_UNSET_ZONE}"}},
        "local-over-udp": {"type": "syslog", "address": "udp://127.0.0.1:514",
                           "format": "local"},
        "labels-unix-local": {"type": "syslog", "address": "unix:///dev/log",
                              "labels": {"zone": "a"}},
        "format-on-loki": {"type": "loki", "url": "http://127.0.0.1:9/loki/api/v1/push",
                           "format": "rfc5424"},
        "good": {"type": "loki", "url": f"http://127.0.0.1:{receiver.port}/loki/api/v1/push",
                 "batch_seconds": 0.2},
    }
    with start_pmd(tmp_path / "pmd", targets, [talker()]) as pmd:
        pmd.wait_for(lambda: len(receiver.posts) > 0, 15, what="a push to the good target")
        health = pmd.uds.get(f"{API}/health").json()
        status = pmd.uds.get(f"{API}/status/1").json()["status"]["status"]
    problems = health["log_targets"]["problems"]
    assert len(problems) == 6
    assert any("'local-over-udp'" in p and "format 'local' is for a unix://" in p
               for p in problems)
    assert any("'labels-unix-local'" in p and "labels" in p and "format 'rfc5424'" in p
               for p in problems)
    assert any("'format-on-loki'" in p and "only a syslog target" in p for p in problems)
    assert any("'broken-url'" in p and "url" in p for p in problems)
    assert any("'broken-address'" in p and "address" in p for p in problems)
    assert any("'unset-label'" in p and "labels.zone" in p and "PMD_TEST_UNSET_ZONE" in p
               for p in problems)
    assert "broken-url" in health["config_problem"]
    assert set(health["log_targets"]["targets"]) == {"good"}
    assert status == "RUNNING"


def _read_into(kind: str, piece: bytes) -> bytearray | mmap.mmap:
    """`piece` at the start of a read buffer, with bytes after it that are not part of it:
    a bytearray, or the capture's own buffer (a mapping, with no count())."""
    from pmd_init.logs.capture import read_buffer

    if kind == "bytearray":
        return bytearray(piece) + bytearray(b"junk past n")
    buffer = read_buffer()
    buffer[:len(piece) + 10] = piece + b"junk\npast\n"
    return buffer


@pytest.mark.parametrize("kind", ["bytearray", "capture"])
def test_a_tap_joins_lines_across_reads_and_keeps_to_its_buffer(kind: str) -> None:
    from pmd_init.logs.shipping import Shipper, ShipTarget, Source, Tap

    async def feed() -> tuple[list[bytes], int]:
        loop = asyncio.get_running_loop()
        shipper = Shipper(loop, ShipTarget("t", "loki", ("http", "127.0.0.1", 9, "/"),
                                           buffer_lines=5))
        tap = Tap(Source("p", "p", "stdout"), [shipper])
        for piece in (b"one\ntw", b"o\nthr", b"ee", b"\nfour\nfive\nsix\nseven\n", b"ei",
                      b"ght\n"):
            tap(_read_into(kind, piece), len(piece))
        tap.close()
        return [line for _, _, line in shipper._take(100)], shipper.dropped

    lines, dropped = asyncio.run(feed())
    assert lines == [b"one", b"two", b"three", b"four", b"five"]
    assert dropped == 3  # six, seven, eight: the buffer holds 5 lines


@pytest.mark.parametrize("kind", ["bytearray", "capture"])
def test_a_full_target_counts_an_unfinished_last_line_when_the_pipe_ends(kind: str) -> None:
    from pmd_init.logs.shipping import Shipper, ShipTarget, Source, Tap

    async def feed() -> list[int]:
        loop = asyncio.get_running_loop()
        shipper = Shipper(loop, ShipTarget("t", "loki", ("http", "127.0.0.1", 9, "/"),
                                           buffer_lines=2))
        tap = Tap(Source("p", "p", "stdout"), [shipper])
        seen = []
        for piece in (b"one\ntwo\n", b"three\nfo", b"ur\nfi", b"ve"):
            tap(_read_into(kind, piece), len(piece))
            seen.append(shipper.dropped)
        tap.close()  # "five" never got its newline: a line all the same
        return [*seen, shipper.dropped, shipper.queued]

    assert asyncio.run(feed()) == [0, 1, 2, 2, 3, 2]


@pytest.mark.parametrize("kind", ["bytearray", "capture"])
def test_a_cut_lines_own_newline_is_its_end_not_an_empty_line(kind: str) -> None:
    from pmd_init.logs.shipping import LINE_MAX, PARTIAL_MAX, Shipper, ShipTarget, Source, Tap

    long = b"L" * (PARTIAL_MAX + 10)
    shipped = long[:LINE_MAX]  # a target takes a line up to LINE_MAX

    async def feed(pieces: tuple[bytes, ...], lines: bool) -> list[bytes]:
        loop = asyncio.get_running_loop()
        shipper = Shipper(loop, ShipTarget("t", "loki", ("http", "127.0.0.1", 9, "/"),
                                           buffer_lines=100))
        tap = Tap(Source("p", "p", "stdout"), [shipper])
        for piece in pieces:  # `lines` as the capture gives it when it forwards
            tap(_read_into(kind, piece), len(piece), piece.count(b"\n") if lines else None)
        tap.close()
        return [line for _, _, line in shipper._take(100)]

    # cut at the end of a read (held past the limit), the line's newline next: one line;
    # a real empty line after it stays, and a cut line that goes on is a line of its own
    for lines in (False, True):
        assert asyncio.run(feed((long, b"\nc\n\nd\n"), lines)) == [shipped, b"c", b"", b"d"]
        assert asyncio.run(feed((b"a\n" + long, b"\nc\n"), lines)) == [b"a", shipped, b"c"]
        assert asyncio.run(feed((long, b"more\n"), lines)) == [shipped, b"more"]
