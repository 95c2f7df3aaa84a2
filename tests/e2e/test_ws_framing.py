"""Frames built once (feed.ws_frame) and written in bursts straight to the transport: the header
per RFC 6455, and aiohttp's client reading a burst of them, with its own ping/pong and close."""

from __future__ import annotations

import asyncio
import json
import struct

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from exchange.feed import Outbox, ws_frame, ws_payload
from exchange.ws import _Socket


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frame_header_round_trips(n: int) -> None:
    payload = bytes(i % 251 for i in range(n))
    frame = ws_frame(payload)
    b0, b1 = frame[0], frame[1]
    assert b0 == 0x81, "FIN, no RSV bits, opcode 1 (text)"
    assert b1 & 0x80 == 0, "server frames are unmasked"
    length = b1 & 0x7F
    if n < 126:
        head = 2
        assert length == n
    elif n < 65536:
        head = 4
        assert length == 126 and struct.unpack("!H", frame[2:4])[0] == n
    else:
        head = 10
        assert length == 127 and struct.unpack("!Q", frame[2:10])[0] == n
    assert frame[head:] == payload and len(frame) == head + n
    assert ws_payload(frame) == payload


def _messages() -> list[bytes]:
    sizes = [0, 5, 125, 126, 127, 1000, 65535, 65536, 200_000] + [30] * 500
    return [json.dumps({"i": i, "pad": "x" * max(0, size - 20)}).encode() for i, size in enumerate(sizes)]


async def test_aiohttp_client_reads_a_burst_of_prebuilt_frames() -> None:
    messages = _messages()
    done = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        assert request.transport is not None
        box = Outbox(sink=_Socket(ws, request.transport), limit=10_000)
        for msg in messages:  # queued before the writer runs: one coalesced write
            assert box.put("test", ws_frame(msg))
        writer = asyncio.create_task(box.writer())
        async for msg in ws:  # aiohttp answers the client's pings itself meanwhile
            if msg.type is WSMsgType.TEXT and msg.data == "more":
                for i in range(3):
                    box.put("test", ws_frame(json.dumps({"more": i}).encode()))
        done.set()  # (aiohttp may cancel this handler once the connection is gone)
        box.closed = True
        box.wakeup.set()
        await writer
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        async with http.ws_connect(server.make_url("/ws"), autoping=False, max_msg_size=0) as ws:
            got = [await ws.receive(timeout=5) for _ in messages]
            assert [m.type for m in got] == [WSMsgType.TEXT] * len(messages)
            assert [m.data.encode() for m in got] == messages
            await ws.ping(b"hi")
            pong = await ws.receive(timeout=5)
            assert pong.type is WSMsgType.PONG and pong.data == b"hi"
            await ws.send_str("more")
            assert [json.loads((await ws.receive(timeout=5)).data) for _ in range(3)] == [{"more": i} for i in range(3)]
            await ws.close()
            assert ws.close_code == 1000
        await asyncio.wait_for(done.wait(), 5)


async def test_nothing_is_written_after_the_close_frame() -> None:
    written: list[bytes] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        assert request.transport is not None
        sink = _Socket(ws, request.transport)
        await ws.close(code=1013, message=b"slow_consumer")
        with pytest.raises(ConnectionResetError):
            sink.write(ws_frame(b'{"late":true}'))
        written.append(b"checked")
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    async with TestServer(app) as server, aiohttp.ClientSession() as http, \
            http.ws_connect(server.make_url("/ws")) as ws:
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE and msg.data == 1013
    assert written == [b"checked"]
