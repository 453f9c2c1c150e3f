"""Access levels with real callers: every route of both families, taken from pmd's own
route table (the OpenAPI document, held equal to access.py's table), asked by a key of
each level, by no key and by the admin key; local users on the Unix socket known by
their uid; identities.json's bad entries and reloads; guessing cut off per address."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from pmd_init.api.access import FAILURES_MAX, ROUTE_LEVELS
from tests.api.access_helpers import (
    ADMIN_KEY,
    KEYS,
    LEVELS,
    LOCAL_UID,
    STRANGER_UID,
    identities,
    request_as,
    sha256,
    shared_base,
    write_identities,
)
from tests.api.helpers import API, program
from tests.api.process_helpers import ENV
from tests.harness import Pmd

#: Path parameters that name nothing: an allowed request is then a 404, not an action.
FILLERS = {"program_id": "999999", "ident": "no-such-process", "temporary_id": "no-such",
           "name": "ui.js", "run_id": "no-such-run"}


@pytest.fixture(scope="module")
def pmd() -> Iterator[Pmd]:
    base = shared_base()
    running = Pmd(base, [], env=ENV, api_key=ADMIN_KEY)
    write_identities(running.config_dir, identities())
    try:
        with running:
            yield running
    finally:
        shutil.rmtree(base, ignore_errors=True)


def key_headers(level: str | None) -> dict[str, str]:
    if level is None:
        return {}
    key = ADMIN_KEY if level == "admin-key" else KEYS[level]
    return {"Authorization": f"Bearer {key}"}


def served_routes(pmd: Pmd) -> list[tuple[str, str, str]]:
    """(method, path, level) of every route pmd serves, from its own document."""
    doc = httpx.get(pmd.url + "/api/openapi.json", headers=key_headers("admin-key"),
                    timeout=10).json()
    routes = [(method.upper(), path, op["x-pmd-level"])
              for path, ops in doc["paths"].items() for method, op in ops.items()]
    as_table = {f"{m} " + re.sub(r"\{(\w+)\}", lambda g: {
        "program_id": "<program_id:int>", "ident": "<ident:str>",
        "temporary_id": "<temporary_id:str>", "name": "<name:str>",
        "run_id": "<run_id:str>"}[g.group(1)], p): level
        for m, p, level in routes}
    assert as_table == {key: level.label for key, level in ROUTE_LEVELS.items()}
    return routes


def ask(pmd: Pmd, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    url = pmd.url + re.sub(r"\{(\w+)\}", lambda g: FILLERS[g.group(1)], path)
    body = {} if method == "POST" and not path.endswith(("/reset", "/reexec")) else None
    return httpx.request(method, url, headers=headers, json=body, timeout=30)


def assert_refused(response: httpx.Response, path: str, needed: str, status: int) -> None:
    assert response.status_code == status, (path, response.text)
    error = response.json()["error"]
    if status == 403:
        daemon = path.startswith("/api/v1/")
        assert error["code"] == (f"{needed.upper()}_REQUIRED" if daemon
                                 else "PERMISSION_DENIED"), (path, error)
    assert error["details"]["required_level"] == needed, (path, error)


def test_every_route_for_each_level(pmd):
    routes = served_routes(pmd)
    assert len(routes) == len(ROUTE_LEVELS) > 30
    # the re-exec last: an allowed one re-executes pmd (its sockets stay open meanwhile)
    routes.sort(key=lambda r: r[1].endswith("/reexec"))
    callers = [None, *KEYS, "admin-key"]
    for method, path, needed in routes:
        for caller in callers:
            level = "open" if caller is None else "admin" if caller == "admin-key" else caller
            response = ask(pmd, method, path, key_headers(caller))
            if LEVELS.index(level) >= LEVELS.index(needed):
                assert response.status_code not in (401, 403, 429), \
                    (method, path, caller, response.text)
            else:
                assert_refused(response, path, needed, 401 if caller is None else 403)
            if path.endswith("/reexec") and response.status_code == 200:
                pmd.wait_for(lambda: httpx.get(pmd.url + "/", timeout=10).status_code == 200,
                             what="pmd back after its re-exec")


def test_a_wrong_key_is_a_401_that_names_no_identity(pmd):
    response = httpx.get(pmd.url + "/api/processes", headers={"X-API-Key": "wrong"},
                         timeout=10)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "invalid API key"
    whoami = httpx.get(pmd.url + API + "/whoami", headers={"X-API-Key": "wrong"}).json()
    assert (whoami["level"], whoami["key"]) == ("open", "invalid")


def test_whoami_names_the_identity_and_its_levels(pmd):
    me = httpx.get(pmd.url + API + "/whoami", headers=key_headers("operate")).json()
    assert me == {"identity": "operate-caller", "kind": "key", "level": "operate",
                  "levels": ["open", "metrics", "read", "operate"], "transport": "tcp"}
    admin = httpx.get(pmd.url + API + "/whoami", headers=key_headers("admin-key")).json()
    assert (admin["kind"], admin["level"]) == ("admin-key", "admin")
    anonymous = httpx.get(pmd.url + API + "/whoami").json()
    assert (anonymous["kind"], anonymous["level"]) == ("anonymous", "open")
    root = pmd.uds.get(API + "/whoami").json()
    assert root == {"identity": "root", "kind": "local", "level": "admin",
                    "levels": LEVELS, "transport": "unix", "uid": 0, "gid": 0}


def test_ready_tells_an_open_caller_only_its_verdict(pmd):
    anonymous = httpx.get(pmd.url + API + "/ready").json()
    assert "not_ready" not in anonymous
    assert "not_ready" in httpx.get(pmd.url + API + "/ready",
                                    headers=key_headers("read")).json()
    assert "not_ready" not in httpx.get(pmd.url + API + "/ready",
                                        headers=key_headers("metrics")).json()


def test_the_probes_name_programs_to_the_read_level_only(pmd):
    for caller, named in ((None, False), ("metrics", False), ("read", True)):
        body = httpx.get(pmd.url + "/readyz?verbose", headers=key_headers(caller),
                         timeout=10).json()
        assert "programs" in body and ("not_ready" in body) == named, (caller, body)


def test_the_dashboard_asks_for_a_key_below_the_read_level(pmd):
    def mark(html: str) -> str:
        found = re.search(r'<meta name="pmd-auth" content="([a-z]+)">', html)
        assert found, html[:300]
        return found.group(1)

    assert mark(httpx.get(pmd.url + "/ui", timeout=10).text) == "key"
    assert mark(pmd.uds.get("/ui").text) == "none"  # root on the socket: admin
    status, page = request_as(STRANGER_UID, pmd.socket, "GET", "/ui")
    assert status == 200 and mark(page) == "key"  # a uid without identity: open


def test_a_key_offered_as_a_ws_subprotocol_is_that_keys_identity(pmd):
    url = f"ws://127.0.0.1:{pmd.port}/ws"

    async def first(key: str) -> str:
        offered = ["pmd", "pmd.key." + base64.urlsafe_b64encode(key.encode()).decode()
                   .rstrip("=")]
        async with websockets.connect(url, subprotocols=offered,  # type: ignore[arg-type]
                                      open_timeout=10) as ws:
            return str(await asyncio.wait_for(ws.recv(), 10))

    assert '"type":"snapshot"' in asyncio.run(first(KEYS["read"]))
    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(first(KEYS["metrics"]))
    assert refused.value.response.status_code == 403
    assert json.loads(refused.value.response.body)["error"]["details"] == {
        "required_level": "read", "level": "metrics", "identity": "metrics-caller"}


def test_a_local_user_gets_its_identitys_level(pmd):
    # the socket lets other users in once identities name local users
    assert pmd.socket.stat().st_mode & 0o777 == 0o666
    status, me = request_as(LOCAL_UID, pmd.socket, "GET", API + "/whoami")
    assert status == 200
    assert me == {"identity": "deployer", "kind": "local", "level": "operate",
                  "levels": ["open", "metrics", "read", "operate"], "transport": "unix",
                  "uid": LOCAL_UID, "gid": LOCAL_UID}
    assert request_as(LOCAL_UID, pmd.socket, "GET", "/api/processes")[0] == 200
    status, refused = request_as(LOCAL_UID, pmd.socket, "POST", API + "/quick-start",
                                 {"command": "id", "user": "root"})
    assert status == 403 and refused["error"]["code"] == "ADMIN_REQUIRED"
    assert refused["error"]["details"] == {"required_level": "admin", "level": "operate",
                                           "identity": "deployer"}
    status, refused = request_as(LOCAL_UID, pmd.socket, "POST", "/api/processes",
                                 {"name": "x", "script": "id"})
    assert status == 403 and refused["error"]["code"] == "PERMISSION_DENIED"
    assert pmd.uds.get(API + "/quick-start").json()["count"] == 0  # nothing ran


def test_a_local_user_cannot_read_another_identitys_key(pmd):
    """No route shows identities or keys, and identities.json (mode 0600) is root's."""
    hashes = [sha256(key) for key in [*KEYS.values(), ADMIN_KEY]]
    for method, path, level in served_routes(pmd):
        if method != "GET" or "{" in path or path == "/ws" or level == "admin":
            continue
        status, body = request_as(LOCAL_UID, pmd.socket, "GET", path)
        assert status in (200, 503), (path, status, body)
        text = json.dumps(body)
        for secret in [*KEYS.values(), ADMIN_KEY, *hashes]:
            assert secret not in text, path
    status, error = request_as(LOCAL_UID, pmd.socket, "GET", "/api/v1/daemon/whoami")
    assert "key" not in error
    read_end = _read_as(LOCAL_UID, pmd.config_dir / "identities.json")
    assert read_end == "Permission denied"


