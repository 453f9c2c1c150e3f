"""The one reading of pydantic's validation errors that both API families answer with."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pmd_init.supervisor.errors import Invalid


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    interval: Annotated[float, Field(gt=0)] = 1.0


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    size: int | str | None = None
    inner: Inner | None = None
    items: list[Inner] = []
    env: dict[str, str] = {}


def invalid(data: dict, **kwargs) -> Invalid:  # noqa: ANN003
    with pytest.raises(ValidationError) as caught:
        Outer.model_validate(data)
    return Invalid.from_validation(caught.value, data, **kwargs)


def test_a_nested_field_is_its_path():
    error = invalid({"name": "a", "items": [{}, {"interval": -1}]})
    assert error.field == "items.1.interval" and error.code == "VALIDATION_ERROR"
    assert error.message == "items.1.interval: Input should be greater than 0"
    assert error.details == {"errors": [{"field": "items.1.interval", "type": "greater_than",
                                         "message": "Input should be greater than 0"}]}


def test_union_members_are_not_fields():
    error = invalid({"name": "a", "size": [1]})
    assert error.field == "size"
    assert [e["field"] for e in error.details["errors"]] == ["size"]  # one per field


def test_a_key_that_looks_like_a_type_is_still_a_field():
    error = invalid({"name": "a", "env": {"int": 5}})
    assert error.field == "env.int"


def test_unknown_and_missing_fields_have_their_codes():
    unknown = invalid({"name": "a", "surprise": 1})
    assert (unknown.code, unknown.field, unknown.message) == \
        ("UNKNOWN_FIELD", "surprise", "surprise: unknown field")
    missing = invalid({})
    assert (missing.code, missing.field) == ("MISSING_FIELD", "name")


def test_renamed_fields_and_no_data():
    assert invalid({"name": 5}, rename={"name": "title"}).field == "title"
    with pytest.raises(ValidationError) as caught:
        Outer.model_validate({"name": "a", "size": [1]})
    assert Invalid.from_validation(caught.value).field == "size.int"  # nothing to walk
