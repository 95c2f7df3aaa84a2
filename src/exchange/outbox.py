"""A connection's outgoing frames: websocket text frames built once, and the bounded outbox
that writes them to one socket (the feed hub's subscribers).

A socket with nothing queued is written to at once; otherwise its writer task sends
everything queued in one transport write, and stops writing while the transport holds more
than `WRITE_BUFFER_LIMIT` unsent bytes, so a slow client's backlog builds up in its outbox
(whose bound the hub enforces: a fresh snapshot or 1013, see `feed`)."""

from __future__ import annotations

import asyncio
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

OUTBOX_LIMIT = 1_000  # messages queued per connection before it counts as slow
WRITE_BUFFER_LIMIT = 1 << 20  # unsent bytes in a socket's transport before its writer waits
BACKPRESSURE_POLL_S = 0.005  # how often a waiting writer looks at the transport again
_TEXT_FIN = 0x81  # FIN + opcode 1 (text); RSV bits 0: no compression
_head_short = struct.Struct("!BB").pack
_head_16 = struct.Struct("!BBH").pack
_head_64 = struct.Struct("!BBQ").pack


def ws_frame(payload: bytes) -> bytes:
    """The complete server-to-client websocket frame carrying `payload` as one text message
    (RFC 6455 section 5.2: FIN, opcode 1, unmasked, 7/16/64-bit length)."""
    n = len(payload)
    if n < 126:
        return _head_short(_TEXT_FIN, n) + payload
    if n < 65536:
        return _head_16(_TEXT_FIN, 126, n) + payload
    return _head_64(_TEXT_FIN, 127, n) + payload


def ws_payload(frame: bytes) -> bytes:
    """The message inside a frame built by `ws_frame`."""
    n = frame[1]
    return frame[2 if n < 126 else 4 if n == 126 else 10:]


class SlowConsumer(Exception):
    pass


class Sink(Protocol):
    """Where a socket's writer puts its frames (the connection's transport, in effect)."""

    def write(self, data: bytes) -> None: ...

    def get_write_buffer_size(self) -> int: ...


class Outbox:
    """One connection's bounded queue of frames; `writer` drains it to the socket.

    With a `sink`, the writer hands every queued frame to it in one write, and waits while the
    sink holds more than `WRITE_BUFFER_LIMIT` bytes. Without one, it awaits `send` with each
    message's payload (the JSON text, not the frame) in turn.
    """

    def __init__(self, send: Callable[[bytes], Awaitable[Any]] | None = None, limit: int = OUTBOX_LIMIT, *,
                 sink: Sink | None = None) -> None:
        assert (send is None) != (sink is None), "an outbox writes to exactly one of send and sink"
        self.send = send
        self.sink = sink
        self.limit = limit
        self.queue: deque[tuple[str, bytes]] = deque()
        self.wakeup = asyncio.Event()
        self.closed = False
        self.slow = False
        self.account_id: int | None = None
        self.channels: set[str] = set()
        self.group: frozenset[str] = frozenset()  # its public channels (FeedHub.groups)
        self.last_sent = time.monotonic()
        self.on_overflow: Callable[[], Any] | None = None  # closes the socket (1013)

    def put(self, channel: str, frame: bytes, *, direct: bool = True) -> bool:
        """Queue a frame; False when the connection is over its bound (the hub decides).
        `direct=False` always queues: acknowledgements of a committed batch arrive in a burst,
        and the writer then sends them in one write instead of one each."""
        if self.closed:
            return True
        queue = self.queue
        if direct and not queue and self.sink is not None and self.sink.get_write_buffer_size() <= WRITE_BUFFER_LIMIT:
            # Nothing waits before it: write now and spare the writer task a wake-up.
            self.sink.write(frame)
            self.last_sent = time.monotonic()
            return True
        if len(queue) >= self.limit:
            return False
        queue.append((channel, frame))
        self.wakeup.set()
        return True

    def put_many(self, items: list[tuple[str, bytes]], joined: bytes, now: float) -> list[str]:
        """Queue several frames (`joined` is their concatenation, written at once when nothing
        waits before them); returns the channels whose frame did not fit."""
        if self.closed:
            return []
        sink = self.sink
        if not self.queue and sink is not None and sink.get_write_buffer_size() <= WRITE_BUFFER_LIMIT:
            sink.write(joined)
            self.last_sent = now
            return []
        return [channel for channel, frame in items if not self.put(channel, frame)]

    def replace_channel(self, channel: str, frames: Iterable[bytes]) -> None:
        """Drop the channel's queued frames and queue these instead (a fresh snapshot)."""
        self.queue = deque(item for item in self.queue if item[0] != channel)
        self.queue.extend((channel, f) for f in frames)
        self.wakeup.set()

    async def writer(self) -> None:
        sink, send = self.sink, self.send
        while not self.closed:
            if not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            if sink is not None:
                if sink.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
                    await asyncio.sleep(BACKPRESSURE_POLL_S)  # the outbox fills meanwhile
                    continue
                queue = self.queue
                data = b"".join([frame for _, frame in queue])
                queue.clear()
                sink.write(data)
            else:
                assert send is not None
                _, frame = self.queue.popleft()
                await send(ws_payload(frame))
            self.last_sent = time.monotonic()