def _read_as(uid: int, path: Path) -> str:
    import os

    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                path.read_bytes()
                os.write(w, b"read")
            except OSError as exc:
                os.write(w, (exc.strerror or "error").encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as reader:
        answer = reader.read().decode()
    os.waitpid(child, 0)
    return answer


def test_a_uid_without_identity_gets_nothing_but_the_open_routes(pmd):
    status, me = request_as(STRANGER_UID, pmd.socket, "GET", API + "/whoami")
    assert (status, me["level"], me["identity"]) == (200, "open", f"uid {STRANGER_UID}")
    status, refused = request_as(STRANGER_UID, pmd.socket, "GET", "/api/processes")
    assert status == 403 and refused["error"]["details"]["required_level"] == "read"
    assert request_as(STRANGER_UID, pmd.socket, "GET", API + "/health")[0] == 200


def test_guessing_keys_is_cut_off_for_that_address_only(pmd):
    guesser = httpx.Client(base_url=pmd.url, timeout=10,
                           transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    other = httpx.Client(base_url=pmd.url, timeout=10, headers=key_headers("read"))
    with guesser, other:
        answers = [guesser.get("/api/processes", headers={"X-API-Key": f"guess-{n}"})
                   for n in range(FAILURES_MAX + 3)]
        assert [a.status_code for a in answers[:FAILURES_MAX]] == [401] * FAILURES_MAX
        assert {a.status_code for a in answers[FAILURES_MAX:]} == {429}
        assert int(answers[-1].headers["retry-after"]) >= 1
        # even the right key is refused unread from there for a while...
        right = guesser.get("/api/processes", headers=key_headers("read"))
        assert right.status_code == 429
        # ...and every other caller goes on as before
        assert other.get("/api/processes").status_code == 200
    metrics = httpx.get(pmd.url + "/metrics", headers=key_headers("metrics")).text
    counts = dict(re.findall(r'pmd_api_auth_failures_total\{reason="(\w+)"\} (\S+)', metrics))
    assert float(counts["invalid"]) >= FAILURES_MAX and float(counts["blocked"]) >= 4
    log = pmd.stderr_text()
    assert "authentication failed from 127.0.0.2 on GET /api/processes: wrong API key" in log


def test_bad_entries_are_named_in_health_and_the_rest_loads(tmp_path):
    doc = identities(more={"typo": {"level": "superuser", "key_sha256": sha256("t")},
                           "plain": {"level": "read", "key_sha256": "not-a-hash"}})
    with Pmd(tmp_path, [], env=ENV, api_key=ADMIN_KEY) as pmd:
        pass  # made the folders
    write_identities(pmd.config_dir, doc)
    with Pmd(tmp_path, [], env=ENV, api_key=ADMIN_KEY) as pmd:
        health = httpx.get(pmd.url + API + "/health").json()
        problem = health["identities"]["problem"]
        assert "typo: level: unknown level 'superuser'" in problem
        assert "plain: key_sha256: must be 64 lower-case hex digits" in problem
        assert health["identities"]["count"] == len(doc["identities"]) - 2
        assert httpx.get(pmd.url + "/api/processes", headers=key_headers("read")
                         ).status_code == 200
        assert httpx.get(pmd.url + "/api/processes", headers=key_headers("admin-key")
                         ).status_code == 200
        # a file that does not parse keeps the last good identities
        (pmd.config_dir / "identities.json").write_text("{not json")
        pmd.signal(signal.SIGHUP)
        pmd.wait_for(lambda: "not loaded" in (httpx.get(pmd.url + API + "/health").json()
                                              ["identities"]["problem"] or ""))
        assert httpx.get(pmd.url + "/api/processes", headers=key_headers("read")
                         ).status_code == 200
        # a good one takes over on the next SIGHUP: the read key is gone
        write_identities(pmd.config_dir, {"version": 1, "identities": {}})
        pmd.signal(signal.SIGHUP)
        pmd.wait_for(lambda: httpx.get(pmd.url + "/api/processes",
                                       headers=key_headers("read")).status_code == 401)
        assert httpx.get(pmd.url + API + "/health").json()["identities"] == {
            "count": 0, "problem": None}


def test_without_identities_the_socket_stays_root_only(tmp_path):
    with Pmd(tmp_path, [], env=ENV) as pmd:
        assert pmd.socket.stat().st_mode & 0o777 == 0o600
        # and TCP without any key or identity is open, as before
        assert httpx.get(pmd.url + "/api/processes").status_code == 200
        assert httpx.get(pmd.url + API + "/whoami").json()["kind"] == "open"


def test_signal_reaches_the_program(tmp_path):
    marker = tmp_path / "usr1"
    script = (f"trap 'date +%s.%N >> {marker}' USR1; echo up; "
              "while true; do sleep 0.2 & wait $!; done")
    web = program("web", command=f"sh -c \"{script}\"", readiness={"log_line": "up"},
                  enabled=True, boot=True)
    with Pmd(tmp_path, [web], env=ENV) as pmd:
        pmd.wait_for(lambda: pmd.uds.get(API + "/ready").status_code == 200)
        from pmd_init.cli.pmd import main as cli

        with pytest.raises(SystemExit) as done:
            cli(["--socket", str(pmd.socket), "signal", "USR1", "web"])
        assert done.value.code == 0
        pmd.wait_for(lambda: marker.exists() and marker.read_text().count("\n") == 1)
        with pytest.raises(SystemExit) as done:  # the kill(1) spelling, through the API
            cli(["--socket", str(pmd.socket), "signal", "SIGUSR1", "1"])
        assert done.value.code == 0
        pmd.wait_for(lambda: marker.read_text().count("\n") == 2)
        status = pmd.uds.get("/api/processes/web").json()
        assert status["status"] == "online"  # the trap ran; the program lives on
        wrong = pmd.uds.post(API + "/programs/1/signal", json={"signal": "NOPE"})
        assert wrong.status_code == 400 and wrong.json()["error"]["field"] == "signal"
        pmd.uds.post("/api/processes/web/stop")
        stopped = pmd.uds.post(API + "/programs/1/signal", json={"signal": "USR1"})
        assert stopped.status_code == 409
        assert stopped.json()["error"]["code"] == "NOT_RUNNING"
        assert pmd.uds.post("/api/processes/web/signal",
                            json={"signal": "USR1"}).status_code == 409


def test_no_key_is_found_in_clear_in_any_file_pmd_writes(tmp_path):
    """Keys given on the command line, presented right and wrong, through a SIGHUP and a
    re-exec: none of them in the config, state or log dirs, nor in pmd's own output."""
    wrong = "a-wrong-key-guessed-3f9a"
    logged = program("logged", command="sh -c 'echo started; sleep 30'", enabled=True,
                     boot=True)
    pmd = Pmd(tmp_path, [logged], env=ENV, api_key=ADMIN_KEY)
    write_identities(pmd.config_dir, identities())
    with pmd:
        for key in [*KEYS.values(), ADMIN_KEY, wrong]:
            httpx.get(pmd.url + "/api/processes", headers={"X-API-Key": key}, timeout=10)
            httpx.get(pmd.url + f"/ws?token={key}", timeout=10)
            httpx.get(pmd.url + "/metrics", headers={"Authorization": f"Bearer {key}"})
        pmd.signal(signal.SIGHUP)
        before = pmd.uds.get(API + "/health").json()["pid"]
        assert pmd.uds.post(API + "/reexec").status_code == 200
        pmd.wait_for(lambda: "re-executed" in pmd.stderr_text(), what="the re-exec")
        assert pmd.uds.get(API + "/health").json()["pid"] == before
        assert httpx.get(pmd.url + "/api/processes", headers={"X-API-Key": ADMIN_KEY}
                         ).status_code == 200
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "stdout.log" for p in written)  # the program's log is there
    assert any(p.name == "pmd.stderr" for p in written)
    for path in written:
        content = path.read_bytes()
        for key in [*KEYS.values(), ADMIN_KEY, wrong]:
            assert key.encode() not in content, (key, path)
