"""The OpenAPI 3 document at /api/openapi.json, built from the app's own route table and
the pydantic models the handlers validate with: what is documented is what is enforced.

A handler describes itself with `@doc(summary, body=Model, query=Model, response=...)`;
routes without `@doc` are still listed (method, path, path parameters).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from .. import __version__
from .auth import PUBLIC_PATHS
from .context import PmdApp, app_of

F = TypeVar("F", bound=Callable[..., Any])

ERROR_SCHEMA = {
    "type": "object",
    "required": ["success", "error"],
    "properties": {
        "success": {"type": "boolean", "const": False},
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "machine-readable, e.g. "
                         "VALIDATION_ERROR, UNKNOWN_FIELD, NOT_FOUND, ALREADY_EXISTS"},
                "message": {"type": "string", "description": "names the field at fault"},
                "field": {"type": "string"},
                "details": {"type": "object"},
            },
        },
    },
}


def doc(summary: str, body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None, response: str = "",
        content_type: str = "application/json", body_optional: bool = False
        ) -> Callable[[F], F]:
    def mark(handler: F) -> F:
        handler.__openapi__ = {  # type: ignore[attr-defined]
            "summary": summary, "body": body, "query": query, "response": response,
            "content_type": content_type, "body_optional": body_optional,
        }
        return handler
    return mark


PARAM = re.compile(r"<([^:>]+)(?::([^>]+))?>")


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = sub
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        prop.pop("title", None)
        if any(t.get("type") == "boolean" for t in prop.get("anyOf", [prop])):
            prop["description"] = "only 'true' or 'false'"
        params.append({"name": name, "in": "query", "required": name in schema.get(
            "required", []), "schema": prop})
    return params


def build(app: PmdApp) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, Any] = {"ErrorResponse": ERROR_SCHEMA}
    for route in sorted(app.router.routes, key=lambda r: r.path):
        raw = "/" + route.path.lstrip("/")
        path = PARAM.sub(lambda m: "{" + m.group(1) + "}", raw)
        info = getattr(route.handler, "__openapi__", None) or {}
        for method in sorted(route.methods):
            if method in ("HEAD", "OPTIONS"):
                continue
            op: dict[str, Any] = {
                "operationId": f"{method.lower()}_{route.name.split('.')[-1]}",
                "summary": info.get("summary") or route.name.split(".")[-1].replace("_", " "),
                "parameters": [],
                "responses": {
                    "200": {"description": info.get("response") or "success",
                            "content": {info.get("content_type", "application/json"): {}}},
                    "default": {"description": "an error", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/ErrorResponse"}}}},
                },
            }
            for match in PARAM.finditer(raw):
                kind = "integer" if match.group(2) == "int" else "string"
                op["parameters"].append({"name": match.group(1), "in": "path",
                                         "required": True, "schema": {"type": kind}})
            if info.get("query") is not None:
                op["parameters"] += _query_parameters(info["query"])
            if info.get("body") is not None:
                op["requestBody"] = {"required": method == "POST"
                                     and not info.get("body_optional"),
                    "content": {"application/json": {
                        "schema": _schema(info["body"], components)}}}
            if raw not in PUBLIC_PATHS:
                op["security"] = [{"bearer": []}, {"apiKey": []}]
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "pmd", "version": __version__,
                 "description": "pmd's HTTP API: the Daemon Management API on /api/v1/daemon "
                                "and the process API on /api. Bodies are limited to 1 MB."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


bp = Blueprint("openapi")


@bp.get("/api/openapi.json")
@doc("This document")
async def openapi_json(request: Request) -> HTTPResponse:
    app = app_of(request)
    document = app.ctx.openapi_document
    if document is None:  # the route table is fixed once serving: build it once
        document = app.ctx.openapi_document = build(app)
    return json(document)
