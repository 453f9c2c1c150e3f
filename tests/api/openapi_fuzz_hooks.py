"""schemathesis hooks for the OpenAPI fuzz run (tests/api/test_openapi_fuzz.py).

- The rules between fields that the document states in words, because JSON Schema cannot
  compare two values (openapi.py's BETWEEN_FIELDS), applied to what the fuzzer generates
  (its fuzzing phase; the coverage phase's requests keep the document's defaults). Each
  repair keeps a request in the shape the document describes; nothing here hides a field
  rule, which the document carries itself.
- `no_undocumented_server_error` in place of schemathesis's not_a_server_error: a 5xx is
  a failure unless it is one the API documents (a start that failed, a wait that timed
  out; docs/daemon-api.md, Errors), as tests/api/test_robustness_fuzz.py holds it.
"""

from __future__ import annotations

from typing import Any

import schemathesis

#: 5xx answers the documentation promises, by error code.
DOCUMENTED_5XX = {"START_FAILED", "WAIT_TIMEOUT", "OPERATION_FAILED"}

#: An address on this machine, for health checks that must name one.
LOCAL_URL = "http://127.0.0.1:9/"


def _path(ctx: Any) -> str:
    operation = getattr(ctx, "operation", None)
    return str(getattr(operation, "path", ""))


def _whole(value: Any) -> int | None:
    """A JSON whole number (the fuzzer sends 5.0 for an integer too), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if float(value).is_integer() else None


def _ports(value: Any) -> tuple[int, int] | None:
    if isinstance(value, dict):
        start, end = _whole(value.get("start")), _whole(value.get("end"))
        if start is not None and end is not None:
            return start, end
    return None


def _program(body: dict[str, Any], edit: bool) -> None:
    """ProgramSpec's rules between fields (model/spec.py `_coherent`, PortRange)."""
    ports = _ports(body.get("port_range"))
    if ports is not None:  # ordered, at most 1024 ports
        start, end = sorted(ports)
        body["port_range"] = {**body["port_range"], "start": start,
                              "end": min(end, start + 1023)}
    if body.get("lazy_load") is True:
        body["boot"] = False  # in an edit too: the stored program may boot
    if "port_param" in body and body["port_param"] is not None and not (
            isinstance(body.get("port_range"), dict)):
        del body["port_param"]  # needs a port range (an edit's program has none)
    if edit:
        body.pop("id", None)  # must equal the program's own, which the body cannot know
    check = body.get("health_check")
    if isinstance(check, dict):
        if check.get("type") == "http" and not check.get("url"):
            check["url"] = LOCAL_URL
        if check.get("type") == "script" and not check.get("command"):
            check["command"] = "/bin/true"


def _pm2(body: dict[str, Any]) -> None:
    """POST /api/processes: `instances` must match the ports of `port`, a range is
    ordered (process_requests.py `to_spec`)."""
    body.pop("instances", None)
    port = body.get("port")
    if isinstance(port, str) and "-" in port:
        first, _, last = port.partition("-")
        if first.strip().isdigit() and last.strip().isdigit():
            low, high = sorted((int(first), int(last)))
            body["port"] = f"{low}-{min(high, low + 1023)}"
    check = body.get("health_check")
    if isinstance(check, dict):
        _program({"health_check": check}, edit=False)


@schemathesis.hook
def map_body(ctx: Any, body: Any) -> Any:
    if not isinstance(body, dict):
        return body
    path = _path(ctx)
    body = dict(body)
    if path.endswith(("/programs/add", "/quick-start")) or "/programs/edit/" in path:
        _program(body, edit="/programs/edit/" in path)
    elif path == "/api/processes":
        _pm2(body)
    return body


@schemathesis.hook
def map_query(ctx: Any, query: Any) -> Any:
    """GET /programs: port_from and port_to together (the document's one object parameter
    says so; this keeps a hook's repair from splitting them)."""
    if not isinstance(query, dict) or not _path(ctx).endswith("/daemon/programs"):
        return query
    query = dict(query)
    low, high = query.get("port_from"), query.get("port_to")
    if (low is None) != (high is None):
        query.pop("port_from", None)
        query.pop("port_to", None)
    return query


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
