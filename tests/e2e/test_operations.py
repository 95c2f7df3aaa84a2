"""Operations: liveness and readiness, Prometheus metrics, the OpenAPI document, request ids, logs."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from exchange.app import all_routes
from exchange.logs import JsonFormatter
from exchange.openapi import Media
from exchange.routes import Access, services_of
from exchange.sequencer import State
from tests.conftest import Service, service_settings, start_service
from tests.e2e.helpers import add_key, assert_error, call, funded, place, place_ok

# ---------------------------------------------------------------- health


async def test_readiness_follows_the_sequencer(service: Service) -> None:
    sequencer = services_of(service.app).sequencer
    async with aiohttp.ClientSession(service.url) as http:
        a = await funded(service, http, cny="100")
        r = await call(http, "GET", "/healthz")
        assert (r.status, r.body["status"]) == (200, "alive"), r
        r = await call(http, "GET", "/readyz")
        assert (r.status, r.body["status"]) == (200, "ready"), r
        assert (r.body["detail"]["sequencer"], r.body["detail"]["database"]) == ("serving", True)
        assert r.body["detail"]["seq"] == sequencer.committed_seq

        sequencer.state = State.STOPPED  # as when stopping or fail-stopped: not serving commands
        try:
            r = await call(http, "GET", "/readyz")
            assert (r.status, r.body["status"], r.body["detail"]["sequencer"]) == (503, "not_ready", "stopped"), r
            assert (await call(http, "GET", "/healthz")).status == 200  # alive all the same
            r = await place(http, a.key, "buy", "1.00", "5.00")
            assert_error(r, 503, "unavailable")
            assert r.headers["Retry-After"] == "1"
            text = (await call(http, "GET", "/metrics")).body
            assert _sample(text, "exchange_ready") == 0
        finally:
            sequencer.state = State.SERVING
        assert (await call(http, "GET", "/readyz")).status == 200
        await place_ok(http, a.key, "buy", "1.00", "5.00")
        assert _sample((await call(http, "GET", "/metrics")).body, "exchange_ready") == 1


# ---------------------------------------------------------------- metrics


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no sample {name} {labels}")


async def test_metrics_in_prometheus_text_format(service: Service) -> None:
    sequencer = services_of(service.app).sequencer
    async with aiohttp.ClientSession(service.url) as http:
        a = await funded(service, http, cny="100")
        for price in ("4.00", "4.10", "4.20"):
            await place_ok(http, a.key, "buy", "1.00", price)
        assert (await call(http, "GET", "/v1/balances")).status == 401
        r = await call(http, "GET", "/metrics")
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain"), r
        text = r.body
    families = _families(text)  # parses, or raises on a malformed exposition
    kinds = {name: families[name].type for name in (
        "exchange_http_requests", "exchange_http_request_seconds", "exchange_sequencer_queue_depth",
        "exchange_batch_commands", "exchange_commit_seconds", "exchange_engine_seq")}
    assert kinds == {"exchange_http_requests": "counter", "exchange_http_request_seconds": "histogram",
                     "exchange_sequencer_queue_depth": "gauge", "exchange_batch_commands": "histogram",
                     "exchange_commit_seconds": "histogram", "exchange_engine_seq": "gauge"}
    assert _sample(text, "exchange_http_requests_total", route="/v1/orders", method="POST", status="201") == 3
    assert _sample(text, "exchange_http_requests_total", route="/v1/balances", method="GET", status="401") == 1
    assert _sample(text, "exchange_engine_seq") == sequencer.committed_seq > 0
    assert _sample(text, "exchange_sequencer_queue_depth") == 0
    batches = _sample(text, "exchange_batch_commands_count")
    assert batches == sequencer.stats.batches >= 5  # an account, its deposit, three orders (and the admin's)
    assert _sample(text, "exchange_batch_commands_sum") == sequencer.stats.commands
    assert _sample(text, "exchange_commit_seconds_count") == batches
    assert _sample(text, "exchange_commit_seconds_sum") > 0


# ---------------------------------------------------------------- OpenAPI

_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": (int, float), "boolean": bool,
                          "null": type(None), "object": dict, "array": list}


def conforms(doc: dict[str, Any], schema: Any, value: Any, where: str = "$") -> list[str]:
    """Errors of `value` against `schema` (the JSON Schema subset msgspec generates)."""
    if schema is True or schema == {}:
        return []
    if schema is False:
        return [f"{where}: nothing is allowed here"]
    if "$ref" in schema:
        return conforms(doc, _resolve(doc, schema["$ref"]), value, where)
    if "anyOf" in schema or "oneOf" in schema:
        options = schema.get("anyOf") or schema["oneOf"]
        if any(not conforms(doc, s, value, where) for s in options):
            return []
        return [f"{where}: {value!r} matches none of {options}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        ok = any(isinstance(value, _TYPES[k]) and not (k in ("integer", "number") and isinstance(value, bool))
                 for k in kinds)
        if not ok:
            return [*errors, f"{where}: {value!r} is not {kind}"]
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{where}: longer than {schema['maxLength']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [f"{where}: missing {k}" for k in schema.get("required", []) if k not in value]
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                errors += conforms(doc, props[k], v, f"{where}.{k}")
            elif extra is False:
                errors.append(f"{where}: undocumented field {k}")
            elif isinstance(extra, dict):
                errors += conforms(doc, extra, v, f"{where}.{k}")
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            errors.append(f"{where}: {len(value)} items")
        prefix = schema.get("prefixItems", [])
        for i, v in enumerate(value):
            sub = prefix[i] if i < len(prefix) else schema.get("items", True)
            errors += conforms(doc, sub, v, f"{where}[{i}]")
    return errors


def _check_structure(doc: dict[str, Any]) -> None:
    assert re.fullmatch(r"3\.1\.\d+", doc["openapi"]), doc["openapi"]
    assert doc["info"]["title"] and doc["info"]["version"]
    schemes = doc["components"]["securitySchemes"]
    op_ids: list[str] = []
    for path, item in doc["paths"].items():
        assert path.startswith("/"), path
        assert set(item) <= _METHODS, (path, set(item))
        for method, op in item.items():
            op_ids.append(op["operationId"])
            params = op.get("parameters", [])
            seen = [(p["name"], p["in"]) for p in params]
            assert len(seen) == len(set(seen)), (path, method, seen)
            for p in params:
                assert p["in"] in ("query", "header", "path", "cookie") and "schema" in p, (path, method, p)
            in_path = {p["name"] for p in params if p["in"] == "path"}
            assert in_path == set(re.findall(r"{(\w+)}", path)), (path, method, in_path)
            assert all(p["required"] is True for p in params if p["in"] == "path")
            assert op["responses"], (path, method)
            for status, response in op["responses"].items():
                assert re.fullmatch(r"[1-5][0-9][0-9]|default", status), (path, method, status)
                assert isinstance(response["description"], str), (path, method, status)
                for media in response.get("content", {}).values():
                    assert "schema" in media, (path, method, status)
            for requirement in op.get("security", []):
                assert set(requirement) <= set(schemes), (path, method, requirement)
    assert len(op_ids) == len(set(op_ids)), "operationIds are not unique"
    for node in _walk(doc):
        if isinstance(node, dict) and isinstance(node.get("$ref"), str):
            _resolve(doc, node["$ref"])


async def test_openapi_is_valid_and_complete(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        r = await call(http, "GET", "/v1/openapi.json")
        assert r.status == 200 and r.headers["Content-Type"].startswith("application/json"), r
        doc = r.body
        _check_structure(doc)

        # Every route, with its method, body, success response, parameters and security.
        routes = all_routes()
        assert {(p, m) for p, item in doc["paths"].items() for m in item} == {
            (rt.path, rt.method.lower()) for rt in routes}
        for rt in routes:
            op = doc["paths"][rt.path][rt.method.lower()]
            ok = op["responses"][str(rt.status)]
            if rt.response is not None:  # JSON, Prometheus text for /metrics, or a page's file
                media = ("text/plain" if rt.response is str else rt.response.types[0]
                         if isinstance(rt.response, Media) else "application/json")
                assert "schema" in ok["content"][media], rt.path
            if rt.body is not None:
                assert "schema" in op["requestBody"]["content"]["application/json"], rt.path
            else:
                assert "requestBody" not in op, rt.path
            names = {p["name"] for p in op["parameters"]}
            assert {p.name for p in rt.params} <= names, rt.path
            assert ("Idempotency-Key" in names) is rt.idempotent, rt.path
            assert bool(op.get("security")) is (rt.access is not Access.PUBLIC), rt.path
            if rt.access is not Access.PUBLIC:
                assert {"401", "403"} <= set(op["responses"]), rt.path

        # The documented schemas describe what the service really answers.
        a = await funded(service, http, cny="100", hb="10")
        b = await funded(service, http, cny="100")
        a_id = a.account_id
        order = await place_ok(http, a.key, "sell", "2.00", "5.00", client_order_id="doc-1")
        await place_ok(http, b.key, "buy", "1.00", "4.00")
        checks: list[tuple[str, str, str | None, Any, str]] = [
            # (method, path, key, body, documented path)
            ("GET", "/v1/market", None, None, "/v1/market"),
            ("GET", "/v1/ticker", None, None, "/v1/ticker"),  # before any trade
            ("GET", "/healthz", None, None, "/healthz"),
            ("GET", "/readyz", None, None, "/readyz"),
            ("POST", "/v1/orders", b.key, {"side": "buy", "qty": "1.00", "price": "5.00"}, "/v1/orders"),
            ("GET", "/v1/book", None, None, "/v1/book"),
            ("GET", "/v1/trades", None, None, "/v1/trades"),
            ("GET", "/v1/candles?interval=1m", None, None, "/v1/candles"),
            ("GET", "/v1/orders?status=all", a.key, None, "/v1/orders"),
            ("GET", f"/v1/orders/{order['order_id']}", a.key, None, "/v1/orders/{order_id}"),
            ("GET", "/v1/orders/by-client-id/doc-1", a.key, None, "/v1/orders/by-client-id/{client_order_id}"),
            ("PATCH", f"/v1/orders/{order['order_id']}", a.key, {"qty": "0.50"}, "/v1/orders/{order_id}"),
            ("GET", "/v1/fills", a.key, None, "/v1/fills"),
            ("GET", "/v1/balances", a.key, None, "/v1/balances"),
            ("GET", "/v1/ledger", a.key, None, "/v1/ledger"),
            ("DELETE", f"/v1/orders/{order['order_id']}", a.key, None, "/v1/orders/{order_id}"),
            ("DELETE", "/v1/orders", b.key, None, "/v1/orders"),
            ("GET", f"/v1/admin/accounts/{a_id}", service.admin_key, None, "/v1/admin/accounts/{account_id}"),
            ("POST", f"/v1/admin/accounts/{a_id}/keys", service.admin_key, {}, "/v1/admin/accounts/{account_id}/keys"),
            ("GET", f"/v1/admin/accounts/{a_id}/keys", service.admin_key, None, "/v1/admin/accounts/{account_id}/keys"),
            ("POST", "/v1/admin/accounts", service.admin_key, {"role": "user", "name": "d"}, "/v1/admin/accounts"),
            ("POST", "/v1/admin/cash", service.admin_key, {"account_id": a_id, "amount": "1", "direction": "deposit"},
             "/v1/admin/cash"),
            ("POST", "/v1/admin/halt", service.admin_key, {}, "/v1/admin/halt"),
            ("POST", "/v1/admin/resume", service.admin_key, {}, "/v1/admin/resume"),
            ("DELETE", f"/v1/admin/accounts/{b.account_id}/keys/{b.key_id}", service.admin_key, None,
             "/v1/admin/accounts/{account_id}/keys/{key_id}"),
            ("DELETE", f"/v1/admin/accounts/{a_id}/keys", service.admin_key, None,
             "/v1/admin/accounts/{account_id}/keys"),
            ("GET", "/v1/balances", None, None, "/v1/balances"),  # an error body
        ]
        failures: list[str] = []
        for method, path, key, body, documented in checks:
            r = await (call(http, method, path, key, body) if body is not None else call(http, method, path, key))
            responses = doc["paths"][documented][method.lower()]["responses"]
            if str(r.status) not in responses:
                failures.append(f"{method} {path}: status {r.status} is not documented")
                continue
            schema = responses[str(r.status)].get("content", {}).get("application/json", {}).get("schema")
            if schema is not None:
                failures += [f"{method} {path}: {e}" for e in conforms(doc, schema, r.body)]
        assert not failures, "\n".join(failures)


async def test_openapi_documents_every_status_the_service_answered(service: Service) -> None:
    """Each (route, method, status) the request counter saw is a documented response."""
    sequencer = services_of(service.app).sequencer
    async with aiohttp.ClientSession(service.url) as http:
        a = await funded(service, http, cny="100")
        read_only, _ = await add_key(http, service.admin_key, a.account_id, ("read",))
        body = {"side": "buy", "qty": "1.00", "price": "5.00", "client_order_id": "st-1"}
        await call(http, "POST", "/v1/orders", a.key, body)  # 201
        await call(http, "POST", "/v1/orders", a.key, body)  # the replay
        await call(http, "POST", "/v1/orders", a.key, {**body, "qty": "2.00"})  # 422
        await call(http, "POST", "/v1/orders", a.key, data=b"{")  # 400
        await call(http, "POST", "/v1/orders", read_only, body)  # 403
        await call(http, "GET", "/v1/orders/999999", a.key)  # 404
        await call(http, "GET", "/v1/balances")  # 401
        await call(http, "POST", "/v1/admin/halt", service.admin_key)
        await call(http, "POST", "/v1/orders", a.key, {**body, "client_order_id": "st-2"})  # 409
        await call(http, "POST", "/v1/admin/resume", service.admin_key)
        sequencer.state = State.STOPPED
        try:
            await call(http, "GET", "/readyz")
            await call(http, "POST", "/v1/orders", a.key, {**body, "client_order_id": "st-3"})  # 503
        finally:
            sequencer.state = State.SERVING
        doc = (await call(http, "GET", "/v1/openapi.json")).body
        text = (await call(http, "GET", "/metrics")).body
    answered = {(s.labels["route"], s.labels["method"].lower(), s.labels["status"])
                for f in text_string_to_metric_families(text) if f.name == "exchange_http_requests"
                for s in f.samples if s.name == "exchange_http_requests_total"}
    answered = {(route, m, st) for route, m, st in answered if route in doc["paths"]}
    assert len(answered) >= 10
    undocumented = sorted((route, m, st) for route, m, st in answered
                          if st not in doc["paths"][route][m]["responses"])
    assert not undocumented, f"answered but not in the OpenAPI document: {undocumented}"


# ---------------------------------------------------------------- request ids


async def test_request_ids_are_echoed_or_generated_and_in_error_bodies(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        r = await call(http, "GET", "/healthz", headers={"X-Request-Id": "abc-123_XYZ"})
        assert r.headers["X-Request-Id"] == "abc-123_XYZ"
        generated = []
        for headers in ({}, {"X-Request-Id": "has spaces in it"}, {"X-Request-Id": "x" * 65},
                        {"X-Request-Id": "semi;colon"}):
            r = await call(http, "GET", "/healthz", headers=headers)
            assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-Id"]), r.headers
            generated.append(r.headers["X-Request-Id"])
        assert len(set(generated)) == len(generated)

        a = await funded(service, http)
        errors = [
            (await call(http, "GET", "/v1/balances", headers={"X-Request-Id": "rid-401"}), 401, "unauthenticated"),
            (await call(http, "GET", "/v1/nowhere", headers={"X-Request-Id": "rid-404"}), 404, "not_found"),
            (await call(http, "PUT", "/v1/orders", a.key, {}, headers={"X-Request-Id": "rid-405"}), 405,
             "method_not_allowed"),
            (await call(http, "POST", "/v1/orders", a.key, {"side": "up"}, headers={"X-Request-Id": "rid-422"}),
             422, "invalid_request"),
            (await call(http, "GET", "/v1/orders/1", a.key, headers={"X-Request-Id": "rid-404b"}), 404,
             "unknown_order"),
        ]
        for reply, status, code in errors:
            assert_error(reply, status, code)
            assert reply.body["request_id"] == f"rid-{reply.status}" or reply.body["request_id"] == "rid-404b"
        r = await call(http, "GET", "/v1/balances")
        assert_error(r, 401, "unauthenticated")
        assert re.fullmatch(r"[0-9a-f]{32}", r.body["request_id"])


# ---------------------------------------------------------------- logs


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


async def test_logs_are_json_lines_without_secrets(pg_dsn: str) -> None:
    logger = logging.getLogger("exchange")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    secrets: list[str] = []
    try:
        svc = await start_service(service_settings(pg_dsn))
        secrets.append(svc.admin_key)
        try:
            sequencer = services_of(svc.app).sequencer
            async with aiohttp.ClientSession(svc.url) as http:
                a = await funded(svc, http, cny="100")
                secrets += [a.key, a.key.split("_", 2)[2]]
                await place_ok(http, a.key, "buy", "1.00", "5.00")
                forged = f"hb_{a.key_id}_wrong-secret-0123456789"
                secrets.append(forged)
                assert (await call(http, "GET", "/v1/balances", forged)).status == 401
                sequencer.state = State.STOPPED  # make requests fail with 5xx: those are logged
                try:
                    r = await call(http, "POST", "/v1/orders", a.key,
                                   {"side": "buy", "qty": "1.00", "price": "5.00"},
                                   headers={"X-Request-Id": "log-me-503"})
                    assert r.status == 503
                    r = await call(http, "POST", "/v1/admin/cash", svc.admin_key,
                                   {"account_id": a.account_id, "amount": "1.00", "direction": "deposit"},
                                   headers={"Idempotency-Key": "log-key-1"})
                    assert r.status == 503
                finally:
                    sequencer.state = State.SERVING
        finally:
            await svc.runner.cleanup()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)

    assert handler.lines, "nothing was logged"
    records = []
    for line in handler.lines:
        assert "\n" not in line, line
        record = json.loads(line)
        assert isinstance(record, dict) and {"ts", "level", "logger", "msg"} <= set(record), record
        assert record["logger"].startswith("exchange")
        records.append(record)
    assert any(r["msg"] == "serving" for r in records)
    text = "\n".join(handler.lines)
    for secret in secrets:
        assert secret not in text, "a secret reached the logs"
    # The failed request's line carries the request id the client saw (to find it from a 5xx body).
    failed = [r for r in records if r["msg"] == "request failed" and r.get("status") == 503]
    assert len(failed) == 2 and all(r["level"] == "warning" for r in failed), failed
    assert "log-me-503" in [r.get("request_id") for r in failed], failed


async def test_a_read_cut_off_by_the_statement_timeout_answers_503_and_the_pool_recovers(
        pg_dsn: str, monkeypatch: Any) -> None:
    """A read that runs past the read pool's statement timeout (here: waiting on a lock) is a
    503 query_timeout with Retry-After, not a 500; the next read works."""
    import asyncio

    import asyncpg

    from exchange import app as app_module

    monkeypatch.setattr(app_module, "READ_POOL_SETTINGS", {"statement_timeout": "300"})
    svc = await start_service(service_settings(pg_dsn))
    try:
        async with aiohttp.ClientSession(svc.url) as http:
            a = await funded(svc, http, cny="5")
            locker = await asyncpg.connect(pg_dsn)
            try:
                tx = locker.transaction()
                await tx.start()
                await locker.execute("LOCK TABLE balances IN ACCESS EXCLUSIVE MODE")
                r = await call(http, "GET", "/v1/balances", a.key)
                assert_error(r, 503, "query_timeout")
                assert r.headers["Retry-After"] == "1"
                await tx.rollback()
            finally:
                await locker.close()
            r = await call(http, "GET", "/v1/balances", a.key)
            assert r.status == 200, r
            assert await asyncio.wait_for(services_of(svc.app).pool.fetchval("SHOW statement_timeout"), 5) == "300ms"
    finally:
        await svc.runner.cleanup()


async def test_old_idempotency_records_are_purged_in_chunks(service: Service, monkeypatch: Any) -> None:
    import asyncio
    import contextlib

    from exchange import app as app_module

    monkeypatch.setattr(app_module, "PURGE_CHUNK", 3)
    pool = services_of(service.app).pool
    account = (await pool.fetchval("SELECT max(account_id) FROM accounts"))
    await pool.execute("""
        INSERT INTO idempotency (account_id, key, fingerprint, status, response, seq, created_at)
        SELECT $1, 'k' || i, '\\x00'::bytea, 200, '\\x00'::bytea, 1,
               CASE WHEN i <= 8 THEN now() - interval '8 days' ELSE now() END
        FROM generate_series(1, 10) AS i""", account)
    deletes: list[str] = []

    class CountedDeletes:  # the real pool, its DELETE statements' results recorded
        async def execute(self, query: str, *args: Any) -> str:
            status: str = await pool.execute(query, *args)
            deletes.append(status)
            return status

    task = asyncio.create_task(app_module.purge_idempotency(CountedDeletes()))  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(10):
            while len(deletes) < 3:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert await pool.fetchval("SELECT count(*) FROM idempotency WHERE key LIKE 'k%'"
                               " AND created_at > now() - interval '1 day'") == 2
    assert deletes == ["DELETE 3", "DELETE 3", "DELETE 2"]  # chunks, each within the statement timeout
    await pool.execute("DELETE FROM idempotency WHERE account_id = $1 AND key LIKE 'k%'", account)


async def test_request_metrics_have_a_bounded_set_of_method_labels(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        for method in ("PROPFIND", "MKCOL", "PROPFIND"):  # methods the HTTP parser takes, no route uses
            async with http.request(method, "/v1/nowhere") as r:
                assert r.status in (404, 405)
        text = (await call(http, "GET", "/metrics")).body
    methods = {m.group(1) for m in re.finditer(r'exchange_http_requests_total\{[^}]*method="([^"]+)"', text)}
    assert "OTHER" in methods and not methods & {"PROPFIND", "MKCOL"}, methods
