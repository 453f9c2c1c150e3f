"""The OpenAPI 3 document at /api/openapi.json, built from the app's own route table and
the pydantic models the handlers validate with: what is documented is what is enforced.

A handler describes itself with `@doc(summary, body=Model, query=Model, response=...)`;
routes without `@doc` are still listed (method, path, path parameters).

What the models check in validators rather than in types (a name without '/' or quotes, a
user that exists on this system, a log file inside the log roots) is added to the generated
schemas here, field by field (`FIELD_RULES`, `_runtime_rules`), so that a request the
document allows is one the server accepts and the reverse; tests/api/test_openapi_fuzz.py
holds them together with schemathesis. Rules between fields are conditions (`if`/`then`)
where JSON Schema can state them (lazy_load without boot, port_param with port_range) and
words in the field's description where it cannot (a port range's end not below its start:
JSON Schema does not compare two values). Security is declared when an API key is set;
every operation names the access level it needs (`x-pmd-level`, from access.py's table).
"""

from __future__ import annotations

import functools
import pwd
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel
from sanic import Request
from sanic.response import HTTPResponse, json

from .. import __version__
from ..model.access import Level
from ..model.expand import USER_RE, USER_REFERENCES, references_pattern
from ..model.spec import READINESS_SOURCES
from ..model.webhook_rules import HEADER_VALUE_MAX, RESERVED_HEADERS
from .access import ROUTE_LEVELS, route_key
from .context import JsonBlueprint, PmdApp, app_of
from .process_requests import PORT_TEXT

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
        content_type: str = "application/json", body_optional: bool = False,
        parameters: list[dict[str, Any]] | None = None,
        responses: dict[str, Any] | None = None) -> Callable[[F], F]:
    """`parameters`: more OpenAPI parameters (headers); `responses` replaces the 200
    (201 for a create, 101 for a WebSocket); the error answer stays."""
    def mark(handler: F) -> F:
        info: dict[str, Any] = {
            "summary": summary, "body": body, "query": query, "response": response,
            "content_type": content_type, "body_optional": body_optional,
            "parameters": parameters or [],
        }
        if responses is not None:
            info["responses"] = responses
        handler.__openapi__ = info  # type: ignore[attr-defined]
        return handler
    return mark


PARAM = re.compile(r"<([^:>]+)(?::([^>]+))?>")


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = sub
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


#: Query parameters that go together (the handler's rule): one exploded object parameter
#: with both required, as OpenAPI can say it.
TOGETHER = {("port_from", "port_to"): "port_span"}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    params = []
    properties = dict(schema.get("properties", {}))
    for (first, second), name in TOGETHER.items():
        if first in properties and second in properties:
            pair = {key: next(_branches(properties.pop(key))) for key in (first, second)}
            for prop in pair.values():
                prop.pop("title", None)
            params.append({"name": name, "in": "query", "required": False, "style": "form",
                           "explode": True, "description": f"{first} and {second} together "
                           f"(with {second} below {first}, the range is empty)",
                           "schema": {"type": "object", "properties": pair,
                                      "required": [first, second],
                                      "additionalProperties": False}})
    for name, prop in properties.items():
        prop = dict(prop)
        prop.pop("title", None)
        if any(t.get("type") == "boolean" for t in prop.get("anyOf", [prop])):
            prop["description"] = "only 'true' or 'false'"
        params.append({"name": name, "in": "query", "required": name in schema.get(
            "required", []), "schema": prop})
    return params


