"""Failover between two real `exchange serve` processes on one PostgreSQL: the leader is
SIGKILLed under load; the standby takes the lock and serves within 10 s with every order the
leader acknowledged, and money is conserved."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import aiohttp
import asyncpg

from exchange.client import free_port, wait_ready
from exchange.processes import spawn
from tests.conftest import ADMIN_TOKEN
from tests.e2e.helpers import call

TAKEOVER_LIMIT_S = 10.0


def start_engine(dsn: str, port: int) -> subprocess.Popen[bytes]:
    return spawn("serve", {"EXCHANGE_DATABASE_URL": dsn, "EXCHANGE_LOG_LEVEL": "WARNING",
                           "EXCHANGE_ADMIN_TOKEN": ADMIN_TOKEN, "EXCHANGE_SCHEDULER": "off",
                           "EXCHANGE_RATE_LIMIT_PER_S": "100000", "EXCHANGE_RATE_LIMIT_BURST": "100000"}, port=port)


async def ready_status(http: aiohttp.ClientSession, url: str) -> int:
    try:
        async with http.get(url + "/readyz") as r:
            return r.status
    except aiohttp.ClientError:
        return 0


async def account_with_key(http: aiohttp.ClientSession, url: str, cny: str, hb_from: str | None = None) -> str:
    r = await call(http, "POST", url + "/v1/admin/accounts", ADMIN_TOKEN, {"role": "user", "name": "trader"})
    acct = r.body["account_id"]
    r = await call(http, "POST", f"{url}/v1/admin/accounts/{acct}/keys", ADMIN_TOKEN, {"scopes": ["read", "trade"]})
    key = r.body["api_key"]
    r = await call(http, "POST", url + "/v1/admin/cash", ADMIN_TOKEN,
                   {"account_id": acct, "amount": cny, "direction": "deposit"})
    assert r.status == 200, r
    return str(key)


async def test_the_standby_takes_over_within_ten_seconds_with_every_acknowledged_order(pg_dsn: str) -> None:
    port_a, port_b = free_port(), free_port()
    url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    leader = start_engine(pg_dsn, port_a)
    standby: subprocess.Popen[bytes] | None = None
    try:
        await wait_ready(url_a, alive=lambda: leader.poll() is None)
        standby = start_engine(pg_dsn, port_b)
        async with aiohttp.ClientSession() as http:
            t0 = time.monotonic()
            while (await ready_status(http, url_b)) != 503:  # up, and a standby
                assert standby.poll() is None and time.monotonic() - t0 < 20
                await asyncio.sleep(0.05)
            r = await call(http, "GET", url_b + "/readyz")
            assert r.body["detail"] == {"role": "standby"}, r
            keys = [await account_with_key(http, url_a, "100000") for _ in range(4)]

            acked: list[tuple[str, str]] = []  # (key, client_order_id) the leader answered 201
            stop = asyncio.Event()

            async def trader(i: int) -> None:
                n = 0
                while not stop.is_set():
                    cid = f"t{i}-{n}"
                    n += 1
                    body = {"side": "buy", "qty": "1", "price": f"{1 + n % 50}.00", "client_order_id": cid}
                    try:
                        r = await call(http, "POST", url_a + "/v1/orders", keys[i], body)
                    except (aiohttp.ClientError, OSError):
                        await asyncio.sleep(0.01)
                        continue
                    if r.status == 201:
                        acked.append((keys[i], cid))

            traders = [asyncio.create_task(trader(i)) for i in range(4)]
            await asyncio.sleep(1.5)
            leader.send_signal(signal.SIGKILL)  # under load, mid-batch
            leader.wait(timeout=10)
            killed_at = time.monotonic()
            stop.set()
            await asyncio.gather(*traders)
            assert len(acked) > 50, "the load never got going"

            while (await ready_status(http, url_b)) != 200:
                assert standby.poll() is None, "the standby exited"
                assert time.monotonic() - killed_at < TAKEOVER_LIMIT_S, "the standby did not take over in time"
                await asyncio.sleep(0.05)
            took_over_s = time.monotonic() - killed_at
            assert took_over_s < TAKEOVER_LIMIT_S

            # every acknowledged order is there, served by the new leader
            missing = []
            for key, cid in acked:
                r = await call(http, "GET", f"{url_b}/v1/orders/by-client-id/{cid}", key)
                if r.status != 200:
                    missing.append((cid, r.status))
            assert not missing, missing
            r = await call(http, "POST", url_b + "/v1/orders", keys[0],
                           {"side": "buy", "qty": "1", "price": "1.00", "client_order_id": "after-failover"})
            assert r.status == 201, r

        # conservation: every asset sums to zero over all accounts, system ones included
        conn = await asyncpg.connect(pg_dsn)
        try:
            sums = await conn.fetchrow("SELECT sum(hb_available + hb_held) AS hb, sum(cny_available + cny_held) AS cny"
                                       " FROM balances")
        finally:
            await conn.close()
        assert (sums["hb"], sums["cny"]) == (0, 0)
    finally:
        for proc in (leader, standby):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
