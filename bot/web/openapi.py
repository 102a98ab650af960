"""The API's OpenAPI 3.1 document, generated from the route table and the declared models
(:mod:`bot.web.routes`, :mod:`bot.web.models`), as starlette's ``SchemaGenerator`` walks
its routes. It is served at ``GET /api/v1/openapi.json``; ``python -m
consentgate.bot.web.openapi`` prints it (``docs/openapi.json`` is that output, and a test
keeps the two equal).
"""

from __future__ import annotations

import json
import re
import sys
from functools import cache
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from consentgate.adapters.base import CHANNELS
from consentgate.bot.web.models import Problem
from consentgate.bot.web.routes import API_ROUTES, Empty, Route

__all__ = ["OPENAPI_PATH", "document", "openapi_document", "render"]

OPENAPI_PATH = "/api/v1/openapi.json"
_REF = "#/components/schemas/{model}"
_PROBLEM = {"$ref": "#/components/responses/Problem"}
_PATH_PARAMS: dict[str, dict[str, Any]] = {
    "id": {"type": "string", "pattern": "^[0-9]+$",
           "description": "a numeric id (ASCII digits); a link id is letters and digits"},
    "channel": {"type": "string", "enum": list(CHANNELS)},
    "address": {"type": "string", "minLength": 1, "maxLength": 320,
                "description": "E.164 number, email address or Telegram user id"},
}


class _Components:
    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, model: type[BaseModel], mode: Any) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template=_REF, mode=mode)
        for name, sub in schema.pop("$defs", {}).items():
            self.schemas.setdefault(name, sub)
        self.schemas.setdefault(model.__name__, schema)
        return {"$ref": _REF.format(model=model.__name__)}


def _parameters(route: Route, components: _Components) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for name in re.findall(r"{(\w+)}", route.path):
        schema = dict(_PATH_PARAMS[name])
        if name == "id" and route.path.startswith("/api/v1/links/"):
            schema = {"type": "string", "pattern": "^[A-Za-z0-9]+$", "maxLength": 64}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    if route.query is not Empty:
        schema = route.query.model_json_schema(ref_template=_REF, mode="validation")
        required = set(schema.get("required", ()))
        for name, prop in schema["properties"].items():
            params.append({"name": name, "in": "query", "required": name in required,
                           "schema": prop})
    for name, description in route.headers.items():
        params.append({"name": name, "in": "header", "required": False,
                       "description": description,
                       "schema": {"type": "string", "minLength": 1, "maxLength": 200}})
    return params


def _operation(route: Route, components: _Components) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": route.handler.__name__,
        "tags": ["api"],
        "x-role": route.role,
    }
    params = _parameters(route, components)
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": components.ref(route.body, "validation")}}}
    elif route.body_media is not None:
        op["requestBody"] = {"required": True, "content": {
            route.body_media: {"schema": {"type": "string"}}}}
    responses: dict[str, Any] = {}
    for status, answer in sorted(route.answers.items()):
        if answer.model is None:
            schema: dict[str, Any] = {"type": "string"}
            if answer.media == "image/png":
                schema = {"type": "string", "contentMediaType": "image/png"}
        else:
            schema = components.ref(answer.model, "serialization")
            if answer.many:
                schema = {"type": "array", "items": schema}
        responses[str(status)] = {"description": answer.description,
                                  "content": {answer.media: {"schema": schema}}}
    problems = {401, *route.problems}
    if route.role == "change":
        problems.add(403)
    if "{" in route.path:
        problems |= {404, 422}
    if route.body is not None or route.body_media is not None:
        problems |= {400, 413, 422}
    if route.query is not Empty:
        problems.add(422)
    for status in sorted(problems):
        responses[str(status)] = _PROBLEM
    op["responses"] = responses
    return op


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API (built once per process)."""
    components = _Components()
    components.ref(Problem, "serialization")
    paths: dict[str, dict[str, Any]] = {}
    for route in API_ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(
            route, components)
    paths[OPENAPI_PATH] = {"get": {
        "summary": "This document", "operationId": "openapi_document", "tags": ["api"],
        "security": [], "x-role": "public",
        "responses": {"200": {"description": "ok", "content": {"application/json": {
            "schema": {"type": "object"}}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "consentgate API",
            "version": "2",
            "description": (
                "The operator API of consentgate, under /api/v1. Every call needs "
                "`Authorization: Bearer <operator token>`; a token sees only its own "
                "campaign. Errors are application/problem+json with a machine-readable "
                "`code`. Role `auditor` may read (x-role read) and gets 403 on every change "
                "(x-role change). A field the request schema does not know gets 422 "
                "`unknown_field`; a wrong type or an empty required string 422 "
                "`invalid_input`, or the code the field names in `x-problem-code`."),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Problem": {
                "description": "an error (RFC 9457 problem details)",
                "content": {"application/problem+json": {
                    "schema": {"$ref": _REF.format(model="Problem")}}}}},
            "schemas": dict(sorted(components.schemas.items())),
        },
    }


def render() -> str:
    """The document as committed in docs/openapi.json."""
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


async def openapi_document(_request: web.Request) -> web.Response:
    """``GET /api/v1/openapi.json``: no token needed."""
    return web.Response(text=render(), content_type="application/json")


if __name__ == "__main__":
    sys.stdout.write(render())
