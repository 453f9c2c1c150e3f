"""The API's listening sockets across a re-exec: what is handed over, what is taken back,
and the server pausing and resuming on the same sockets (the exec-failed path)."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from pathlib import Path
from types import SimpleNamespace

from sanic import Sanic

from pmd_init.api.listeners import (
    Listener,
    bind_tcp,
    bind_unix,
    open_listeners,
    take_handed_over,
    wanted,
)
from pmd_init.model.access import Identities
from pmd_init.settings import Settings
from pmd_init.supervisor.events import EventBus

REQUEST = b"GET /api/status HTTP/1.1\r\nHost: pmd\r\nConnection: close\r\n\r\n"


def settings(tmp_path: Path, port: int = 0) -> Settings:
    return Settings(state_dir=tmp_path, host="127.0.0.1", port=port,
                    socket=tmp_path / "pmd.sock")


def handed(listeners: list[Listener]) -> list[dict[str, object]]:
    """What the old pmd writes in its state, with the descriptors let through the exec."""
    for listener in listeners:
        os.set_inheritable(listener.sock.fileno(), True)
    return [listener.describe() for listener in listeners]


def test_listeners_come_back_by_number_and_close_on_exec_again(tmp_path: Path) -> None:
    s = settings(tmp_path)
    first = open_listeners(s)
    assert [x.kind for x in first] == ["tcp", "unix"]
    assert stat.S_IMODE(os.stat(tmp_path / "pmd.sock").st_mode) == 0o600
    entries = handed(first)
    taken = take_handed_over(entries)
    assert [x.sock.fileno() for x in taken] == [x.sock.fileno() for x in first]
    assert not any(os.get_inheritable(x.sock.fileno()) for x in taken)
    # the same settings reuse them: the same socket, nothing unlinked or bound again
    inode = os.stat(tmp_path / "pmd.sock").st_ino
    again = open_listeners(s, taken)
    assert [x.sock for x in again] == [x.sock for x in taken]
    assert os.stat(tmp_path / "pmd.sock").st_ino == inode
    for listener in again:
        listener.sock.close()


def test_what_is_not_a_listening_socket_is_skipped_and_a_pipe_left_alone(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    idle = socket.socket()  # a socket, but not listening: it was ours, so it is closed
    entries = [{"kind": "tcp", "address": ["127.0.0.1", 0], "fd": read_end},
               {"kind": "tcp", "address": ["127.0.0.1", 0], "fd": idle.detach()},
               {"kind": "unix", "address": "x", "fd": 987654},
               {"kind": "carrier pigeon", "fd": 0}, {"fd": "3"}, "junk"]
    assert take_handed_over(entries) == []
    assert take_handed_over({"not": "a list"}) == []
    os.fstat(read_end)  # still open
    os.close(read_end)
    os.close(write_end)


def test_changed_settings_or_a_removed_socket_file_bind_anew(tmp_path: Path) -> None:
    first = open_listeners(settings(tmp_path))
    (tmp_path / "pmd.sock").unlink()  # someone removed it: that socket is unreachable
    taken = take_handed_over(handed(first))
    other_port = Settings(state_dir=tmp_path, host="127.0.0.1", port=-1,
                          socket=tmp_path / "pmd.sock")
    again = open_listeners(other_port, taken)
    assert [x.kind for x in again] == ["unix"]
    assert again[0].sock is not taken[1].sock
    assert all(x.sock.fileno() == -1 for x in taken)  # both handed-over ones closed
    assert stat.S_ISSOCK(os.stat(tmp_path / "pmd.sock").st_mode)
    again[0].sock.close()


def test_wanted_follows_the_settings(tmp_path: Path) -> None:
    assert wanted(settings(tmp_path, 9615)) == [("tcp", ["127.0.0.1", 9615]),
                                                ("unix", str(tmp_path / "pmd.sock"))]
    none = Settings(port=-1, socket=None)
    assert wanted(none) == []


def ask(address: tuple[str, int] | str) -> bytes:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family) as sock:
        sock.settimeout(10)
        sock.connect(address)
        sock.sendall(REQUEST)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_a_failed_exec_serves_again_on_the_same_sockets(tmp_path: Path) -> None:
    from pmd_init.api.server import ApiServer

    Sanic.test_mode = True  # other tests of this process may have made an app named pmd
    s = settings(tmp_path)
    # what create_app reads of the init; the listing cache follows the supervisor's events
    init = SimpleNamespace(settings=s, supervisor=SimpleNamespace(events=EventBus()),
                           service=None, started_at=time.time(), identities=Identities())

    async def main() -> None:
        api = ApiServer(init, s)  # type: ignore[arg-type]
        await api.start()
        assert api.tcp_address is not None
        tcp = api.tcp_address
        unix = str(s.socket)
        assert (await asyncio.to_thread(ask, tcp)).startswith(b"HTTP/1.1 200")
        streams = api.app.ctx.log_streams_closing = asyncio.Event()
        entries = await api.hand_over()
        assert [e["kind"] for e in entries] == ["tcp", "unix"]
        assert streams.is_set()  # log streams were told to end
        # nobody accepts now, but a client is not refused: it waits in the backlog...
        waiting = [asyncio.ensure_future(asyncio.to_thread(ask, a)) for a in (tcp, unix)]
        await asyncio.sleep(0.2)
        assert not any(w.done() for w in waiting)
        # ...until the exec fails and the same sockets are served again
        await api.take_back()
        for answer in await asyncio.gather(*waiting):
            assert answer.startswith(b"HTTP/1.1 200")
        assert not streams.is_set()  # new ones may run again
        assert not any(os.get_inheritable(x.sock.fileno()) for x in api.listeners)
        await api.stop()
        assert not Path(unix).exists()
        try:
            ask(tcp)
        except ConnectionRefusedError:
            pass
        else:
            raise AssertionError("still listening after stop()")

    asyncio.run(main())


def test_bind_helpers_listen_non_blocking(tmp_path: Path) -> None:
    tcp = bind_tcp("127.0.0.1", 0)
    unix = bind_unix(tmp_path / "sub" / "pmd.sock")
    for sock in (tcp, unix):
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert not sock.getblocking()
        assert not os.get_inheritable(sock.fileno())
        sock.close()
