"""The OpenAPI 3 document: every route, with request schemas from the validating models."""

from __future__ import annotations

from tests.api.helpers import API


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
        ("post", "/quick-start/{temporary_id}/stop"),
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
                if "requestBody" in op}
    # an edit must have a body even though none of its fields is required
    assert required == {
        ("post", API + path): path.split("/")[-1] not in ("start", "restart", "stop")
        for path in ("/programs/add", "/programs/edit/{program_id}", "/quick-start",
                     "/programs/{program_id}/start", "/programs/{program_id}/restart",
                     "/programs/{program_id}/stop")}
    start = body_schema("post", "/programs/{program_id}/start")
    assert set(start["properties"]) == {"port", "wait", "timeout", "if_not_running", "force"}
    params = {p["name"]: p for p in paths[API + "/programs"]["get"]["parameters"]}
    assert set(params) == {"hoody_kit", "lazy_load", "enabled", "boot", "port", "port_from",
                           "port_to", "include_status", "include_stats"}
    assert "true" in params["enabled"]["schema"]["description"]
    get_one = paths[API + "/programs/{program_id}"]["get"]["parameters"]
    assert {"name": "program_id", "in": "path", "required": True,
            "schema": {"type": "integer"}} in get_one
    assert "security" not in paths[API + "/health"]["get"]
    assert "security" not in paths[API + "/ready"]["get"]  # public: verdict and counts
    assert "503" in paths[API + "/ready"]["get"]["summary"]
    assert "security" in paths[API + "/programs"]["get"]
