"""A gateway publishes a feed window as soon as the engine says it is complete (ADR 0008).

With no later batch to close it, a window on a gateway goes out when the engine's NOTIFY
`w<ts>` arrives; only without one does the gateway wait a second after the window's end.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from exchange.feed import STALE_WINDOW_NS
from exchange.ws import hub_of
from tests.conftest import Service
from tests.e2e.helpers import funded, place_ok
from tests.e2e.sockets import connect, gateway


async def test_a_lone_batch_reaches_gateway_subscribers_without_waiting_for_the_fallback(service: Service) -> None:
    assert service.settings.feed_interval_ms > 0, "the default settings group by window"
    async with gateway(service) as gw, aiohttp.ClientSession(service.url) as http:
        seller = await funded(service, http, hb="10")
        sock = await connect(http, gw.url)
        assert (await sock.request("subscribe", [{"channel": "book"}]))["ok"]
        assert (await sock.push("book"))["type"] == "snapshot"
        await asyncio.sleep(0.3)  # the funding's windows are out; the socket is quiet
        while not sock.channel("book").empty():
            sock.channel("book").get_nowait()
        marks_before = gw.tail.closed_through
        placed_at = time.monotonic()
        await place_ok(http, seller.key, "sell", "1.00", "9.99")
        update = await sock.push("book")
        waited = time.monotonic() - placed_at
        assert update["type"] == "update" and update["asks"] == [["9.99", "1.00"]], update
        assert gw.tail.closed_through > marks_before, "the engine's window mark reached the gateway"
        assert waited < STALE_WINDOW_NS / 1e9 * 0.6, f"{waited:.3f} s: the gateway waited for its fallback"
        await sock.close()


async def test_a_gateway_started_inside_a_window_numbers_it_as_the_engine_does(service: Service) -> None:
    """The starting point of a gateway may fall inside a feed window whose earlier batches it
    never tails: it seeds that window from the journal so its messages are the engine's."""
    engine_hub = hub_of(service.app)
    async with aiohttp.ClientSession(service.url) as http:
        seller = await funded(service, http, hb="100")
        seeded_several = False
        for attempt in range(6):
            await asyncio.sleep(service.settings.feed_interval_ms / 1000)
            await place_ok(http, seller.key, "sell", "1.00", f"{20 + attempt}.00")
            await place_ok(http, seller.key, "sell", "1.00", f"{30 + attempt}.00")  # most likely the same window
            async with gateway(service) as gw:
                hub = gw.tail.hub
                window = hub.window
                assert window is not None and window.last_seq == gw.tail.start_seq
                seeded_several |= window.last_seq - window.prev_seq > 1
                await place_ok(http, seller.key, "sell", "1.00", f"{40 + attempt}.00")  # a later window
                async with asyncio.timeout(5):
                    while not hub.channels["book"].ring:
                        await asyncio.sleep(0.01)
                prev, seq, frame = hub.channels["book"].ring[0]
                assert prev == window.prev_seq and seq == window.last_seq
                assert (prev, seq, frame) in engine_hub.channels["book"].ring, "the engine's own message"
            if seeded_several:
                break
        assert seeded_several, "no attempt started a gateway inside a window of several commands"
