"""Which event loop runs the service: uvloop by default (its transports and callbacks cost a
fraction of the pure-Python loop's, which is most of a websocket fan-out's and an HTTP request's
CPU), the standard asyncio loop on request (`EXCHANGE_EVENT_LOOP=asyncio`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
LOOPS = ("uvloop", "asyncio")


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    if kind == "asyncio":
        return None
    raise ValueError(f"event loop must be one of {', '.join(LOOPS)}, not {kind!r}")


def run(main: Coroutine[Any, Any, T], kind: str = "uvloop") -> T:
    """asyncio.run on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)
