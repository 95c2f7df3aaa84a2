"""The service answers over HTTP on a real database (a first end-to-end check)."""

import aiohttp

from tests.conftest import Service


async def test_market_and_admin_account_over_http(service: Service) -> None:
    admin = {"Authorization": f"Bearer {service.admin_key}"}
    async with aiohttp.ClientSession(service.url) as http:
        async with http.get("/v1/market") as r:
            assert r.status == 200 and (await r.json())["symbol"] == "HB-CNY"
        async with http.post("/v1/admin/accounts", json={"role": "user", "name": "a"}, headers=admin) as r:
            assert r.status == 201, await r.text()
            account = (await r.json())["account_id"]
        async with http.post(f"/v1/admin/accounts/{account}/keys", json={}, headers=admin) as r:
            key = (await r.json())["api_key"]
        async with http.get("/v1/balances", headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status == 200
            assert {b["asset"]: b["total"] for b in await r.json()} == {"HB": "0.00", "CNY": "0.0000"}
        async with http.get("/v1/balances") as r:
            assert r.status == 401 and (await r.json())["error"]["code"] == "unauthenticated"


async def test_requests_that_the_database_could_not_store_are_refused_at_the_edge(service: Service) -> None:
    """A NUL in a name, or an id beyond 64 bits, once fail-stopped the exchange (found by fuzzing)."""
    admin = {"Authorization": f"Bearer {service.admin_key}"}
    async with aiohttp.ClientSession(service.url, headers=admin) as http:
        async with http.post("/v1/admin/accounts", json={"role": "user", "name": "a\u0000b"}) as r:
            assert r.status == 422 and (await r.json())["error"]["field"] == "name"
        body = {"account_id": 46069714491262791319552, "amount": "1", "direction": "deposit"}
        async with http.post("/v1/admin/cash", json=body) as r:
            assert r.status == 422
        async with http.get("/readyz") as r:
            assert r.status == 200
