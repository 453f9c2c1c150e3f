"""Webhooks without a network: the URL and header rules (WebhooksSpec), the address policy,
the payload and request bytes, and the dispatcher's queueing, filtering, retries, refusals
and shutdown with its delivery step replaced. Real deliveries over TLS are in
tests/api/test_daemon_webhooks.py."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
from typing import Any

import pytest
from pydantic import ValidationError

from pmd_init import __version__
from pmd_init.model.spec import ProgramSpec, WebhooksSpec
from pmd_init.model.states import ProgramState
from pmd_init.model.webhook_rules import ALLOW_LOCAL_ENV, ALLOW_LOOPBACK_ENV, address_problem
from pmd_init.supervisor import webhooks
from pmd_init.supervisor.errors import Invalid
from pmd_init.supervisor.events import EventBus, ReadyEvent, StateEvent
from pmd_init.supervisor.webhooks import (
    Delivery,
    DeliveryFailed,
    WebhookDispatcher,
    build_request,
    parse_head,
)

S = ProgramState


@pytest.fixture(autouse=True)
def no_escape_hatch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_LOOPBACK_ENV, raising=False)


def refusal(body: dict[str, Any]) -> tuple[str, str]:
    """(field, message) of the first error of a program with these webhooks."""
    data = {"name": "w", "command": "true", "webhooks": body}
    with pytest.raises(ValidationError) as info:
        ProgramSpec.model_validate(data)
    invalid = Invalid.from_validation(info.value, data)
    assert invalid.field is not None
    return invalid.field, str(invalid)


# ---- URLs --------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "https://hooks.example.com/x",
    "https://hooks.example.com./x?token=abc&b=%20c#frag",
    "https://HOOKS.Example.COM:8443",
    "https://93.184.216.34/p",
    "https://[2606:4700:4700::1111]:443/p",
    "https://[::ffff:93.184.216.34]/",
    "https://under_score.example.com/",
])
def test_public_https_urls_are_accepted(url):
    assert WebhooksSpec(urls=[url]).urls == [url]


@pytest.mark.parametrize("url,reason", [
    ("http://hooks.example.com/x", "https://"),
    ("ftp://hooks.example.com/x", "https://"),
    ("hooks.example.com/x", "https://"),
    ("https:///x", "host"),
    ("https://", "host"),
    ("https://user:pw@hooks.example.com/", "userinfo"),
    ("https://user@hooks.example.com/", "userinfo"),
    ("https://a@127.0.0.1@hooks.example.com/", "userinfo"),
    ("https://hooks.example.com:0/", "port"),
    ("https://hooks.example.com:99999/", "valid URL"),
    ("https://[::1/", "valid URL"),
    ("https://hooks.example.com/a b", "spaces"),
    ("https://hooks.example.com/a\r\nHost: evil", "control"),
    ("https://hooks.example.com/\x00", "control"),
    ("https://hööks.example.com/", "non-ASCII"),
    ("https://hooks.example.com/" + "a" * 2100, "2048"),
    ("https://exa!mple.com/", "host name"),
    ("https://-bad.example.com/", "host name"),
    # loopback, by address and by name
    ("https://127.0.0.1/", "loopback"),
    ("https://127.8.9.10:8443/", "loopback"),
    ("https://[::1]/", "loopback"),
    ("https://[::ffff:127.0.0.1]/", "loopback"),
    ("https://localhost/", "loopback host name"),
    ("https://LOCALHOST:8080/", "loopback host name"),
    ("https://localhost./", "loopback host name"),
    ("https://api.localhost/", "loopback host name"),
    # the resolver reads these as 127.0.0.1
    ("https://127.1/", "non-standard"),
    ("https://2130706433/", "non-standard"),
    ("https://0x7f000001/", "non-standard"),
    ("https://0177.0.0.1/", "non-standard"),
    # private, link-local, multicast, reserved, unspecified, shared
    ("https://10.1.2.3/", "private"),
    ("https://172.16.0.1/", "private"),
    ("https://192.168.1.1/", "private"),
    ("https://[fd00::1]/", "private"),
    ("https://[::ffff:10.0.0.1]/", "private"),
    ("https://[2002:c0a8:101::1]/", "private"),  # 6to4 of 192.168.1.1
    ("https://[64:ff9b::a00:1]/", "private"),  # NAT64 of 10.0.0.1
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://[fe80::1]/", "link-local"),
    ("https://[fe80::1%25eth0]/", "scoped"),
    ("https://224.0.0.1/", "multicast"),
    ("https://[ff02::1]/", "multicast"),
    ("https://240.0.0.1/", "address"),
    ("https://0.0.0.0/", "unspecified"),
    ("https://[::]/", "unspecified"),
    ("https://100.64.0.1/", "public"),
])
def test_urls_against_the_rules_are_refused_naming_the_item(url, reason):
    field, message = refusal({"urls": ["https://hooks.example.com/ok", url]})
    assert field == "webhooks.urls.1"
    assert reason in message, message


def test_loopback_escape_hatch_lets_loopback_addresses_only(monkeypatch):
    monkeypatch.setenv(ALLOW_LOOPBACK_ENV, "1")
    urls = ["https://127.0.0.1:8443/x", "https://[::1]:8443/x", "https://[::ffff:127.0.0.1]/"]
    assert WebhooksSpec(urls=urls).urls == urls
    for url in ("https://10.0.0.1/", "https://169.254.169.254/", "https://localhost/"):
        field, _ = refusal({"urls": [url]})
        assert field == "webhooks.urls.0"
    monkeypatch.setenv(ALLOW_LOOPBACK_ENV, "yes")  # only "1" opens it
    assert refusal({"urls": ["https://127.0.0.1/"]})[0] == "webhooks.urls.0"


def test_allow_local_opens_loopback_private_and_localhost_but_not_the_rest(monkeypatch):
    monkeypatch.delenv(ALLOW_LOOPBACK_ENV, raising=False)
    local = ["https://127.0.0.1:8443/x", "https://[::1]/x", "https://10.0.0.1/",
             "https://192.168.1.10/", "https://169.254.169.254/", "https://100.64.0.1/",
             "https://localhost:8080/", "https://[fd00::1]/"]
    for url in local:
        assert refusal({"urls": [url]})[0] == "webhooks.urls.0", url  # off by default
    monkeypatch.setenv(ALLOW_LOCAL_ENV, "1")
    assert WebhooksSpec(urls=local).urls == local
    for url in ("https://0.0.0.0/", "https://224.0.0.1/", "https://240.0.0.1/",
                "https://u:p@10.0.0.1/", "http://10.0.0.1/"):
        assert refusal({"urls": [url]})[0] == "webhooks.urls.0", url


def test_url_count_is_bounded():
    urls = [f"https://h{i}.example.com/" for i in range(21)]
    field, message = refusal({"urls": urls})
    assert field == "webhooks.urls" and "20" in message
    assert len(WebhooksSpec(urls=urls[:20]).urls) == 20


def test_address_policy_on_public_addresses():
    for text in ("8.8.8.8", "93.184.216.34", "2001:4860:4860::8888", "::ffff:8.8.8.8"):
        assert address_problem(ipaddress.ip_address(text)) is None, text


# ---- headers and events ------------------------------------------------------------


@pytest.mark.parametrize("headers,field,reason", [
    ({"X-Ok": "a\r\nX-Injected: 1"}, "webhooks.headers.X-Ok", "CR, LF"),
    ({"X-Ok": "a\nb"}, "webhooks.headers.X-Ok", "CR, LF"),
    ({"X-Ok": "a\x00b"}, "webhooks.headers.X-Ok", "NUL"),
    ({"X-Ok": "é"}, "webhooks.headers.X-Ok", "ASCII"),
    ({"X-Ok": "v" * 4097}, "webhooks.headers.X-Ok", "4096"),
    ({"X-Bad\r\nX-Evil": "1"}, "webhooks.headers.X-Bad\r\nX-Evil", "token"),
    ({"X Bad": "1"}, "webhooks.headers.X Bad", "token"),
    ({"X-Bad:": "1"}, "webhooks.headers.X-Bad:", "token"),
    ({"": "1"}, "webhooks.headers.", "token"),
    ({"Host": "evil.example.com"}, "webhooks.headers.Host", "set by pmd"),
    ({"content-length": "0"}, "webhooks.headers.content-length", "set by pmd"),
    ({"Transfer-Encoding": "chunked"}, "webhooks.headers.Transfer-Encoding", "pmd"),
    ({"X-Pmd-Event": "FATAL"}, "webhooks.headers.X-Pmd-Event", "set by pmd"),
])
def test_bad_headers_are_refused(headers, field, reason):
    got_field, message = refusal({"headers": headers})
    assert got_field == field
    assert reason in message, message


def test_header_count_is_bounded_and_good_headers_pass():
    assert refusal({"headers": {f"X-H{i}": "v" for i in range(21)}})[0] == "webhooks.headers"
    good = {"Authorization": "Bearer abc.def", "X-Signature": "sha256=\tffff",
            "User-Agent": "mine/1"}
    assert WebhooksSpec(headers=good).headers == good


def test_events_duplicates_tolerated_unknown_refused():
    spec = WebhooksSpec(events=["RUNNING", "FATAL", "RUNNING", "*", "*"])
    assert spec.events == ["RUNNING", "FATAL", "*"]
    field, _ = refusal({"events": ["RUNNING", "CRASHED"]})
    assert field == "webhooks.events.1"
    assert refusal({"timeout": 0})[0] == "webhooks.timeout"
    assert refusal({"retry": 6})[0] == "webhooks.retry"


# ---- payload and request -----------------------------------------------------------


def event(to: ProgramState = S.RUNNING, frm: ProgramState = S.STARTING, **kw: Any) -> StateEvent:
    fields: dict[str, Any] = {"program_id": 7, "program": "web", "instance": "web",
                              "port": None, "from_state": frm, "to_state": to, "pid": 42,
                              "exit_code": None, "time": 1700000000.25}
    return StateEvent(**{**fields, **kw})


def test_payload_shape():
    body = webhooks.payload(event(S.EXITED, S.RUNNING, exit_code=3, port=8001,
                                  instance="web:8001"), "box")
    assert body == {
        "program_id": 7, "program": "web", "instance": "web:8001", "port": 8001,
        "temporary_id": None, "event": "EXITED", "from_state": "RUNNING",
        "to_state": "EXITED", "pid": 42, "exit_code": 3,
        "timestamp": "2023-11-14T22:13:20.250Z", "hostname": "box",
        "reason": None, "retry_at": None,
    }


def test_payload_says_why_and_until_when_a_start_waits():
    body = webhooks.payload(event(S.BACKOFF, S.EXITED, reason="start_limit",
                                  retry_at=1700000010.0), "box")
    assert (body["event"], body["reason"], body["retry_at"]) == \
        ("BACKOFF", "start_limit", "2023-11-14T22:13:30.000Z")


def test_request_bytes():
    delivery = Delivery(url="https://h.example.com:8443/in?t=1#frag", event="RUNNING",
                        body=b'{"a":1}', headers=(("user-agent", "mine/2"), ("X-T", "v")),
                        timeout=5, retry=0, delivery_id="abc")
    head, _, body = build_request(delivery).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /in?t=1 HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers == {"Host": "h.example.com:8443", "user-agent": "mine/2",
                       "Content-Type": "application/json", "X-T": "v",
                       "Content-Length": "7", "Connection": "close",
                       "X-Pmd-Event": "RUNNING", "X-Pmd-Delivery": "abc"}
    assert body == b'{"a":1}'
    plain = Delivery(url="https://[2606:4700::1]", event="FATAL", body=b"", headers=(),
                     timeout=5, retry=0, delivery_id="x")
    text = build_request(plain).decode()
    assert text.startswith("POST / HTTP/1.1\r\nHost: [2606:4700::1]\r\n")
    assert f"User-Agent: pmd/{__version__}\r\n" in text


def test_parse_head():
    assert parse_head(b"HTTP/1.1 302 Found\r\nLocation: https://x/\r\n\r\n") == \
        (302, {"location": "https://x/"})
    with pytest.raises(DeliveryFailed):
        parse_head(b"SSH-2.0-OpenSSH\r\n\r\n")


# ---- the dispatcher ----------------------------------------------------------------


class Recorder:
    """Stands in for the network: records deliveries, answers from a script."""

    def __init__(self, answers: list[Any] | None = None, delay: float = 0.0) -> None:
        self.calls: list[Delivery] = []
        self.answers = answers or []
        self.delay = delay

    async def __call__(self, delivery: Delivery) -> tuple[int, dict[str, str]]:
        self.calls.append(delivery)
        if self.delay:
            await asyncio.sleep(self.delay)
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, BaseException):
            raise answer
        return answer, {"location": "https://elsewhere.example.com/"}


def dispatcher_for(hooks: WebhooksSpec | None, recorder: Recorder | None = None,
                   **kw: Any) -> tuple[EventBus, WebhookDispatcher]:
    bus = EventBus()
    d = WebhookDispatcher(asyncio.get_running_loop(), bus, lambda e: hooks, **kw)
    if recorder is not None:
        d._post = recorder  # type: ignore[method-assign]
    return bus, d


async def settle(d: WebhookDispatcher, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while d._tasks and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert not d._tasks


def test_events_are_filtered_and_sent_in_order_to_every_url(monkeypatch):
    async def main() -> None:
        hooks = WebhooksSpec(urls=["https://a.example.com/", "https://b.example.com/",
                                   "https://a.example.com/"],
                             events=["STARTING", "EXITED"], headers={"X-T": "1"})
        rec = Recorder()
        bus, d = dispatcher_for(hooks, rec)
        bus.publish(event(S.STARTING, S.STOPPED, pid=None))
        bus.publish(event(S.RUNNING, S.STARTING))
        bus.publish(event(S.EXITED, S.RUNNING, exit_code=1))
        await settle(d)
        assert [(c.url, c.event) for c in rec.calls if "a." in c.url] == \
            [("https://a.example.com/", "STARTING"), ("https://a.example.com/", "EXITED")]
        assert len(rec.calls) == 4 and d.counters() == \
            {"sent": 4, "failed": 0, "dropped": 0, "pending": 0}
        body = json.loads(rec.calls[-1].body)
        assert body["event"] == "EXITED" and body["exit_code"] == 1
        assert rec.calls[0].headers == (("X-T", "1"),) and rec.calls[0].timeout == 10
        await d.close()

    asyncio.run(main())


def test_ready_is_an_event_of_its_own_with_the_source_that_said_so():
    async def main() -> None:
        hooks = WebhooksSpec(urls=["https://a.example.com/"], events=["READY"])
        rec = Recorder()
        bus, d = dispatcher_for(hooks, rec)
        bus.publish(event(S.RUNNING, S.STARTING))
        bus.publish(ReadyEvent(program_id=1, program="db", instance="db", port=None,
                               pid=42, time=1_700_000_000.5, via="notify"))
        await settle(d)
        assert [c.event for c in rec.calls] == ["READY"]
        body = json.loads(rec.calls[0].body)
        assert (body["event"], body["via"], body["pid"], body["to_state"]) == \
            ("READY", "notify", 42, None)
        assert body["timestamp"] == "2023-11-14T22:13:20.500Z"
        await d.close()

    asyncio.run(main())


def test_disabled_missing_or_empty_webhooks_send_nothing():
    async def main() -> None:
        for hooks in (None, WebhooksSpec(enabled=False, urls=["https://a.example.com/"]),
                      WebhooksSpec(urls=[]), WebhooksSpec(urls=["https://a.example.com/"],
                                                          events=[])):
            rec = Recorder()
            bus, d = dispatcher_for(hooks, rec)
            bus.publish(event())
            assert not d._tasks and d.counters()["pending"] == 0
            await d.close()
            assert rec.calls == []

    asyncio.run(main())


def test_retries_with_backoff_then_gives_up(monkeypatch):
    monkeypatch.setattr(webhooks, "backoff", lambda attempt: 0.0)

    async def main() -> None:
        hooks = WebhooksSpec(urls=["https://a.example.com/"], retry=3)
        rec = Recorder([500, OSError("connection reset"), 503, 200])
        bus, d = dispatcher_for(hooks, rec)
        bus.publish(event())
        await settle(d)
        assert len(rec.calls) == 4 and d.sent == 1 and d.failed == 0
        assert len({c.delivery_id for c in rec.calls}) == 1  # the same delivery, retried
        rec.answers = [500, 500, 500, 500]
        bus.publish(event())
        await settle(d)
        assert len(rec.calls) == 8 and d.failed == 1
        await d.close()

    asyncio.run(main())


@pytest.mark.parametrize("answer", [302, 301, 400, 404,
                                    DeliveryFailed("refused", retry=False)])
def test_redirects_client_errors_and_refusals_are_not_retried(monkeypatch, answer):
    monkeypatch.setattr(webhooks, "backoff", lambda attempt: 0.0)

    async def main() -> None:
        rec = Recorder([answer])
        bus, d = dispatcher_for(WebhooksSpec(urls=["https://a.example.com/"], retry=5), rec)
        bus.publish(event())
        await settle(d)
        assert len(rec.calls) == 1 and d.failed == 1 and d.sent == 0
        await d.close()

    asyncio.run(main())


def test_timeout_bounds_each_attempt(monkeypatch):
    monkeypatch.setattr(webhooks, "backoff", lambda attempt: 0.0)

    async def main() -> None:
        rec = Recorder(delay=30)
        bus, d = dispatcher_for(WebhooksSpec(urls=["https://a.example.com/"], timeout=1,
                                             retry=1), rec)
        started = time.monotonic()
        bus.publish(event())
        await settle(d, timeout=5)
        assert len(rec.calls) == 2 and d.failed == 1
        assert 1.9 < time.monotonic() - started < 4
        await d.close()

    asyncio.run(main())


def test_full_queue_drops_and_counts_without_blocking():
    async def main() -> None:
        rec = Recorder(delay=0.05)
        bus, d = dispatcher_for(WebhooksSpec(urls=["https://a.example.com/",
                                                   "https://b.example.com/"]),
                                rec, max_pending=5)
        for _ in range(10):
            bus.publish(event())
        # The state machine was not held up: every publish returned before any delivery
        # began (an order, not a duration, so a busy machine cannot fail it).
        assert rec.calls == []
        assert d.counters() == {"sent": 0, "failed": 0, "dropped": 15, "pending": 5}
        await settle(d)
        assert d.sent == 5 and len(rec.calls) == 5
        await d.close()

    asyncio.run(main())


def test_close_drains_then_cancels_and_counts_the_rest():
    async def main() -> None:
        rec = Recorder(delay=0.2)
        bus, d = dispatcher_for(WebhooksSpec(urls=["https://a.example.com/"]), rec)
        for _ in range(4):
            bus.publish(event())
        tasks = list(d._tasks.values())
        await d.close(drain=0.3)  # time for one delivery, not four
        assert all(t.done() for t in tasks) and not d._tasks and not d._lanes
        assert d.sent == 1 and d.dropped == 3 and d.counters()["pending"] == 0
        bus.publish(event())  # closed: ignored
        assert not d._tasks and len(rec.calls) == 2

    asyncio.run(main())


def test_close_at_once_drops_what_never_started():
    async def main() -> None:
        rec = Recorder()
        bus, d = dispatcher_for(WebhooksSpec(urls=["https://a.example.com/",
                                                   "https://b.example.com/"]), rec)
        bus.publish(event())
        await d.close()  # the lanes' tasks have not run yet
        assert rec.calls == [] and not d._tasks and not d._lanes
        assert d.counters() == {"sent": 0, "failed": 0, "dropped": 2, "pending": 0}

    asyncio.run(main())


def test_a_name_resolving_to_any_private_address_is_refused_before_connecting(monkeypatch):
    """DNS rebinding: the addresses are checked at delivery time, all of them, and nothing
    is connected to when one is refused. No DNS is used: the resolver is replaced."""
    connects: list[Any] = []

    async def no_connect(*args: Any, **kw: Any) -> Any:
        connects.append(args)
        raise AssertionError("must not connect")

    monkeypatch.setattr(asyncio, "open_connection", no_connect)
    monkeypatch.setattr(webhooks, "backoff", lambda attempt: 0.0)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        answers = {
            "rebound.example.com": ["93.184.216.34", "127.0.0.1"],
            "inside.example.com": ["10.0.0.7"],
            "meta.example.com": ["169.254.169.254"],
            "mapped.example.com": ["::ffff:192.168.0.1"],
        }

        async def fake_getaddrinfo(host: str, port: int, **kw: Any) -> list[Any]:
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM,
                     6, "", (a, port)) for a in answers[host]]

        monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo)
        hooks = WebhooksSpec(urls=[f"https://{h}/in" for h in answers], retry=3)
        bus, d = dispatcher_for(hooks)
        bus.publish(event())
        await settle(d)
        assert d.failed == 4 and d.sent == 0 and connects == []
        await d.close()

    asyncio.run(main())
