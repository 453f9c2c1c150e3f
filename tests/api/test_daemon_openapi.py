"""The OpenAPI 3 document: every route, with request schemas from the validating models."""

from __future__ import annotations

import re

from tests.api.helpers import API
from tests.harness import Pmd


def test_openapi_lists_every_daemon_route_with_its_models(http, uds):
    doc = http.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.") and doc["info"]["title"] == "pmd"
    assert uds.get("/api/openapi.json").json() == doc
    paths = doc["paths"]
    expected = {
        ("get", "/programs"), ("get", "/programs/{program_id}"), ("post", "/programs/add"),
        ("post", "/programs/edit/{program_id}"), ("post", "/programs/remove/{program_id}"),
        ("post", "/programs/reset"), ("post", "/programs/{program_id}/start"),
        ("post", "/programs/{program_id}/stop"), ("post", "/programs/{program_id}/restart"),
        ("post", "/programs/{program_id}/enable"), ("post", "/programs/{program_id}/disable"),
        ("get", "/status"), ("get", "/status/{program_id}"),
        ("get", "/programs/{program_id}/logs"), ("get", "/programs/{program_id}/logs/stream"),
        ("get", "/health"), ("get", "/ready"), ("get", "/quick-start"), ("post", "/quick-start"),
        ("get", "/quick-start/{temporary_id}/status"), ("get", "/quick-start/{temporary_id}/logs"),
        ("post", "/quick-start/{temporary_id}/stop"), ("post", "/programs/{program_id}/signal"),
        ("get", "/whoami"),
    }
    for method, path in expected:
        assert method in paths.get(API + path, {}), (method, path)
    schemas = doc["components"]["schemas"]

    def body_schema(method: str, path: str) -> dict:
        ref = paths[API + path][method]["requestBody"]["content"]["application/json"][
            "schema"]["$ref"]
        return schemas[ref.rsplit("/", 1)[1]]

    add = body_schema("post", "/programs/add")
    assert set(add["required"]) == {"name", "command", "user"}
    assert add["additionalProperties"] is False
    assert add["properties"]["description"]["anyOf"][0]["maxLength"] == 500
    quick = body_schema("post", "/quick-start")
    assert set(quick["required"]) == {"command", "user"}
    ttl = quick["properties"]["ttl"]["anyOf"][0]
    assert (ttl["minimum"], ttl["maximum"]) == (1, 86400)
    assert quick["properties"]["timeout"]["maximum"] == 300
    edit = body_schema("post", "/programs/edit/{program_id}")
    assert "required" not in edit and edit["additionalProperties"] is False
    required = {(method, path): op["requestBody"]["required"]
                for path, ops in paths.items() for method, op in ops.items()
                if "requestBody" in op and path.startswith(API)}
    # an edit must have a body even though none of its fields is required
    assert required == {
        ("post", API + path): path.split("/")[-1] not in ("start", "restart", "stop")
        for path in ("/programs/add", "/programs/edit/{program_id}", "/quick-start",
                     "/programs/{program_id}/start", "/programs/{program_id}/restart",
                     "/programs/{program_id}/stop", "/programs/{program_id}/signal")} | {
        ("post", API + "/exec"): True}
    exec_body = body_schema("post", "/exec")
    assert exec_body["required"] == ["command"] and exec_body["additionalProperties"] is False
    assert exec_body["properties"]["command"]["minItems"] == 1
    assert "get" in paths[API + "/exec/{run_id}/ws"]
    start = body_schema("post", "/programs/{program_id}/start")
    assert set(start["properties"]) == {"port", "wait", "timeout", "if_not_running", "force"}
    params = {p["name"]: p for p in paths[API + "/programs"]["get"]["parameters"]}
    assert set(params) == {"hoody_kit", "lazy_load", "enabled", "boot", "port", "port_span",
                           "include_status", "include_stats"}
    span = params["port_span"]  # port_from and port_to, only together
    assert (span["style"], span["explode"]) == ("form", True)
    assert span["schema"]["required"] == ["port_from", "port_to"]
    assert "true" in params["enabled"]["schema"]["description"]
    get_one = paths[API + "/programs/{program_id}"]["get"]["parameters"]
    assert {"name": "program_id", "in": "path", "required": True,
            "schema": {"type": "integer"}} in get_one
    assert "503" in paths[API + "/ready"]["get"]["summary"]
    # no key set: nothing asks for one
    assert all("security" not in op for ops in paths.values() for op in ops.values())
    assert "securitySchemes" not in doc["components"]


