"""What the two API families answer for the same refusal: the status, the field, and the
shape of a validation error's details. Each family keeps its own codes (the Daemon API's
VALIDATION_ERROR, the PM2 family's INVALID_CONFIGURATION)."""

from __future__ import annotations

import pytest

from tests.api.helpers import API, assert_error, program
from tests.api.process_helpers import create, pm2_error


def daemon_add(http, **fields):  # noqa: ANN001, ANN003, ANN201
    return http.post(f"{API}/programs/add", json=program("same-name", **fields))


def pm2_create(http, **fields):  # noqa: ANN001, ANN003, ANN201
    return http.post("/api/processes", json={"name": "same-name", "script": "sleep 30",
                                             **fields})


def test_a_disabled_program_is_a_409_in_both_families(http):
    created = create(http, name="switched-off", script="sleep 30")
    assert http.post(f"{API}/programs/{created['id']}/disable").status_code == 200
    for action in ("start", "restart"):
        assert_error(http.post(f"{API}/programs/{created['id']}/{action}"), 409,
                     "PROGRAM_DISABLED", "enabled")
    for action in ("restart", "reload"):
        error = pm2_error(http.post(f"/api/processes/switched-off/{action}"), 409,
                          "OPERATION_FAILED")
        assert error["field"] == "enabled" and "disabled" in error["message"]


@pytest.mark.parametrize(("fields", "field"), [
    ({"max_memory_restart": [1]}, "max_memory_restart"),
    ({"health_check": {"type": "http", "url": "http://127.0.0.1:1/", "interval": -1}},
     "health_check.interval"),
    ({"health_check": {"type": "http"}}, "health_check"),
    ({"surprise": 1}, "surprise"),
])
def test_a_validation_error_names_its_field_alike_in_both_families(http, fields, field):
    daemon = assert_error(daemon_add(http, **fields), 400,
                          "UNKNOWN_FIELD" if field == "surprise" else "VALIDATION_ERROR",
                          field)
    pm2 = pm2_error(pm2_create(http, **fields), 400, "INVALID_CONFIGURATION")
    assert pm2["field"] == field, pm2
    assert pm2["message"] == daemon["message"]
    assert pm2["details"] == daemon["details"]
    for item in pm2["details"]["errors"]:
        assert set(item) == {"field", "type", "message"}


def test_the_pm2_family_names_its_own_fields(http):
    """A rule of the program spec, broken through a PM2 field, names the PM2 field."""
    error = pm2_error(pm2_create(http, script="sleep\n30"), 400, "INVALID_CONFIGURATION")
    assert error["field"] == "script", error
    assert error["message"].startswith("script: ")
    error = pm2_error(pm2_create(http, kill_timeout=-1), 400, "INVALID_CONFIGURATION")
    assert error["field"] == "kill_timeout", error
