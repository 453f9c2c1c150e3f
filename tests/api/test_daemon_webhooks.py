"""Webhooks delivered for real: a pmd with programs whose webhooks point at an HTTPS server
in this test process. Only loopback is ever contacted: the server listens on 127.0.0.1 with
a certificate made here by `openssl`, and that pmd runs with the test-only escape hatch
(PMD_WEBHOOK_ALLOW_LOOPBACK=1, PMD_WEBHOOK_CA_FILE). The module's shared pmd runs without
it and must refuse such URLs; no name is ever resolved through DNS."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pmd_init import __version__
from pmd_init.model import webhook_rules
from pmd_init.model.spec import WebhooksSpec
from pmd_init.model.states import ProgramState
from pmd_init.supervisor import webhooks
from pmd_init.supervisor.events import EventBus, StateEvent
from tests.api.helpers import API, assert_error, program, wait_until
from tests.harness import Pmd


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for 127.0.0.1, ::1, localhost and hook.test (its own CA)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed: cannot make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"),
         "-days", "2", "-subj", "/CN=pmd webhook test",
         "-addext", "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost,DNS:hook.test",
         "-addext", "basicConstraints=critical,CA:TRUE"],
        check=True, capture_output=True, timeout=60)
    return folder


class Receiver:
    """An HTTPS server on 127.0.0.1 that records every request. Paths choose the answer:
    /ok/... 200, /fail 500, /flaky 500 twice per delivery then 200, /redirect 302."""

    def __init__(self, cert_dir: Path) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.requests.append({
                        "path": self.path, "headers": dict(self.headers.items()),
                        "body": json.loads(body) if body else None, "raw": body,
                        "request_line": self.requestline})
                    tries = sum(1 for r in receiver.requests if r["path"] == self.path and
                                r["headers"].get("X-Pmd-Delivery") ==
                                self.headers.get("X-Pmd-Delivery"))
                status = 200
                extra: dict[str, str] = {}
                if self.path.startswith("/fail"):
                    status = 500
                elif self.path.startswith("/flaky") and tries <= 2:
                    status = 500
                elif self.path.startswith("/redirect"):
                    status = 302
                    extra["Location"] = f"https://127.0.0.1:{receiver.port}/ok/redirected"
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_dir / "cert.pem", cert_dir / "key.pem")
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def seen(self, prefix: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"].startswith(prefix)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def receiver(cert: Path) -> Iterator[Receiver]:
    running = Receiver(cert)
    yield running
    running.close()


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory, cert: Path) -> Iterator[Pmd]:
    """A pmd allowed to reach loopback, trusting the test certificate."""
    env = {"PMD_WEBHOOK_ALLOW_LOOPBACK": "1", "PMD_WEBHOOK_CA_FILE": str(cert / "cert.pem"),
           "PMD_LOG_LEVEL": "DEBUG"}
    with Pmd(tmp_path_factory.mktemp("hooked"), [], env=env) as running:
        yield running


def add(http: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post(f"{API}/programs/add", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def health(pmd: Pmd) -> dict[str, int]:
    return pmd.http.get(f"{API}/health").json()["webhooks"]


def events(receiver: Receiver, path: str) -> list[str]:
    return [r["body"]["event"] for r in receiver.seen(path)]


def test_the_lifecycle_is_posted_with_payload_and_headers(hooked, receiver):
    http = hooked.http
    hooks = {"enabled": True, "urls": [receiver.url("/ok/life?token=s3cret")],
             "events": ["all"], "headers": {"Authorization": "Bearer abc", "X-Team": "ops"},
             "timeout": 5, "retry": 0}
    answer = add(http, program("hook-life", "sh -c 'sleep 0.5; exit 3'",
                               autorestart="false", webhooks=hooks))
    pid = http.post(f"{API}/programs/{answer['id']}/start", json={"wait": True}) \
        .json()["instance"]["pid"]
    wait_until(lambda: "EXITED" in events(receiver, "/ok/life"), timeout=10,
               what="the EXITED webhook")
    seen = receiver.seen("/ok/life")
    # "all" includes READY: a program without a readiness source is ready at RUNNING
    assert [r["body"]["event"] for r in seen] == ["STARTING", "RUNNING", "READY", "EXITED"]
    starting, running, ready, exited = (r["body"] for r in seen)
    assert ready == {**running, "event": "READY", "from_state": None, "to_state": None,
                     "via": "running", "timestamp": ready["timestamp"]}
    assert starting == {
        "program_id": answer["id"], "program": "hook-life", "instance": "hook-life",
        "port": None, "temporary_id": None, "event": "STARTING", "from_state": "STOPPED",
        "to_state": "STARTING", "pid": starting["pid"], "exit_code": None,
        "timestamp": starting["timestamp"], "hostname": socket.gethostname(),
        "reason": None, "retry_at": None}
    assert running["from_state"] == "STARTING" and running["pid"] == pid
    assert (exited["from_state"], exited["to_state"], exited["exit_code"]) == \
        ("RUNNING", "EXITED", 3)
    assert starting["timestamp"].endswith("Z") and \
        starting["timestamp"] <= running["timestamp"] <= exited["timestamp"]
    for r in seen:
        h = r["headers"]
        assert r["request_line"] == "POST /ok/life?token=s3cret HTTP/1.1"
        assert h["User-Agent"] == f"pmd/{__version__}"
        assert h["X-Pmd-Event"] == r["body"]["event"]
        assert h["Content-Type"] == "application/json"
        assert h["Content-Length"] == str(len(r["raw"]))
        assert h["Connection"] == "close"
        assert h["Host"] == f"127.0.0.1:{receiver.port}"
        assert (h["Authorization"], h["X-Team"]) == ("Bearer abc", "ops")
    assert health(hooked)["sent"] >= 4


def test_only_the_chosen_events_are_posted(hooked, receiver):
    http = hooked.http
    hooks = {"urls": [receiver.url("/ok/filter")], "events": ["STOPPING", "STOPPED", "STOPPED"]}
    answer = add(http, program("hook-filter", webhooks=hooks))
    assert answer["program"]["webhooks"]["events"] == ["STOPPING", "STOPPED"]
    http.post(f"{API}/programs/{answer['id']}/start", json={"wait": True})
    http.post(f"{API}/programs/{answer['id']}/stop", json={})
    wait_until(lambda: len(receiver.seen("/ok/filter")) >= 2, timeout=10, what="2 webhooks")
    time.sleep(0.3)
    assert events(receiver, "/ok/filter") == ["STOPPING", "STOPPED"]


def test_edit_disables_and_changes_webhooks(hooked, receiver):
    http = hooked.http
    answer = add(http, program("hook-edit", webhooks={"urls": [receiver.url("/ok/edit-a")],
                                                      "events": ["RUNNING"]}))
    pid = answer["id"]
    response = http.post(f"{API}/programs/edit/{pid}", json={"webhooks": {
        "enabled": False, "urls": [receiver.url("/ok/edit-a")]}})
    assert response.status_code == 200, response.text
    http.post(f"{API}/programs/{pid}/start", json={"wait": True})
    http.post(f"{API}/programs/edit/{pid}", json={"webhooks": {
        "urls": [receiver.url("/ok/edit-b")], "events": ["STOPPED"]}})
    http.post(f"{API}/programs/{pid}/stop", json={})
    wait_until(lambda: receiver.seen("/ok/edit-b"), timeout=10, what="the STOPPED webhook")
    assert receiver.seen("/ok/edit-a") == []
    assert events(receiver, "/ok/edit-b") == ["STOPPED"]


def test_a_500_is_retried_until_it_succeeds(hooked, receiver):
    http = hooked.http
    before = health(hooked)
    answer = add(http, program("hook-flaky", webhooks={
        "urls": [receiver.url("/flaky")], "events": ["RUNNING"], "retry": 3}))
    http.post(f"{API}/programs/{answer['id']}/start", json={"wait": True})
    wait_until(lambda: len(receiver.seen("/flaky")) >= 3, timeout=10, what="3 attempts")
    tries = receiver.seen("/flaky")
    assert len({r["headers"]["X-Pmd-Delivery"] for r in tries}) == 1
    assert [r["body"] for r in tries] == [tries[0]["body"]] * 3
    wait_until(lambda: health(hooked)["sent"] == before["sent"] + 1, what="sent counted")
    time.sleep(0.5)
    assert len(receiver.seen("/flaky")) == 3  # the 200 ended it
    assert health(hooked)["failed"] == before["failed"]


def test_retries_run_out_then_the_failure_is_counted(hooked, receiver):
    http = hooked.http
    before = health(hooked)
    answer = add(http, program("hook-fail", webhooks={
        "urls": [receiver.url("/fail")], "events": ["RUNNING"], "retry": 1}))
    http.post(f"{API}/programs/{answer['id']}/start", json={"wait": True})
    wait_until(lambda: health(hooked)["failed"] == before["failed"] + 1, timeout=10,
               what="a failed delivery")
    assert len(receiver.seen("/fail")) == 2
    assert "answered 500 (attempt 2 of 2)" in hooked.stderr_text()


def test_a_redirect_is_not_followed(hooked, receiver):
    http = hooked.http
    before = health(hooked)
    answer = add(http, program("hook-redirect", webhooks={
        "urls": [receiver.url("/redirect")], "events": ["RUNNING"], "retry": 3}))
    http.post(f"{API}/programs/{answer['id']}/start", json={"wait": True})
    wait_until(lambda: health(hooked)["failed"] == before["failed"] + 1, timeout=10,
               what="the redirect counted as a failure")
    time.sleep(0.5)
    assert len(receiver.seen("/redirect")) == 1  # not retried either
    assert receiver.seen("/ok/redirected") == []
    assert "redirect 302 to" in hooked.stderr_text()
    assert "not followed" in hooked.stderr_text()


@pytest.mark.parametrize("url", [
    "https://127.0.0.1:{port}/ok/refused", "https://[::1]:{port}/ok/refused",
    "https://[::ffff:127.0.0.1]:{port}/ok/refused", "https://localhost:{port}/ok/refused",
    "https://10.0.0.1/ok", "https://169.254.169.254/latest", "https://192.168.1.10/",
    "http://127.0.0.1:{port}/ok/refused", "https://u:p@93.184.216.34/",
])
def test_without_the_escape_hatch_private_targets_are_refused(pmd, http, receiver, url):
    """The module's shared pmd runs without PMD_WEBHOOK_ALLOW_LOOPBACK: add and edit are
    refused with a 400 naming the URL, nothing is stored, nothing is sent."""
    url = url.format(port=receiver.port)
    before_disk = (pmd.config_dir / "programs.json").read_bytes()
    body = program("hook-refused", webhooks={"urls": ["https://hooks.example.com/", url]})
    error = assert_error(http.post(f"{API}/programs/add", json=body), 400,
                         "VALIDATION_ERROR", "webhooks.urls.1")
    assert error["details"]["errors"][0]["field"] == "webhooks.urls.1"
    assert (pmd.config_dir / "programs.json").read_bytes() == before_disk
    existing = http.get(f"{API}/programs").json()["programs"]
    target = next((p for p in existing if p["name"] == "hook-plain"), None) or \
        add(http, program("hook-plain"))["program"]
    assert_error(http.post(f"{API}/programs/edit/{target['id']}",
                           json={"webhooks": {"urls": [url]}}),
                 400, "VALIDATION_ERROR", "webhooks.urls.0")
    assert receiver.seen("/ok/refused") == []


def test_the_operator_flag_lets_webhooks_reach_receivers_inside(tmp_path, cert, receiver):
    """--webhook-allow-local (off in the module's shared pmd, see above): a loopback
    receiver gets the program's events, a private address is accepted (never dialled
    here: that program never changes state), and what stays refused still is."""
    env = {"PMD_WEBHOOK_CA_FILE": str(cert / "cert.pem")}
    with Pmd(tmp_path, [], env=env, args=["--webhook-allow-local"]) as pmd:
        http = pmd.http
        answer = add(http, program("hook-local", webhooks={
            "urls": [receiver.url("/ok/local-flag")], "events": ["RUNNING"]}))
        add(http, program("hook-private", webhooks={"urls": ["https://10.0.0.1/ok"]}))
        assert_error(http.post(f"{API}/programs/add", json=program(
            "hook-multicast", webhooks={"urls": ["https://224.0.0.1/"]})), 400,
            "VALIDATION_ERROR", "webhooks.urls.0")
        assert http.post(f"{API}/programs/{answer['id']}/start",
                         json={"wait": True}).status_code == 200
        wait_until(lambda: receiver.seen("/ok/local-flag"), timeout=10,
                   what="the RUNNING webhook to a loopback receiver")


def test_bad_headers_are_refused_by_the_api(http):
    body = program("hook-headers", webhooks={"urls": ["https://hooks.example.com/"],
                                             "headers": {"X-A": "1\r\nX-B: 2"}})
    assert_error(http.post(f"{API}/programs/add", json=body), 400, "VALIDATION_ERROR",
                 "webhooks.headers.X-A")


# ---- the dispatcher alone: the vetted address, the certificate checked on the name ----


def test_the_vetted_address_is_dialled_and_the_certificate_checked_on_the_name(
        monkeypatch, cert, receiver):
    """A name is resolved once (here by a fake resolver: no DNS), the address it gave is
    the one connected to, and TLS checks the certificate against the name: hook.test is in
    the certificate, other.test is not."""
    monkeypatch.setenv(webhook_rules.ALLOW_LOOPBACK_ENV, "1")
    resolved: list[str] = []

    async def main() -> dict[str, int]:
        loop = asyncio.get_running_loop()

        async def fake_getaddrinfo(host: str, port: int, **kw: Any) -> list[Any]:
            resolved.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

        monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo)
        hooks = WebhooksSpec(urls=[f"https://hook.test:{receiver.port}/ok/by-name",
                                   f"https://other.test:{receiver.port}/ok/wrong-name"],
                             retry=2)
        bus = EventBus()
        dispatcher = webhooks.WebhookDispatcher(loop, bus, lambda e: hooks,
                                                ca_file=cert / "cert.pem")
        bus.publish(StateEvent(program_id=1, program="p", instance="p", port=None,
                               from_state=ProgramState.STARTING,
                               to_state=ProgramState.RUNNING, pid=1, exit_code=None,
                               time=time.time()))
        deadline = time.monotonic() + 10
        while dispatcher._tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await dispatcher.close()
        return dispatcher.counters()

    counters = asyncio.run(main())
    assert counters == {"sent": 1, "failed": 1, "dropped": 0, "pending": 0}
    assert sorted(set(resolved)) == ["hook.test", "other.test"]
    (by_name,) = receiver.seen("/ok/by-name")
    assert by_name["headers"]["Host"] == f"hook.test:{receiver.port}"
    assert receiver.seen("/ok/wrong-name") == []  # a certificate failure is not retried
