"""A real `exchange gateway` process, SIGKILLed under trading and restarted: it catches up
from the journal and a reconnecting client ends with exactly the engine's book."""

from __future__ import annotations

import asyncio
import signal
import subprocess

import aiohttp

from exchange.client import FeedClient, free_port, wait_ready
from exchange.processes import spawn
from tests.conftest import Service
from tests.e2e.helpers import call, funded, place_ok


async def start_gateway_process(dsn: str, port: int) -> subprocess.Popen[bytes]:
    proc = spawn("gateway", {"EXCHANGE_DATABASE_URL": dsn, "EXCHANGE_LOG_LEVEL": "WARNING"}, port=port)
    try:
        await wait_ready(f"http://127.0.0.1:{port}", alive=lambda: proc.poll() is None)
    except BaseException:
        proc.kill()
        raise
    return proc


async def test_a_killed_gateway_process_restarts_and_clients_catch_up(service: Service) -> None:
    port = free_port()
    dsn = service.settings.database_url
    assert dsn is not None
    gateway = await start_gateway_process(dsn, port)
    try:
        async with aiohttp.ClientSession(service.url) as http:
            seller = await funded(service, http, hb="100")
            buyer = await funded(service, http, cny="10000")
            async with FeedClient(f"http://127.0.0.1:{port}", reconnect=20, idle_timeout_s=3) as feed:
                await feed.subscribe(["book"])
                for price in ("6.00", "6.10", "6.20"):
                    await place_ok(http, seller.key, "sell", "1.00", price)
                gateway.send_signal(signal.SIGKILL)
                gateway.wait(timeout=10)
                # Trading goes on while no gateway runs.
                await place_ok(http, buyer.key, "buy", "1.00", "6.00")
                for price in ("6.30", "6.40"):
                    await place_ok(http, seller.key, "sell", "2.00", price)
                gateway = await start_gateway_process(dsn, port)
                await place_ok(http, seller.key, "sell", "1.00", "6.50")
                rest = (await call(http, "GET", "/v1/book?depth=1000")).body
                reconnected = False
                async with asyncio.timeout(30):
                    while True:
                        msg = await feed.next()
                        reconnected = reconnected or msg.get("type") == "reconnected"
                        book = feed.book
                        assert book is not None
                        if reconnected and book.levels() == (rest["bids"], rest["asks"]):
                            break
                assert book.checksum() == rest["checksum"]
                assert feed.stats["checksum_mismatches"] == 0
    finally:
        gateway.kill()
        gateway.wait(timeout=10)