def test_openapi_states_what_the_validators_check(http):
    doc = http.get("/api/openapi.json").json()
    schemas = doc["components"]["schemas"]
    add = schemas["AddProgramRequest"]["properties"]
    # an account of this system, or ${VAR} references that expand to one at start
    accounts, references = add["user"]["anyOf"]
    assert "root" in accounts["enum"] and add["user"]["pattern"]
    assert re.match(references["pattern"], "${APP_USER:-app}")
    assert not re.match(references["pattern"], "${APP_USER")
    assert add["name"]["pattern"] and add["command"]["pattern"]
    edit = schemas["EditProgramRequest"]["properties"]
    for name in ("name", "command", "user"):  # may be left out, never nulled
        assert all(b.get("type") != "null" for b in edit[name]["anyOf"]), name
    assert "start" in add["port_range"]["description"]
    # the process API's bodies are documented too
    paths = doc["paths"]
    create = paths["/api/processes"]["post"]
    assert create["requestBody"]["required"] is True
    assert set(create["responses"]) == {"201", "default"}
    ws = {p["name"]: p for p in paths["/ws"]["get"]["parameters"]}
    assert ws["Upgrade"]["required"] and ws["Sec-WebSocket-Version"]["schema"]["enum"] == ["13"]


def test_a_405_and_a_preflight_name_the_routes_methods(http):
    for target, allowed in (("/api/processes/x", "GET, DELETE, OPTIONS"),
                            ("/api/status", "GET, OPTIONS"),
                            (f"{API}/programs/7/start", "POST, OPTIONS")):
        wrong = http.request("TRACE" if "x" in target else "PUT", target)
        assert wrong.status_code == 405 and wrong.headers["allow"] == allowed, target
        assert wrong.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
        preflight = http.options(target)
        assert preflight.status_code == 204 and preflight.headers["allow"] == allowed
        assert preflight.headers["access-control-allow-methods"] == allowed


def test_bodies_are_strict_about_json_types(http):
    """A JSON value of another type than the field's is refused, as the document says
    (pydantic's lax mode took 0 for false and false for 0)."""
    for body in ({"command": "sleep 1", "user": "root", "wait": 0},
                 {"command": "sleep 1", "user": "root", "ttl": "60"}):
        response = http.post(f"{API}/quick-start", json=body)
        assert response.status_code == 400, response.text
    response = http.post(f"{API}/programs/add", json={
        "name": "strict", "command": "sleep 1", "user": "root", "start_limit_burst": False})
    assert response.status_code == 400 and "start_limit_burst" in response.text
    response = http.post("/api/processes", json={"name": "strict", "script": "sleep",
                                                 "autorestart": "yes"})
    assert response.status_code == 400 and "autorestart" in response.text


#: Open without a key: the root, health, readiness, whoami, the dashboard's page and
#: files, and the orchestrators' probes.
PUBLIC = ("/", API + "/health", API + "/ready", API + "/whoami", "/ui", "/ui/{name}",
          "/livez", "/readyz", "/startupz")


def test_with_an_api_key_every_open_route_is_open_and_the_rest_declare_it(tmp_path):
    with Pmd(tmp_path, [], api_key="k3y") as pmd:
        doc = pmd.http.get("/api/openapi.json").json()
    paths = doc["paths"]
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    for path, ops in paths.items():
        for op in ops.values():
            assert ("security" in op) == (path not in PUBLIC), path
            assert (op["x-pmd-level"] == "open") == (path in PUBLIC), path
