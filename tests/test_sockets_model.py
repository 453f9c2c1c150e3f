"""The rules of `sockets` across programs (model/sockets.py)."""

from __future__ import annotations

import pytest

from pmd_init.model.sockets import SocketError, SocketSpec, socket_definitions


def sock(**fields: object) -> SocketSpec:
    return SocketSpec.model_validate(fields)


def test_sockets_on_one_host_with_other_ports_are_distinct() -> None:
    defined = socket_definitions([
        ("a", [sock(name="one", host="127.0.0.1", port=8001)]),
        ("b", [sock(name="two", host="127.0.0.1", port=8002),
               sock(name="u", path="/run/x.sock")]),
        ("c", [sock(name="one")]),
    ])
    assert sorted(defined) == ["one", "two", "u"]


@pytest.mark.parametrize("programs, field", [
    ([("a", [sock(name="one", port=80)]), ("b", [sock(name="two", port=80)])], "sockets"),
    ([("a", [sock(name="one", port=80)]), ("b", [sock(name="one", port=81)])], "sockets.0"),
    ([("a", [sock(name="nobody")])], "sockets.0"),
    ([("a", [sock(name="x", path="/r/a")]), ("b", [sock(name="y", path="/r/a")])], "sockets"),
])
def test_conflicts_and_undefined_names_name_the_entry(programs: list, field: str) -> None:
    with pytest.raises(SocketError) as caught:
        socket_definitions(programs)
    assert caught.value.field == field


@pytest.mark.parametrize("fields", [
    {"name": "x", "port": 80, "path": "/a"},
    {"name": "x", "path": "relative"},
    {"name": "x", "port": 80, "mode": 0o600},
    {"name": "x", "path": "/a", "host": "127.0.0.1"},
    {"name": "1x", "port": 80},
    {"name": "x", "port": 0},
])
def test_a_bad_socket_is_refused(fields: dict) -> None:
    with pytest.raises(ValueError):
        SocketSpec.model_validate(fields)
