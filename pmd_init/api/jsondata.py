"""What a JSON body's numbers are: JSON has one number type, so `5.0` and `5` are the same
value (JSON Schema's `integer` takes both). Bodies are validated strictly (a JSON value of
another type than the field's is refused: no `0` for false, no `"5"` for 5), so a number
with no fraction is made an int first, as the OpenAPI document counts it."""

from __future__ import annotations

from typing import Any


def exact_numbers(value: Any) -> Any:
    """`value` with every float that holds a whole number turned into an int, at any depth."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {k: exact_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [exact_numbers(v) for v in value]
    return value
