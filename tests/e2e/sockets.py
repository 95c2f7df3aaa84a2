"""Websocket helpers shared by the feed tests: a client-side book, in-process feed gateways and
a socket that reads continuously and sorts what arrives."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import aiohttp
from aiohttp import web

from exchange.gateway import JournalTail, create_gateway_app, tail_key
from exchange.routes import services_of
from tests.conftest import Service
from tests.e2e.helpers import book_checksum


class LocalBook:
    """A client's book: a snapshot, then updates with absolute quantities ("0" removes)."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        assert snapshot["type"] == "snapshot"
        self.seq = snapshot["seq"]
        self.engine_seq = snapshot["engine_seq"]
        self.bids = {p: q for p, q in snapshot["bids"]}
        self.asks = {p: q for p, q in snapshot["asks"]}
        assert self.checksum() == snapshot["checksum"]

    def apply(self, update: dict[str, Any]) -> None:
        assert update["type"] == "update" and update["prev_seq"] == self.seq, "a gap in the book stream"
        self.seq = update["seq"]
        self.engine_seq = update["engine_seq"]
        for side, levels in ((self.bids, update["bids"]), (self.asks, update["asks"])):
            for p, q in levels:
                if float(q) == 0:  # comparing a decimal string to zero, not money arithmetic
                    side.pop(p, None)
                else:
                    side[p] = q
        assert self.checksum() == update["checksum"], "checksum mismatch"

    def levels(self) -> tuple[list[list[str]], list[list[str]]]:
        bids = sorted(self.bids.items(), key=lambda kv: Decimal(kv[0]), reverse=True)
        asks = sorted(self.asks.items(), key=lambda kv: Decimal(kv[0]))
        return [list(x) for x in bids], [list(x) for x in asks]

    def checksum(self) -> int:
        bids, asks = self.levels()
        return book_checksum({"bids": bids, "asks": asks})


@dataclass
class Gateway:
    url: str
    app: web.Application
    runner: web.AppRunner

    @property
    def tail(self) -> JournalTail:
        return self.app[tail_key]


async def start_gateway(service: Service) -> Gateway:
    app = create_gateway_app(replace(service.settings, port=0))
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return Gateway(f"http://127.0.0.1:{runner.addresses[0][1]}", app, runner)


@contextlib.asynccontextmanager
async def gateway(service: Service) -> AsyncIterator[Gateway]:
    gw = await start_gateway(service)
    try:
        yield gw
    finally:
        await gw.runner.cleanup()


class Socket:
    """A client socket that reads continuously (so no outbox ever overflows) and sorts what arrives."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, *, raw: bool = False) -> None:
        self.ws = ws
        self.raw = raw  # keep each push as the text it arrived as (to compare bytes)
        self.acks: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.pushes: dict[str, asyncio.Queue[Any]] = {}
        self.heartbeats: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            body = msg.json()
            if "op" in body:
                self.acks.put_nowait(body)
            elif body.get("type") == "heartbeat":
                self.heartbeats.put_nowait(body)
            else:
                self.channel(body["ch"]).put_nowait(msg.data if self.raw else body)

    def channel(self, name: str) -> asyncio.Queue[Any]:
        return self.pushes.setdefault(name, asyncio.Queue())

    async def request(self, op: str, args: Any = None) -> dict[str, Any]:
        await self.ws.send_json({"op": op, "id": op, "args": args})
        return await asyncio.wait_for(self.acks.get(), 10)

    async def push(self, channel: str) -> Any:
        return await asyncio.wait_for(self.channel(channel).get(), 10)

    async def updates_until(self, engine_seq: int, channels: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
        """Every update queued until a heartbeat shows the socket has seen `engine_seq` (FIFO per
        socket): the hub has taken its batch and, with `book` subscribed, published its feed window
        (every window has its `book` update, numbered by the window's last engine seq)."""
        async with asyncio.timeout(30):
            while True:
                beat = await self.heartbeats.get()
                if beat["engine_seq"] >= engine_seq and beat["seqs"].get("book", engine_seq) >= engine_seq:
                    break
        out: dict[str, list[dict[str, Any]]] = {}
        for name in channels:
            q = self.channel(name)
            out[name] = [q.get_nowait() for _ in range(q.qsize())]
        return out

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


async def connect(http: aiohttp.ClientSession, url: str) -> Socket:
    return Socket(await http.ws_connect(f"{url}/v1/ws"))


def committed_seq(service: Service) -> int:
    return int(services_of(service.app).sequencer.committed_seq)
