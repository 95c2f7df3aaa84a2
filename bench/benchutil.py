"""What the benchmark scripts share (imported from the scripts' own directory)."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable
from urllib.parse import urlsplit


def pct(values: list[float], p: float, *, is_sorted: bool = False) -> float | None:
    """The p-quantile of durations in seconds, in milliseconds (None when there are none)."""
    if not values:
        return None
    ordered = values if is_sorted else sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000, 2)


def price_text(ticks: int) -> str:
    """A price in 0.01 CNY ticks as the API's decimal string."""
    return f"{ticks // 100}.{ticks % 100:02d}"


class RawWebSocket(asyncio.Protocol):
    """A lean websocket client for load generators: frames parsed straight off the socket.

    aiohttp's client costs a task wake-up and a message object per frame; with thousands of
    messages a second on the same two cores as the server, the generator's cost would be
    measured instead of the server's. `on_text` gets each text message (a memoryview valid
    during the call); `on_close` gets why the socket ended: "handshake" (no 101 answer),
    "close:<code>" (a close frame) or "lost". Client frames are masked with a zero mask, which
    RFC 6455 allows for a client that need not hide its bytes from proxies.
    """

    def __init__(self, host: str, on_text: Callable[[memoryview], None],
                 on_close: Callable[[str], None] | None = None) -> None:
        self.host = host
        self.on_text = on_text
        self.on_close = on_close
        self.buf = bytearray()
        self.upgraded = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.last_frame = time.monotonic()
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(  # type: ignore[attr-defined]
            f"GET /v1/ws HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())

    def send_text(self, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
        assert self.transport is not None
        self.transport.write(head + b"\0\0\0\0" + payload)

    def data_received(self, data: bytes) -> None:
        self.last_frame = time.monotonic()
        if not self.upgraded:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                self.end("handshake")
                return
            data = bytes(self.buf[end + 4:])
            self.buf = bytearray()
            self.upgraded = True
            if not self.ready.done():
                self.ready.set_result(None)
        if self.buf:  # a frame was split across reads
            self.buf += data
            data = bytes(self.buf)
            self.buf = bytearray()
        pos, size = 0, len(data)
        view = memoryview(data)
        while size - pos >= 2:
            op, n = data[pos] & 0x0F, data[pos + 1] & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n, head = int.from_bytes(data[pos + 2:pos + 4], "big"), 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, head = int.from_bytes(data[pos + 2:pos + 10], "big"), 10
            if size - pos < head + n:
                break
            at = pos + head
            pos = at + n
            if op == 8:
                self.end(f"close:{int.from_bytes(data[at:at + 2], 'big')}" if n >= 2 else "close:none")
                return
            if op == 1:
                self.on_text(view[at:pos])
        if pos < size:
            self.buf += view[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.end("lost")

    def end(self, why: str) -> None:
        if self.done:
            return
        self.done = True
        if not self.ready.done():
            self.ready.set_result(None)
        if self.on_close is not None:
            self.on_close(why)
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        """Our own end: no `on_close`."""
        self.on_close = None
        self.end("closed")


async def connect_raw(url: str, on_text: Callable[[memoryview], None], on_close: Callable[[str], None] | None = None,
                      timeout_s: float = 30.0) -> RawWebSocket:
    """A RawWebSocket on `url`'s /v1/ws, upgraded (check `.done` for a refused handshake)."""
    parsed = urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: RawWebSocket(f"{host}:{port}", on_text, on_close), host, port), timeout_s)
    try:
        await asyncio.wait_for(proto.ready, timeout_s)
    except BaseException:
        proto.close()  # never upgraded: our end, so it is not reported again through on_close
        raise
    return proto
