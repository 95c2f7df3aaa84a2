"""The OpenAPI 3.1 document, generated from the route table and the msgspec Structs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from . import __version__
from .routes import Access, Route
from .schemas import ErrorBody

# 503: a standby (not_leader), a read cut off (query_timeout), or commands not taken (overloaded).
_ERRORS = {
    Access.PUBLIC: (404, 422, 429, 503),
    Access.READ: (401, 403, 404, 422, 429, 503),
    Access.TRADE: (401, 403, 404, 409, 413, 422, 429, 503),
    Access.ADMIN_READ: (401, 403, 404, 422, 429, 503),
    Access.ADMIN: (401, 403, 404, 409, 413, 422, 429, 503),
}


# Responses that are not a Struct: Prometheus text, and this document itself.
_RAW: dict[Any, dict[str, Any]] = {
    str: {"text/plain": {"schema": {"type": "string"}}},
    dict: {"application/json": {"schema": {"type": "object"}}},
}


@dataclass(frozen=True)
class Media:
    """A response that is a file, not JSON: the media types it may have (the market page's files)."""

    types: tuple[str, ...]


def _content(response: Any, schema_of: dict[int, Any]) -> dict[str, Any]:
    if isinstance(response, Media):
        return {t: {"schema": {"type": "string"}} for t in response.types}
    if response in _RAW:
        return _RAW[response]
    return {"application/json": {"schema": schema_of[id(response)]}}


def _ecma_patterns(schema: Any) -> Any:
    """The Structs' patterns end in Python's `\\Z` (its `$` also matches before a final newline);
    JSON Schema patterns are ECMA-262, whose `$` is the end of the string: the same rule."""
    if isinstance(schema, dict):
        return {k: (v[:-2] + "$" if k == "pattern" and isinstance(v, str) and v.endswith("\\Z") else _ecma_patterns(v))
                for k, v in schema.items()}
    if isinstance(schema, list):
        return [_ecma_patterns(v) for v in schema]
    return schema


def build(routes: list[Route]) -> dict[str, Any]:
    types: list[Any] = [ErrorBody]
    for r in routes:
        for t in (r.body, r.response):
            if t is not None and not isinstance(t, Media) and t not in types and t not in _RAW:
                types.append(t)
    schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    components = _ecma_patterns(components)
    schema_of = dict(zip((id(t) for t in types), schemas, strict=True))
    error_ref = schema_of[id(ErrorBody)]
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {
            "operationId": f"{r.method.lower()}_{r.path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
            "summary": r.summary,
            "parameters": [
                {"name": p.name, "in": p.where, "required": p.required or p.where == "path", "schema": p.schema,
                 **({"description": p.description} if p.description else {})} for p in r.params],
            "responses": {
                str(r.status): {"description": "success", "content": _content(r.response, schema_of)},
                **{str(code): {"description": "error", "content": {"application/json": {"schema": error_ref}}}
                   for code in _ERRORS[r.access]},
                # A request the HTTP parser itself refuses (say, a request line over 8 KiB) is
                # answered by aiohttp before any handler runs, in plain text.
                "400": {"description": "malformed request", "content": {
                    "application/json": {"schema": error_ref}, "text/plain": {"schema": {"type": "string"}}}},
                "500": {"description": "outcome unknown: retry with the same key",
                        "content": {"application/json": {"schema": error_ref}}},
            },
        }
        for code in r.also:
            op["responses"][str(code)] = op["responses"][str(r.status)]
        if r.body is not None:
            required = any(f.required for f in msgspec.structs.fields(r.body))
            op["requestBody"] = {"required": required,
                                 "content": {"application/json": {"schema": schema_of[id(r.body)]}}}
        if r.idempotent:
            op["parameters"].append({"name": "Idempotency-Key", "in": "header", "required": False,
                                     "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"}})
        if r.access is not Access.PUBLIC:
            op["security"] = [{"apiKey": []}]
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "嗨贝 (HB) exchange", "version": __version__,
                 "description": "HB-CNY market, custodian ledger and token economics. Amounts are decimal strings."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}}},
    }
