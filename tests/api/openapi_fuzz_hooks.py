"""schemathesis hooks for the OpenAPI fuzz run (tests/api/test_openapi_fuzz.py).

- The rules between fields that the document states in words only, because JSON Schema
  cannot compare two values (openapi.py's BETWEEN_FIELDS), applied to what the fuzzer
  generates (in its fuzzing and stateful phases; hooks do not reach the coverage phase).
  The rules a schema can state (`if`/`then`, patterns) are in the document itself.
- `no_undocumented_server_error` in place of schemathesis's not_a_server_error: a 5xx is
  a failure unless it is one the API documents (a start that failed, a wait that timed
  out; docs/daemon-api.md, Errors), as tests/api/test_robustness_fuzz.py holds it.
"""

from __future__ import annotations

from typing import Any

import schemathesis

#: 5xx answers the documentation promises, by error code.
DOCUMENTED_5XX = {"START_FAILED", "WAIT_TIMEOUT", "OPERATION_FAILED"}


def _path(ctx: Any) -> str:
    operation = getattr(ctx, "operation", None)
    return str(getattr(operation, "path", ""))


def _port(value: Any) -> int | None:
    """A valid port as the document has it (the fuzzer sends 5.0 for an integer too)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not float(value).is_integer() or not 1 <= value <= 65535:
        return None
    return int(value)


# A repair changes only values the document calls valid, into values it calls valid: so
# a request the fuzzer made invalid on purpose stays invalid, and a valid one stays valid.


#: A program the fuzz run's pmd has from its start (openapi_fuzz_run.py), that a
#: generated dependency can name: names must be programs that exist.
EXISTING = "web"


def _depends(body: dict[str, Any]) -> None:
    """depends_on names programs that exist, and not the program itself."""
    depends = body.get("depends_on")
    valid_keys = (isinstance(depends, (dict, list)) and len(depends) <= 64
                  and all(isinstance(k, str) and 1 <= len(k) <= 128 for k in depends))
    if not valid_keys or not depends:
        return
    assert isinstance(depends, (dict, list))
    if body.get("name") == EXISTING:
        body["depends_on"] = {} if isinstance(depends, dict) else []
    elif isinstance(depends, dict):
        body["depends_on"] = {EXISTING: next(iter(depends.values()))}
    else:
        body["depends_on"] = [EXISTING]


def _program(body: dict[str, Any], edit: bool) -> None:
    """ProgramSpec's rules between fields that the document cannot state: a port range's
    order and size, dependencies on programs that exist, an edit's id and stored
    fields."""
    ports = body.get("port_range")
    if isinstance(ports, dict):  # ordered, at most 1024 ports
        start, end = _port(ports.get("start")), _port(ports.get("end"))
        if start is not None and end is not None:
            low, high = sorted((start, end))
            body["port_range"] = {**ports, "start": low, "end": min(high, low + 1023)}
    _depends(body)
    if edit:
        # An edit's program has no port range unless the edit gives one.
        if isinstance(body.get("port_param"), str) and body.get("port_range") is None:
            body["port_range"] = {"start": 30000, "end": 30000}
        # `id` must be the program's own, which the body cannot know.
        if isinstance(body.get("id"), int) and not isinstance(body["id"], bool) \
                and 1 <= body["id"] < 2**31:
            del body["id"]
        if body.get("lazy_load") is True and "boot" not in body:
            body["boot"] = False  # the stored program may boot


def _pm2(body: dict[str, Any]) -> None:
    """POST /api/processes: a range of ports is ordered, and `instances` with a range
    must match its size (without a range the document says 1)."""
    _depends(body)
    port = body.get("port")
    if not (isinstance(port, str) and "-" in port):
        return
    first, _, last = port.partition("-")
    low, high = (int(x) if x.strip().isascii() and x.strip().isdigit() else None
                 for x in (first, last))
    if low is None or high is None or _port(low) is None or _port(high) is None:
        return
    low, high = sorted((low, high))
    high = min(high, low + 1023)
    body["port"] = f"{low}-{high}"
    instances = body.get("instances")
    if isinstance(instances, int) and not isinstance(instances, bool) \
            and 1 <= instances <= 1024:
        body["instances"] = high - low + 1


#: What a generated quick-start runs: its command must name an executable file (the
#: fuzz run's PATH is empty on purpose), and this one does nothing, as any user.
HARMLESS = "/bin/true"


def _quick_start(body: dict[str, Any]) -> None:
    """A quick-start's command must be able to run on this system (the document says so
    in words): a valid command becomes one that can, in a folder that exists, without a
    login shell that the empty PATH cannot find, and without waiting for a RUNNING that a
    command exiting at once never reaches (the request would outlast the client)."""
    if isinstance(body.get("command"), str) and body["command"].strip():
        body["command"] = HARMLESS
    if isinstance(body.get("directory"), str):
        body["directory"] = "/"
    if isinstance(body.get("terminal_shell"), str):
        del body["terminal_shell"]
    if body.get("wait") is True:  # a command that runs now exits now: no RUNNING to wait for
        body["wait"] = False


@schemathesis.hook
def map_body(ctx: Any, body: Any) -> Any:
    if not isinstance(body, dict):
        return body
    path = _path(ctx)
    body = dict(body)
    if path.endswith("/programs/add") or "/programs/edit/" in path:
        _program(body, edit="/programs/edit/" in path)
    elif path == "/api/processes":
        _pm2(body)
    elif path.endswith("/quick-start"):
        _quick_start(body)
    return body


@schemathesis.check
def no_undocumented_server_error(ctx: Any, response: Any, case: Any) -> None:
    if response.status_code < 500:
        return None
    try:
        code = response.json()["error"]["code"]
    except Exception:  # noqa: BLE001 - not pmd's error shape: a failure in itself
        code = None
    if code not in DOCUMENTED_5XX:
        raise AssertionError(f"undocumented server error {response.status_code}: "
                             f"{response.text[:300]}")
    return None