_META = re.compile(r"([.^$*+?()\[\]{}|\\])")  # re.escape's "\-" is not valid everywhere
#: Text that reaches an argv, the environment or a path: no NUL, no line break.
_LINE = r"[^\x00\n\r]"
_NOT_BLANK = rf"^{_LINE}*[^\s\x00]{_LINE}*$"
#: model.spec's rules for a program's name: not blank, not . or .., no '/', no quotes,
#: no control character, line or paragraph separator.
_NAME = r"^(?!\.\.?$)(?=.*\S)[^\"'/\x00-\x1f\x7f-\x9f\u2028\u2029]+$"
_OS_TEXT = r"^[^\x00]*$"
#: model/expand.py's rule: every `${` opens a well-formed reference (as a lookahead).
_REFS_LINE = "(?=" + references_pattern(r"\x00\n\r")[1:] + ")"
_REFS_PATH = "(?=" + references_pattern(r"\x00\n")[1:] + ")"
_NOT_BLANK_REFS = "^" + _REFS_LINE + _NOT_BLANK[1:]
#: An absolute path, or one that starts with a reference (absolute once expanded).
_PATH_REFS = rf"^{_REFS_PATH}(?:/|\$\{{)[^\x00\n]*$"
_ENV_VALUE = references_pattern(r"\x00")
_USER = f"{USER_RE.pattern}|{USER_REFERENCES.pattern}"
_ENV_FILE = r"^/[^\x00\n\r]*$"

#: model/webhook_rules.py's URLs, those a pattern can say: https, a host name (no IP
#: literal, no localhost, no userinfo), a port 1-65535, a path of visible ASCII.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_LAST_LABEL = r"[A-Za-z](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_PORT = (r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]"
         r"|6553[0-5])")
_WEBHOOK_URL = (rf"^https://(?![Ll][Oo][Cc][Aa][Ll][Hh][Oo][Ss][Tt](?:[:/?#]|$))"
                rf"(?:{_LABEL}\.)*{_LAST_LABEL}"
                rf"(?::{_PORT})?(?:[/?#][!-~]*)?$")



def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else _META.sub(r"\\\1", c)
                   for c in word)


#: A webhook header: a token that is not one pmd sets itself, a printable ASCII value.
_HEADER_NAME = (rf"^(?!(?:{'|'.join(_any_case(h) for h in sorted(RESERVED_HEADERS))})$)"
                rf"(?!{_any_case('x-pmd-')})[!#$%&'*+.^_`|~0-9A-Za-z-]{{1,128}}$")
_HEADER_VALUE = rf"^[\t\x20-\x7e]{{0,{HEADER_VALUE_MAX}}}$"

