"""Property-based fuzzing of every route against a real pmd, over TCP and the Unix socket.

After each request: no 5xx (but the documented ones), every error is `{success: false,
error: {code, message}}`, pmd is alive and answers health quickly, programs.json is valid
JSON that pmd can load, and a rejected request changed nothing. Deterministic and bounded
(derandomize, fixed max_examples) so that it runs the same, quickly, everywhere.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pmd_init.store.programs import parse_programs
from tests.api.helpers import API, program
from tests.harness import Pmd

#: PMD_FUZZ_EXAMPLES=2000 for a longer local run; CI keeps the default.
EXAMPLES = int(os.environ.get("PMD_FUZZ_EXAMPLES") or 400)
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

#: 5xx answers the documentation promises: a start that failed, a wait that timed out,
#: the PM2 family's OPERATION_FAILED (a disabled program, a failed reload).
DOCUMENTED_5XX = {"START_FAILED", "WAIT_TIMEOUT", "OPERATION_FAILED"}


@pytest.fixture(scope="module")
def pmd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pmd]:
    base: Path = tmp_path_factory.mktemp("fuzz")
    programs = [program("one", id=1),
                program("ranged", id=2, port_range={"start": 7600, "end": 7602})]
    with Pmd(base, programs, args=["--rate-limit", "0", "--rate-burst", "0"],
             env={"PMD_EPHEMERAL_GRACE": "1"}) as running:
        yield running


@pytest.fixture(scope="module")
def clients(pmd: Pmd) -> dict[str, httpx.Client]:
    return {"tcp": pmd.http, "uds": pmd.uds}


def snapshot(client: httpx.Client) -> Any:
    return client.get(f"{API}/programs").json()


def check_answer(pmd: Pmd, client: httpx.Client, response: httpx.Response,
                 before: Any) -> None:
    status = response.status_code
    if status >= 400:
        body = response.json()
        assert body["success"] is False, response.text
        assert isinstance(body["error"]["code"], str) and body["error"]["code"], response.text
        assert isinstance(body["error"]["message"], str), response.text
        if status >= 500:
            assert body["error"]["code"] in DOCUMENTED_5XX, response.text
        assert snapshot(client) == before, f"a rejected request changed programs: {response.text}"
    assert pmd.proc is not None and pmd.proc.poll() is None, pmd.stderr_text()[-2000:]
    started = time.monotonic()
    health = client.get(f"{API}/health")
    assert health.status_code == 200 and time.monotonic() - started < 1.0
    parse_programs(json.loads((pmd.config_dir / "programs.json").read_text()))


def cleanup(client: httpx.Client, keep: frozenset[int] = frozenset({1, 2})) -> None:
    """Remove programs a fuzzed add happened to create; stop what a start started."""
    for item in snapshot(client)["programs"]:
        if item["id"] not in keep:
            client.post(f"{API}/programs/remove/{item['id']}")
    for ident in keep:
        client.post(f"{API}/programs/{ident}/stop", json={"all": True})


# ---- strategies ------------------------------------------------------------------------

SPECIAL_IDS = ["0", "-1", "1", "2", "99999999999999999999999", "9" * 5000, "abc", "..",
               "%2e%2e", "%2F", "a%2Fb", "%00", "%ff", "%C2%B2", "1.5", "1e3", "one",
               "quick_1_1", "%20"]
path_ids = st.one_of(
    st.sampled_from(SPECIAL_IDS),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text(max_size=20).map(lambda t: quote(t, safe="")).filter(bool),
)

junk_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
    st.sampled_from(["", "\x00", "true", "-1", "0", "65536", "3000-", "1G", "a" * 600,
                     "/etc/passwd", "../../x", "\u202e", "💥"]),
)
junk = st.recursive(junk_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=10)

PROGRAM_FIELDS = ["name", "command", "user", "description", "enabled", "boot",
                  "delay_seconds", "autorestart", "directory", "priority", "stdout_logfile",
                  "stderr_logfile", "logs_enabled", "log_max_bytes", "log_backups",
                  "environment", "port_range", "port_param", "lazy_load", "display",
                  "terminal_id", "terminal_shell", "terminal_interactive", "webhooks",
                  "exitcodes", "startsecs", "startretries", "stop_signal", "stop_timeout",
                  "shutdown_on_exit", "health_check", "max_memory_restart", "id",
                  "ttl", "wait", "timeout", "port", "all", "if_not_running",
                  "script", "args", "env", "instances", "cwd", "autorestart",
                  "max_restarts", "min_uptime", "kill_timeout", "unknown_field"]


def base_body(path: str) -> dict[str, Any]:
    """A valid body for the route, for the fuzzer to spoil."""
    if path.startswith("/api/processes"):
        return {"name": "fuzzed", "script": "sleep 5", "kill_timeout": 1} \
            if path.endswith("processes") else {}
    if path.endswith(("/add", "/quick-start")):
        return {"name": "fuzzed", "command": "sleep 5", "user": "root", "startsecs": 0,
                "stop_timeout": 1}
    return {}


@st.composite
def bodies(draw: st.DrawFn, path: str = "") -> tuple[bytes, str]:
    """A request body and its content type: mostly a valid-looking program with one or
    two fields made junk, sometimes raw junk."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "json", "raw"]))
    if kind == "raw":
        data = draw(st.one_of(
            st.sampled_from([b"", b"null", b"[]", b"1", b'"x"', b"{", b"\xff\xfe{}",
                             b'{"name": "\\ud800"}', b'{"a": 1e999}', b"{}" * 3,
                             b'{"port": 99999999999999999999999}', b"\x00" * 10]),
            st.binary(max_size=64)))
    else:
        if kind == "json":
            value: Any = draw(junk)
        else:
            value = base_body(path)
            for field in draw(st.lists(st.sampled_from(PROGRAM_FIELDS), max_size=2)):
                value[field] = draw(junk)
        data = json.dumps(value).encode()
    content_type = draw(st.sampled_from(["application/json", "text/plain",
                                         "application/x-www-form-urlencoded", ""]))
    return data, content_type


