"""The listing routes' cache: the same bytes while nothing they show changed, a new answer
after any event, spec, program, dependency wait or second."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pmd_init.api import viewcache
from pmd_init.api.viewcache import ViewCache
from pmd_init.supervisor.events import EventBus, HealthEvent

#: An event of the kind a cached view shows (a health verdict: no state changes with it).
VERDICT = HealthEvent(program_id=1, program="p1", instance="p1", port=None,
                      from_status="unknown", to_status="healthy", time=1000.0)


def fake_supervisor(n: int) -> Any:
    programs = {i: SimpleNamespace(id=i, spec=("spec", i), waiting=None) for i in range(n)}
    return SimpleNamespace(events=EventBus(), programs=programs, ephemeral={})


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    now = SimpleNamespace(t=1000.2)
    monkeypatch.setattr(viewcache.time, "time", lambda: now.t)
    return now


def test_an_answer_is_built_once_until_something_it_shows_changes(clock):
    sup = fake_supervisor(3)
    cache = ViewCache(sup)
    builds: list[int] = []

    def build() -> dict[str, int]:
        builds.append(1)
        return {"n": len(builds)}

    def ask() -> bytes:
        return cache.answer("status", build)

    assert ask() == b'{"n":1}' and ask() == b'{"n":1}' and len(builds) == 1
    clock.t = 1000.9  # the same second
    assert ask() == b'{"n":1}'
    sup.events.publish(VERDICT)  # a state, health or readiness event
    assert ask() == b'{"n":2}'
    sup.programs[1].spec = ("spec", 1, "edited")  # an edit, an enable, a reload
    assert ask() == b'{"n":3}'
    sup.programs[2].waiting = lambda: []  # a start that waits for its dependencies
    assert ask() == b'{"n":4}'
    sup.ephemeral["q"] = SimpleNamespace(spec=("quick",), waiting=None)
    assert ask() == b'{"n":5}'
    del sup.programs[0]
    assert ask() == b'{"n":6}'
    clock.t = 1001.0  # uptimes move on
    assert ask() == b'{"n":7}'
    assert ask() == b'{"n":7}' and cache.builds == 7 and cache.hits == 3


def test_each_route_and_query_has_its_answer_and_the_table_is_bounded(clock):
    cache = ViewCache(fake_supervisor(1))
    for i in range(viewcache.MAX_ENTRIES + 5):
        assert cache.answer(("programs", f"q={i}"), lambda i=i: [i]) == f"[{i}]".encode()
    assert len(cache._entries) <= viewcache.MAX_ENTRIES
    cache.close()


def test_answers_of_an_older_stamp_are_let_go_at_the_next_request(clock):
    sup = fake_supervisor(2)
    cache = ViewCache(sup)
    for query in ("a=1", "a=2", "a=3"):  # a client that busts caches: a key per request
        cache.answer(("programs", query), lambda: [1])
    assert len(cache._entries) == 3
    clock.t = 1001.5  # a new second: none of them can be served again
    assert cache.answer("status", lambda: {"n": 1}) == b'{"n":1}'
    assert list(cache._entries) == ["status"]
    sup.events.publish(VERDICT)
    assert cache.answer(("programs", "a=1"), lambda: [2]) == b"[2]"
    assert list(cache._entries) == [("programs", "a=1")]


def test_the_answers_kept_are_bounded_in_bytes(clock, monkeypatch):
    monkeypatch.setattr(viewcache, "MAX_BYTES", 1000)
    cache = ViewCache(fake_supervisor(1))
    big = "x" * 300
    for i in range(10):
        assert cache.answer(("programs", f"q={i}"), lambda: [big]) == f'["{big}"]'.encode()
        assert cache._bytes == sum(len(body) for body in cache._entries.values()) <= 1000
    # three answers of 304 bytes fit: the fourth, seventh and tenth start the table over
    assert list(cache._entries) == [("programs", "q=9")]
    # the newest answer is always kept, however large
    huge = "y" * 5000
    assert cache.answer(("programs", "huge"), lambda: [huge]) == f'["{huge}"]'.encode()
    assert list(cache._entries) == [("programs", "huge")]