#: Per property name, what its validators enforce, added to the string (array, object)
#: branch of the property wherever a request model has it: ProgramSpec's fields and their
#: PM2 names, and the fields of a health check (whose rules differ: checked per model).
FIELD_RULES: dict[str, dict[str, Any]] = {
    "name": {"pattern": _NAME},
    "command": {"pattern": _NOT_BLANK_REFS},
    "script": {"pattern": _NOT_BLANK_REFS},
    "user": {"pattern": _USER,
             "description": "an account of this system, or ${VAR} references to one"},
    "directory": {"pattern": _PATH_REFS},
    "cwd": {"pattern": _PATH_REFS},
    # dotenv files, one path or a list (supervisor/expansion.py)
    "env_file": {"array": {"items": {"pattern": _ENV_FILE}, "uniqueItems": True},
                 "string": {"pattern": _ENV_FILE}},
    "display": {"pattern": _OS_TEXT},
    "port_param": {"pattern": _NOT_BLANK,
                   "description": "the option that passes the port; needs port_range"},
    "args": {"items": {"pattern": rf"^{_REFS_LINE}{_LINE}*$"}},
    # {name: condition}, or a list of names (each then waits for `ready`)
    "depends_on": {"object": {"propertyNames": {"minLength": 1, "maxLength": 128},
                              "maxProperties": 64},
                   "array": {"items": {"type": "string", "minLength": 1, "maxLength": 128},
                             "maxItems": 64}},
    "log_line": {"format": "regex"},
    # POST /api/processes: PM2's spellings (process_requests.py)
    "port": {"string": {"pattern": PORT_TEXT},
             "integer": {"minimum": 1, "maximum": 65535}},
    "max_memory_restart": {
        "string": {"pattern": r"^\s*(?=[0-9]{1,20}(?![0-9]))0*[1-9][0-9]{0,8}"
                              r"(?:[kKmMgG][bB]?|[bB])?\s*$",
                   "description": "bytes, or a number with K, M or G (512M)"},
        "integer": {"minimum": 1, "maximum": 2**60}},
    "urls": {"items": {"pattern": _WEBHOOK_URL, "maxLength": 2048}},
    "environment": {"propertyNames": {"pattern": r"^[^=\x00]+$"},
                    "additionalProperties": {"type": "string", "pattern": _ENV_VALUE}},
    "env": {"propertyNames": {"pattern": r"^[^=\x00]+$"},
            "additionalProperties": {"type": "string", "pattern": _ENV_VALUE}},
}
#: Where a model's rules differ from FIELD_RULES (merged over them).
MODEL_RULES: dict[str, dict[str, dict[str, Any]]] = {
    # PM2's user may be empty: pmd's own (process_requests.py `to_spec`)
    "CreateProcess": {
        "user": {"pattern": rf"^$|{_USER}",
                 "description": "an account of this system; empty: pmd's own"},
        # {"PORT": 3000}: numbers are taken as their text
        "env": {"propertyNames": {"pattern": r"^[^=\x00]+$"},
                "additionalProperties": {"anyOf": [{"type": "string", "pattern": _ENV_VALUE},
                                                   {"type": "number"}]}},
    },
    "WebhooksSpec": {
        "headers": {"propertyNames": {"pattern": _HEADER_NAME},
                    "additionalProperties": {"type": "string", "pattern": _HEADER_VALUE}},
    },
    # a hook's command is a shell's line, not expanded by pmd (model/hooks.py)
    "HookSpec": {"command": {"pattern": _NOT_BLANK}},
    "HealthCheckSpec": {
        # http:// or https:// with a host (no IPv6 brackets: kept simple and exact)
        "url": {"pattern": rf"^[hH][tT][tT][pP][sS]?://[A-Za-z0-9._~:@!$&'()*+,;=%-]+"
                           rf"(?:[/?#]{_LINE}*)?$"},
        "host": {"pattern": rf"^{_LINE}*$"},
        "command": {"pattern": rf"^{_LINE}*$"},
    },
}
JSON_TYPES = {"string", "integer", "number", "array", "object", "boolean"}
#: Rules between fields, which JSON Schema cannot state: said in words.
BETWEEN_FIELDS: dict[str, str] = {
    "port_range": "end is not below start, and the range holds at most 1024 ports; "
                  "it may not overlap another program's range",
    "lazy_load": "not together with boot: true",
    "health_check": "type http needs url, type script needs command",
    "port": "a port (\"3000\") or a range (\"4000-4003\") within 1-65535",
    "instances": "as many as the ports of `port` (one port each); 1 without a range",
    "depends_on": "other programs' names (not its own), each with the condition it waits "
                  "for",
    "sockets": "each a TCP socket (port, with host, backlog, reuse_port) or a Unix socket "
               "(path, with mode, owner), or a name alone for a socket another program "
               "defines; names once per list; one name is one address for every program; "
               "not with port_range; bound at add/edit: a 400 SOCKET_UNAVAILABLE when it "
               "cannot be (a port taken; through the API a Unix socket's folder must exist "
               "and its path be free)",
    "start_on": "connection needs sockets",
    "idle_stop_after": "needs start_on: connection",
    "stop_signal": "one signal name (SIGKILL after stop_timeout), or 1-8 steps "
                   "{signal, wait}, SIGKILL after the last step's wait",
    "max_age_jitter": "needs max_age",
    "fatal_retry_after": "needs on_fatal: restart_later",
    "rlimits": "soft not above hard, neither above pmd's own hard limit",
    "cron_restart": "five cron fields (minute hour day month weekday), or six with seconds "
                    "last",
    "watch": "relative paths need directory",
}
#: A quick-start creates and starts in one request: what must hold on this system for
#: its command to run at all (Supervisor.check_runnable), in words.
RUNNABLE: dict[str, str] = {
    "command": "its first word names an executable file: a path, or a name found on the "
               "program's PATH (its environment's, else pmd's)",
    "directory": "an existing directory (the user's home when left out)",
    "terminal_shell": "a shell found on the program's PATH",
}
#: An edit may leave these out, but not set them to null.
NOT_NULL_IN_EDIT = ("name", "command", "user")
#: More accounts than this and `user` is documented by its pattern alone.
ACCOUNTS_MAX = 256