queries = st.lists(st.tuples(
    st.sampled_from(["lines", "type", "port", "port_from", "port_to", "include_status",
                     "include_stats", "enabled", "boot", "hoody_kit", "lazy_load", "status",
                     "name", "offset", "x"]),
    st.one_of(st.sampled_from(["true", "false", "", "1", "-1", "0", "65536", "1e3",
                               "99999999999999999999999", "out", "error", "stderr",
                               "%ff", "\u00b2"]),
              st.text(max_size=10))), max_size=4)

ROUTES = [
    ("GET", f"{API}/programs"), ("GET", f"{API}/programs/{{id}}"),
    ("POST", f"{API}/programs/add"), ("POST", f"{API}/programs/edit/{{id}}"),
    ("POST", f"{API}/programs/remove/{{id}}"), ("POST", f"{API}/programs/{{id}}/start"),
    ("POST", f"{API}/programs/{{id}}/restart"), ("POST", f"{API}/programs/{{id}}/stop"),
    ("POST", f"{API}/programs/{{id}}/enable"), ("POST", f"{API}/programs/{{id}}/disable"),
    ("GET", f"{API}/status"), ("GET", f"{API}/status/{{id}}"),
    ("GET", f"{API}/programs/{{id}}/logs"), ("GET", f"{API}/quick-start"),
    ("POST", f"{API}/quick-start"), ("GET", f"{API}/quick-start/{{id}}/status"),
    ("GET", f"{API}/quick-start/{{id}}/logs"), ("POST", f"{API}/quick-start/{{id}}/stop"),
    ("GET", "/"), ("GET", "/api/status"), ("GET", "/api/system"),
    ("GET", "/api/processes"), ("POST", "/api/processes"),
    ("GET", "/api/processes/{id}"), ("POST", "/api/processes/{id}/stop"),
    ("POST", "/api/processes/{id}/restart"), ("POST", "/api/processes/{id}/reload"),
    ("DELETE", "/api/processes/{id}"), ("GET", "/api/processes/{id}/logs"),
    ("GET", "/api/openapi.json"), ("PUT", f"{API}/programs/add"),
    ("PATCH", "/api/processes/{id}"),
]


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    method, template = draw(st.sampled_from(ROUTES))
    path = template.replace("{id}", draw(path_ids))
    query = draw(queries)
    if query:
        path += "?" + "&".join(f"{quote(k)}={quote(v, safe='%')}" for k, v in query)
    data, content_type = draw(bodies(path))
    headers: dict[str, str | bytes] = {"content-type": content_type} if content_type else {}
    header = draw(st.sampled_from([None, "authorization", "last-event-id", "x-api-key"]))
    if header is not None:
        headers[header] = draw(st.sampled_from(
            ["Bearer", "Bearer  x", "Basic Zm9vOmJhcg==", "ApiKey \u00e9", "-1", "abc",
             "99999999999999999999999", "1_0", "x\ty"])).encode()  # raw UTF-8 bytes
    return {"method": method, "path": path, "content": data if method != "GET" else None,
            "headers": headers, "transport": draw(st.sampled_from(["tcp", "uds"]))}


# ---- the properties --------------------------------------------------------------------

@FUZZ
@given(req=requests())
def test_fuzz_routes(pmd, clients, req):
    client = clients[req["transport"]]
    before = snapshot(client)
    response = client.request(req["method"], req["path"], content=req["content"],
                              headers=req["headers"])
    check_answer(pmd, client, response, before)
    if response.status_code < 400 and req["method"] != "GET":
        cleanup(client)


@settings(FUZZ, max_examples=EXAMPLES // 2)
@given(fields=st.dictionaries(st.sampled_from(PROGRAM_FIELDS), junk, min_size=1, max_size=3),
       route=st.sampled_from([f"{API}/programs/add", f"{API}/programs/edit/1",
                              f"{API}/quick-start", "/api/processes",
                              f"{API}/programs/1/start", f"{API}/programs/2/stop"]))
def test_fuzz_program_bodies(pmd, clients, fields, route):
    client = clients["tcp"]
    body = {**base_body(route), **fields}
    before = snapshot(client)
    response = client.post(route, json=body)
    check_answer(pmd, client, response, before)
    if response.status_code < 400:
        cleanup(client)
        for item in client.get(f"{API}/quick-start").json()["ephemeral_programs"]:
            client.post(f"{API}/quick-start/{item['temporary_id']}/stop")


@pytest.mark.parametrize("size", [(1 << 20) - 64, (1 << 20) + 1, 3 << 20])
def test_bodies_near_and_over_the_limit(pmd, clients, size):
    client = clients["tcp"]
    before = snapshot(client)
    filler = "x" * (size - 80)
    data = json.dumps(program("big", description=filler)).encode()
    response = client.post(f"{API}/programs/add", content=data,
                           headers={"content-type": "application/json"})
    assert response.status_code in (400, 413), response.text
    check_answer(pmd, client, response, before)
