"""High availability: instances on one database elect a leader with the advisory lock; a standby
answers not ready and refuses commands, and takes over (recovering from the database) when the
leader goes away."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from exchange.app import current_engine
from exchange.routes import serving_key
from tests.conftest import service_settings, start_service
from tests.e2e.helpers import assert_error, call, funded, place_ok


async def test_a_standby_refuses_commands_and_takes_over_when_the_leader_stops(pg_dsn: str) -> None:
    leader = await start_service(service_settings(pg_dsn))
    standby = None
    try:
        standby = await start_service(service_settings(pg_dsn))
        assert standby.app[serving_key].services is None  # it did not recover an engine: it waits for the lock
        async with aiohttp.ClientSession() as http:
            ready = await call(http, "GET", standby.url + "/readyz")
            assert ready.status == 503 and ready.body["detail"] == {"role": "standby"}, ready
            assert (await call(http, "GET", standby.url + "/healthz")).status == 200
            metrics = await call(http, "GET", standby.url + "/metrics")
            assert metrics.status == 200 and "exchange_leader 0.0" in metrics.body
            assert_error(await call(http, "GET", standby.url + "/v1/book"), 503, "not_leader")
            assert_error(await call(http, "POST", standby.url + "/v1/orders", leader.admin_key,
                                    {"side": "buy", "qty": "1", "price": "1"}), 503, "not_leader")
            leader_ready = await call(http, "GET", leader.url + "/readyz")
            assert leader_ready.status == 200 and leader_ready.body["detail"]["role"] == "leader"

        async with aiohttp.ClientSession(leader.url) as http:
            alice = await funded(leader, http, cny="100")
            order = await place_ok(http, alice.key, "buy", "2.00", "1.50", client_order_id="before-failover")
        hash_at_leader = current_engine(leader.app).state_hash()
        await leader.runner.cleanup()  # the leader stops: its writer connection and lock go with it
        leader = None

        t0 = time.monotonic()
        async with aiohttp.ClientSession(standby.url) as http:
            while time.monotonic() - t0 < 10:
                if (await call(http, "GET", "/readyz")).status == 200:
                    break
                await asyncio.sleep(0.05)
            took_over_s = time.monotonic() - t0
            assert took_over_s < 10, "the standby did not take over within 10 s"
            # the new leader recovered everything the old one committed, and serves it
            assert current_engine(standby.app).state_hash() == hash_at_leader
            got = await call(http, "GET", f"/v1/orders/{order['order_id']}", alice.key)
            assert got.status == 200 and got.body["client_order_id"] == "before-failover", got
            await place_ok(http, alice.key, "buy", "1.00", "1.50", client_order_id="after-failover")
        current_engine(standby.app).check_invariants()
    finally:
        if leader is not None:
            await leader.runner.cleanup()
        if standby is not None:
            await standby.runner.cleanup()