def _branches(prop: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The non-null alternatives of a property's schema."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") != "null":
            yield branch


def _accounts() -> list[str]:
    names = sorted({p.pw_name for p in pwd.getpwall() if USER_RE.match(p.pw_name)})
    return names if len(names) <= ACCOUNTS_MAX else []


def _log_path_pattern(roots: list[str]) -> str:
    """A file inside one of `roots`, named without '.' or '..' segments (the server
    resolves them and refuses what ends up outside)."""
    alternatives = "|".join(_META.sub(r"\\\1", root.rstrip("/")) for root in roots)
    segment = r"/(?!\.\.?(?:/|$))[^/\x00\n]+"
    # a path with references is checked against the roots once expanded, by the server
    return rf"^(?:{alternatives})(?:{segment})+$|^(?=[^\x00\n]*\$\{{){_PATH_REFS[1:]}"


def _refine(components: dict[str, Any], accounts: list[str], log_roots: list[str]) -> None:
    runtime: dict[str, dict[str, Any]] = {}
    if accounts:
        runtime["user"] = {"anyOf": [{"enum": accounts},
                                     {"pattern": USER_REFERENCES.pattern}]}
    if log_roots:
        runtime["stdout_logfile"] = runtime["stderr_logfile"] = {
            "pattern": _log_path_pattern(log_roots),
            "description": "a file inside the log roots (--log-roots and the log dir), "
                           "not a folder or a symlink"}
    for model, schema in components.items():
        props = schema.get("properties", {})
        rules = {**FIELD_RULES, **MODEL_RULES.get(model, {})}
        for name, prop in props.items():
            for rule in (rules.get(name), runtime.get(name)):
                if rule is None:
                    continue
                by_type = rule if set(rule) <= JSON_TYPES else {
                    "array" if "items" in rule else
                    "object" if "propertyNames" in rule else "string": rule}
                for branch in _branches(prop):
                    for key, value in by_type.get(branch.get("type", ""), {}).items():
                        if key == "items" and isinstance(branch.get(key), dict):
                            branch[key] = {**branch[key], **value}  # items: keep their type
                        else:
                            branch[key] = value
            if name in BETWEEN_FIELDS:
                prop["description"] = BETWEEN_FIELDS[name]
            if model == "QuickStartRequest" and name in RUNNABLE:
                prop["description"] = RUNNABLE[name]
        if "depends_on" in props:  # a list of names is taken too (spec.depends_mapping)
            prop = props["depends_on"]
            alternatives = prop.pop("anyOf", None) or [
                {k: prop.pop(k) for k in list(prop) if k not in ("title", "default",
                                                                   "description")}]
            prop["anyOf"] = [*alternatives, {"type": "array"}]
            for branch in prop["anyOf"]:
                branch.update(FIELD_RULES["depends_on"].get(branch.get("type", ""), {}))
        if "env_file" in props:  # one path is taken as well as a list
            prop = props["env_file"]
            alternatives = prop.pop("anyOf", None) or [
                {k: prop.pop(k) for k in list(prop) if k not in ("title", "default",
                                                                   "description")}]
            prop["anyOf"] = [*alternatives, {"type": "string", "pattern": _ENV_FILE}]
        if "autorestart" in props and model != "CreateProcess":  # true/false as well
            prop = props["autorestart"]
            alternatives = prop.pop("anyOf", None) or [
                {k: prop.pop(k) for k in ("enum", "type", "const") if k in prop}]
            prop["anyOf"] = [*alternatives, {"type": "boolean"}]
        conditions = schema.setdefault("allOf", [])
        if "lazy_load" in props and "boot" in props:  # lazy_load: true never boots
            conditions.append({
                "if": {"properties": {"lazy_load": {"const": True}}, "required": ["lazy_load"]},
                "then": {"properties": {"boot": {"not": {"const": True}}}}})
        if "readiness" in props and "logs_enabled" in props:  # log_line reads the logs
            conditions.append({
                "if": {"properties": {"readiness": {
                    "type": "object", "properties": {"log_line": {"type": "string"}},
                    "required": ["log_line"]}}, "required": ["readiness"]},
                "then": {"properties": {"logs_enabled": {"not": {"const": False}}}}})
        if "port_param" in props and "port_range" in props and model != "EditProgramRequest":
            conditions.append({  # a port option needs ports (an edit's program may have them)
                "if": {"properties": {"port_param": {"type": "string"}},
                       "required": ["port_param"]},
                "then": {"properties": {"port_range": {"type": "object"}},
                         "required": ["port_range"]}})
        if model == "CreateProcess":  # one instance a port: without a range, one
            conditions.append({
                "if": {"properties": {"port": {"anyOf": [
                    {"type": "null"}, {"type": "integer"},
                    {"type": "string", "pattern": r"^[^-]*$"}]}}},
                "then": {"properties": {"instances": {"enum": [1, None]}}}})
        if model == "CreateProcess" and "anyOf" in runtime.get("user", {}):
            accounts_rule, references_rule = runtime["user"]["anyOf"]
            for branch in _branches(props.get("user", {})):  # empty: pmd's own account
                branch["anyOf"] = [{"enum": [*accounts_rule["enum"], ""]}, references_rule]
        if model == "HealthCheckSpec":  # type http needs url, type script needs command
            conditions += [
                {"if": {"properties": {"type": {"const": kind}}, "required": ["type"]},
                 "then": {"required": [field],
                          "properties": {field: {"type": "string", "minLength": 1}}}}
                for kind, field in (("http", "url"), ("script", "command"))]
        if model == "ReadinessSpec":  # exactly one source (model/spec.py `_one_source`)
            sources = [name for name in READINESS_SOURCES if name in props]
            # One alternative per source, that one set and the others null or left out:
            # they exclude each other, so `anyOf` (cheaper to generate than `oneOf`).
            schema["anyOf"] = [
                {"required": [source], "properties": {
                    other: (next(_branches(props[other])) if other == source
                            else {"type": "null"})
                    for other in sources}}
                for source in sources]
        if not conditions:
            del schema["allOf"]
        if model == "EditProgramRequest":
            for name in NOT_NULL_IN_EDIT:
                if name in props:
                    props[name]["anyOf"] = list(_branches(props[name]))


def build(app: PmdApp) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, Any] = {"ErrorResponse": ERROR_SCHEMA}
    # Without a key nothing asks for one; with one, the Unix socket still does not.
    secured = app.ctx.access.auth_on(app.ctx.access.identities())
    for route in sorted(app.router.routes, key=lambda r: r.path):
        raw = "/" + route.path.lstrip("/")
        path = PARAM.sub(lambda m: "{" + m.group(1) + "}", raw)
        handler = route.handler
        if isinstance(handler, functools.partial):  # a WebSocket route wraps its handler
            handler = handler.args[0] if handler.args else handler
        info = getattr(handler, "__openapi__", None) or {}
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
            for extra in info.get("parameters", ()):
                op["parameters"].append(extra)
            if "responses" in info:  # in place of the 200; errors stay documented
                op["responses"] = {**info["responses"], "default": op["responses"]["default"]}
            level = ROUTE_LEVELS[route_key(method, route.uri)]
            op["x-pmd-level"] = level.label
            op["description"] = f"Access level: {level.label} (docs/access.md)."
            if secured and level > Level.OPEN:
                op["security"] = [{"bearer": []}, {"apiKey": []}]
            paths.setdefault(path, {})[method.lower()] = op
    settings = app.ctx.settings
    _refine(components, _accounts(),
            [str(root) for root in [settings.log_dir, *settings.log_roots]])
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "pmd", "version": __version__,
                 "description": "pmd's HTTP API: the Daemon Management API on /api/v1/daemon "
                                "and the process API on /api. Bodies are limited to 1 MB."},
        "paths": paths,
        "components": {"schemas": components},
    }
    if secured:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
    return document


bp = JsonBlueprint("openapi")


@bp.get("/api/openapi.json")
@doc("This document")
async def openapi_json(request: Request) -> HTTPResponse:
    app = app_of(request)
    document = app.ctx.openapi_document
    if document is None:  # the route table is fixed once serving: build it once
        document = app.ctx.openapi_document = build(app)
    return json(document)
