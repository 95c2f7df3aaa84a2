"""`GET /v1/ws`: subscriptions to the feed, login, and order entry over one socket.

Client -> server: `{"op": "subscribe"|"unsubscribe"|"login"|"ping"|"place"|"cancel", "id": ..., "args": ...}`.
Every request gets one acknowledgement `{"op", "id", "ok": true, "result"}` or
`{"op", "id", "ok": false, "error": {"code", "message"}}`; request errors keep the socket open.
`place` and `cancel` follow the REST rules and are acknowledged after COMMIT.

Channels (`feed.PUBLIC`, `feed.PRIVATE`): public `book`, `trades`, `ticker`, `price`, `supply`;
after `login`, the account's `orders`, `fills` and `balances`.

Bounds: inbound messages of 64 KiB, 50 requests a second (burst 100) per connection,
16 subscriptions per connection, 10 connections per API key, a bounded outbox per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
import msgspec
from aiohttp import WSMsgType, web

from . import schemas as s
from .api_trading import (
    is_own_open_order,
    not_open_error,
    order_command,
    order_not_open,
    original_order,
)
from .core import messages as m
from .core.messages import Reasons as R
from .core.units import Role
from .errors import ApiError, rejection
from .feed import PRIVATE, PUBLIC, FeedHub, Outbox, ws_frame
from .ratelimit import RateLimiter
from .routes import (
    TRADING_ROLES,
    KeyLookupsSpent,
    Services,
    client_address,
    look_up_key,
    services_of,
    serving_key,
)
from .sequencer import InvalidCommand, Overloaded, Unavailable
from .views import placed_order

log = logging.getLogger(__name__)
def hub_of(app: web.Application) -> FeedHub:
    hub: FeedHub | None = app[serving_key].hub
    if hub is None:
        raise LookupError("this instance is not serving feeds (a standby)")
    return hub
MAX_MESSAGE_BYTES = 64 * 1024
MAX_SUBSCRIPTIONS = 16
MAX_CONNECTIONS_PER_KEY = 10
HEARTBEAT_S = 1.0
_encode = msgspec.json.Encoder().encode


class Request(msgspec.Struct, forbid_unknown_fields=True):
    op: str
    id: str | int | None = None
    # Kept as its JSON text: each op decodes it straight into its own type (an order request
    # is the commonest message; decoding it twice cost more than the rest of its parsing).
    args: msgspec.Raw = msgspec.Raw(b"null")


class Subscription(msgspec.Struct, forbid_unknown_fields=True):
    channel: str
    resume_from: int | None = None


_request = msgspec.json.Decoder(Request)
_subscriptions = msgspec.json.Decoder(list[Subscription])
_place = msgspec.json.Decoder(s.PlaceOrderRequest)


class WsError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


async def websocket(request: web.Request) -> web.WebSocketResponse:
    services: Services = services_of(request.app)
    hub = hub_of(request.app)
    # An upgrade spends the address's public budget, and an address holds a bounded number of
    # sockets, logged in or not: sockets are memory and file descriptors.
    remote = client_address(request, services.settings.trusted_proxies)
    if not services.public_limiter.allow(remote, time.monotonic()):
        raise ApiError(429, "rate_limited", "too many requests; slow down", headers={"Retry-After": "1"})
    held = hub.sockets_per_address.get(remote, 0)
    if held >= services.settings.max_sockets_per_address:
        raise ApiError(429, "too_many_connections", f"at most {services.settings.max_sockets_per_address}"
                       " sockets per client address", headers={"Retry-After": "1"})
    hub.sockets_per_address[remote] = held + 1
    try:
        return await _serve_socket(request, services, hub, remote)
    finally:
        left = hub.sockets_per_address[remote] - 1
        if left:
            hub.sockets_per_address[remote] = left
        else:
            del hub.sockets_per_address[remote]


async def _serve_socket(request: web.Request, services: Services, hub: FeedHub, remote: str) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_MESSAGE_BYTES)  # frames are shared: no deflate
    await ws.prepare(request)
    transport = request.transport
    if transport is None:  # the client went away during the handshake
        return ws
    box = Outbox(sink=_Socket(ws, transport))
    conn = _Connection(services, hub, ws, box, remote)
    # An overflowing subscriber is closed at once (1013), even if it never sends anything.
    box.on_overflow = lambda: asyncio.ensure_future(ws.close(code=1013, message=b"slow_consumer"))
    writer = asyncio.create_task(box.writer(), name="ws-writer")
    heartbeat = asyncio.create_task(conn.heartbeats(), name="ws-heartbeat")
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                conn.fail(None, None, "text_only", "send JSON text frames")
                continue
            await conn.dispatch(msg.data)
            if box.slow:
                break
    finally:
        hub.disconnect(box)
        conn.logout()
        for task in (writer, heartbeat, *conn.lookups):  # orders in flight still commit; answers go nowhere
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task
        if box.slow:
            await ws.close(code=1013, message=b"slow_consumer")
        else:
            await ws.close()
    return ws


class _Socket:
    """An outbox's sink: pre-built text frames (`feed.ws_frame`) written straight to the
    connection's transport, between whole frames of aiohttp's own (ping, pong, close)."""

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        self.ws, self.transport = ws, transport

    def write(self, data: bytes) -> None:
        if self.ws.closed or self.transport.is_closing():  # nothing may follow the close frame
            raise ConnectionResetError("the websocket is closing")
        self.transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size()


MAX_INFLIGHT = 256  # order requests of one connection awaiting their commit at once


_Finish = Callable[["_Connection", Any, list[m.Event]], Any]  # an order op's answer from its events


class _OrderReply:
    """One order request's `sequencer.Completion`: answers it on the socket when settled."""

    __slots__ = ("conn", "op", "rid", "cmd", "finish", "_done")

    def __init__(self, conn: _Connection, op: str, rid: Any, cmd: Any, finish: _Finish) -> None:
        self.conn, self.op, self.rid, self.cmd, self.finish, self._done = conn, op, rid, cmd, finish, False

    def done(self) -> bool:
        return self._done

    def set_result(self, events: list[m.Event], /) -> None:
        self._done = True
        self.conn.order_done(self, events, None)

    def set_exception(self, exception: BaseException, /) -> None:
        self._done = True
        self.conn.order_done(self, None, exception)


class _Connection:
    def __init__(self, services: Services, hub: FeedHub, ws: web.WebSocketResponse, box: Outbox,
                 remote: str = "?") -> None:
        self.services, self.hub, self.ws, self.box, self.remote = services, hub, ws, box, remote
        self.limiter = RateLimiter(50.0, 100)
        self.key_id: str | None = None
        self.role: Role | None = None
        self.scopes: frozenset[str] = frozenset()
        self.principal: Any = None
        self._pending_snapshots: list[bytes] = []
        self.inflight = 0  # orders awaiting their commit (or a repeat's lookup of its original)
        self.lookups: set[asyncio.Future[None]] = set()  # order requests answered after a read
        self.closing: asyncio.Future[bool] | None = None
        self._room: asyncio.Future[None] | None = None  # set when an order may be sent again
        self.per_key = hub.connections_per_key

    async def dispatch(self, data: str) -> None:
        """Order entry runs concurrently (acknowledged by id after its commit, bounded in
        number); other requests are answered in order."""
        try:
            req = _request.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            req = None  # handle() answers the error
        if req is not None and req.op in _ORDER_OPS:
            if self.inflight >= MAX_INFLIGHT:
                self._room = asyncio.get_running_loop().create_future()
                await self._room
            self.order(req)
            return
        await self.handle(data, req)

    def order(self, req: Request) -> None:
        """Check and submit an order op now; it is answered by its `_OrderReply` straight after
        its batch commits (no future or task per order: they are most of the messages)."""
        op, rid = req.op, req.id
        prepare, finish = _ORDER_OPS[op]
        try:
            now = time.monotonic()
            if not self.limiter.allow("ws", now):
                raise WsError("rate_limited", "too many requests on this connection")
            # Orders also spend the key's own budget, the one its REST requests spend: more
            # sockets on one key do not buy more orders.
            if self.key_id is not None and not self.services.limiter.allow(self.key_id, now):
                raise WsError("rate_limited", "too many requests with this key")
            cmd = prepare(self, req.args)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.fail(op, rid, "invalid_request", str(exc))
            return
        except (WsError, ApiError) as exc:
            self.fail(op, rid, exc.code, exc.message)
            return
        except _NotOpen as exc:
            self.inflight += 1
            self._look_up(self._not_open(op, rid, exc.order_id))
            return
        self.inflight += 1
        self.services.sequencer.submit_to(cmd, _OrderReply(self, op, rid, cmd, finish))

    def order_done(self, reply: _OrderReply, events: list[m.Event] | None, exc: BaseException | None) -> None:
        op, rid = reply.op, reply.rid
        first = events[0] if events else None
        if (op == "place" and isinstance(first, m.CommandRejected)
                and first.reason == R.DUPLICATE_CLIENT_ORDER_ID):
            # Answered with the original order, as REST does; it keeps its in-flight slot until then.
            self._look_up(self._replay(reply, first.order_id))
            return
        self._release()
        try:
            if isinstance(exc, (Overloaded, Unavailable, InvalidCommand)):
                raise WsError(exc.code, str(exc))
            if exc is not None:
                raise exc
            assert events is not None
            result = reply.finish(self, reply.cmd, events)
        except (WsError, ApiError) as err:
            self.fail(op, rid, err.code, err.message)
            return
        except Exception:
            log.exception("order entry failed", extra={"op": op})
            self.fail(op, rid, "internal_error", "the request failed; retry")
            return
        self.send({"op": op, "id": rid, "ok": True, "result": result})

    def _look_up(self, answer: Coroutine[Any, Any, None]) -> None:
        """Answer an order request after a database read; it holds its in-flight slot till then."""
        if self.box.closed:  # the socket is gone: nobody to answer
            answer.close()
            self._release()
            return
        task = asyncio.ensure_future(answer)
        self.lookups.add(task)
        task.add_done_callback(self.lookups.discard)

    async def _not_open(self, op: str, rid: Any, order_id: int) -> None:
        try:
            err = await not_open_error(self.services, self.principal.account_id, order_id)
            self.fail(op, rid, err.code, err.message)
        except Exception:
            log.exception("order entry failed", extra={"op": op})
            self.fail(op, rid, "internal_error", "the request failed; retry")
        finally:
            self._release()

    async def _replay(self, reply: _OrderReply, order_id: int) -> None:
        """A repeated client_order_id: the original order (same request) or an error (another one)."""
        try:
            view = await original_order(self.services, reply.cmd, order_id)
        except ApiError as err:
            self.fail(reply.op, reply.rid, err.code, err.message)
        except Exception:
            log.exception("order entry failed", extra={"op": reply.op})
            self.fail(reply.op, reply.rid, "internal_error", "the request failed; retry")
        else:
            self.send({"op": reply.op, "id": reply.rid, "ok": True, "result": view, "replayed": True})
        finally:
            self._release()

    def _release(self) -> None:
        self.inflight -= 1
        if self._room is not None and not self._room.done():
            self._room.set_result(None)

    def send(self, body: dict[str, Any]) -> None:
        # Acknowledgements go through the outbox too, so they keep their order with pushes, and
        # always queue: a committed batch's acknowledgements then leave in one write.
        self.box.put("_ack", ws_frame(_encode(body)), direct=False)

    def fail(self, op: str | None, rid: Any, code: str, message: str) -> None:
        self.send({"op": op, "id": rid, "ok": False, "error": {"code": code, "message": message}})

    async def heartbeats(self) -> None:
        while not self.box.closed:
            await asyncio.sleep(HEARTBEAT_S)
            if time.monotonic() - self.box.last_sent >= HEARTBEAT_S and not self.box.queue:
                self.box.put("_heartbeat", ws_frame(_encode({"type": "heartbeat", "seqs": self.hub.seqs(self.box),
                                                             "engine_seq": self.hub.engine_seq})))

    def revoked(self) -> None:
        """Its key was revoked: it trades and reads private channels no more, and is closed
        (1008 key_revoked) from its own task, as a slow consumer is; the reading loop then ends."""
        log.info("closing a websocket whose key was revoked", extra={"key_id": self.key_id})
        self.logout()
        self.box.account_id, self.principal, self.scopes = None, None, frozenset()
        self.closing = asyncio.ensure_future(self.ws.close(code=1008, message=b"key_revoked"))

    async def handle(self, data: str, req: Request | None = None) -> None:
        op: str | None = None
        rid: Any = None
        try:
            req = req or _request.decode(data)
            op, rid = req.op, req.id
            if not self.limiter.allow("ws", time.monotonic()):
                raise WsError("rate_limited", "too many requests on this connection")
            handler = _OPS.get(req.op)
            if handler is None:
                raise WsError("unknown_op", f"op must be one of {', '.join([*_OPS, *_ORDER_OPS])}")
            result = await handler(self, req.args)
            self.send({"op": op, "id": rid, "ok": True, "result": result})
            if op == "subscribe":
                for frame in self._pending_snapshots:
                    self.box.put("_snapshot", frame)
                self._pending_snapshots = []
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.fail(op, rid, "invalid_request", str(exc))
        except (WsError, ApiError) as exc:
            self.fail(op, rid, exc.code, exc.message)

    # ------------------------------------------------------------ ops

    async def op_ping(self, args: msgspec.Raw) -> Any:
        return {"pong": True, "seqs": self.hub.seqs(self.box)}

    async def op_login(self, raw: msgspec.Raw) -> Any:
        args = msgspec.json.decode(raw)
        key = args.get("api_key") if isinstance(args, dict) else None
        if not isinstance(key, str):
            raise WsError("invalid_request", "login takes {\"api_key\": \"...\"}")
        try:
            who = self.services.keys.known(key) or await look_up_key(self.services, key, self.remote)
        except KeyLookupsSpent as spent:
            raise WsError("rate_limited", str(spent)) from None
        if who is None:
            raise WsError("unauthenticated", "the API key is not valid")
        if who.role not in TRADING_ROLES:
            raise WsError("forbidden", f"the {who.role.value} role has no trading account")
        if self.key_id != who.key_id:
            if self.per_key.get(who.key_id, 0) >= MAX_CONNECTIONS_PER_KEY:
                raise WsError("too_many_connections", f"at most {MAX_CONNECTIONS_PER_KEY} sockets per key")
            self.logout()
            self.per_key[who.key_id] = self.per_key.get(who.key_id, 0) + 1
            self.hub.logged_in.setdefault(who.key_id, set()).add(self)
        self.key_id, self.role, self.scopes = who.key_id, who.role, who.scopes
        self.box.account_id = who.account_id
        self.principal = who
        return {"account_id": who.account_id}

    def logout(self) -> None:
        if self.key_id is not None:
            left = self.per_key.get(self.key_id, 1) - 1
            if left > 0:
                self.per_key[self.key_id] = left
            else:
                self.per_key.pop(self.key_id, None)
            sockets = self.hub.logged_in.get(self.key_id)
            if sockets is not None:
                sockets.discard(self)
                if not sockets:
                    del self.hub.logged_in[self.key_id]
            self.key_id = None

    async def op_subscribe(self, args: msgspec.Raw) -> Any:
        subs = _subscriptions.decode(args)
        if len({sub.channel for sub in subs}) != len(subs):  # each entry may cost a snapshot or a replay
            raise WsError("invalid_request", "name each channel once")
        frames: list[bytes] = []
        for sub in subs:
            if sub.channel not in PUBLIC and sub.channel not in PRIVATE:
                raise WsError("unknown_channel", f"channel must be one of {', '.join(PUBLIC + PRIVATE)}")
            if sub.channel in PRIVATE and self.box.account_id is None:
                raise WsError("login_required", "private channels need a login first")
            if len(self.box.channels | {sub.channel}) > MAX_SUBSCRIPTIONS:
                raise WsError("too_many_subscriptions", f"at most {MAX_SUBSCRIPTIONS} per connection")
        for sub in subs:
            frames += self.hub.subscribe(self.box, sub.channel, sub.resume_from)
        self._pending_snapshots = frames
        return [sub.channel for sub in subs]

    async def op_unsubscribe(self, args: msgspec.Raw) -> Any:
        subs = _subscriptions.decode(args)
        for sub in subs:
            self.hub.unsubscribe(self.box, sub.channel)
        return [sub.channel for sub in subs]

    def _trader(self) -> None:
        if self.box.account_id is None:
            raise WsError("login_required", "order entry needs a login first")
        if "trade" not in self.scopes:
            raise WsError("forbidden", "this key lacks the trade scope")

    def _engine_only(self) -> None:
        if getattr(self.services, "sequencer", None) is None:  # a feed gateway (exchange.gateway)
            raise WsError("not_supported_on_gateway", "order entry goes to the engine, not a feed gateway")

    def place_command(self, args: msgspec.Raw) -> m.PlaceOrder:
        self._engine_only()
        self._trader()
        req = _place.decode(args)
        return order_command(req, self.principal.account_id, self.services.market)

    def placed(self, cmd: m.PlaceOrder, events: list[m.Event]) -> Any:
        first = events[0]
        if isinstance(first, m.CommandRejected):
            raise rejection(R.UNKNOWN_ORDER if first.reason == R.NOT_OWNER else first.reason)
        return placed_order(events, self.services.market)  # encoded with the reply

    def cancel_command(self, raw: msgspec.Raw) -> m.CancelOrder:
        args = msgspec.json.decode(raw)
        self._engine_only()
        self._trader()
        order_id = args.get("order_id") if isinstance(args, dict) else None
        if not isinstance(order_id, int) or not 0 < order_id < 2**53:
            raise WsError("invalid_request", "cancel takes {\"order_id\": n}")
        if not is_own_open_order(self.services, self.principal.account_id, order_id):
            raise _NotOpen(order_id)  # which error (409 or 404, as REST) needs a read
        return m.CancelOrder(account_id=self.principal.account_id, order_id=order_id)

    def canceled(self, cmd: m.CancelOrder, events: list[m.Event]) -> Any:
        first = events[0]
        if isinstance(first, m.CommandRejected):
            if first.reason == R.UNKNOWN_ORDER:  # its own open order when checked: a fill won the race
                raise order_not_open()
            raise rejection(first.reason)
        return {"order_id": cmd.order_id, "status": "canceled"}


class _NotOpen(Exception):
    def __init__(self, order_id: int) -> None:
        self.order_id = order_id


_OPS = {
    "ping": _Connection.op_ping,
    "login": _Connection.op_login,
    "subscribe": _Connection.op_subscribe,
    "unsubscribe": _Connection.op_unsubscribe,
}
# order ops: (check and build the command, answer from its events); see `_Connection.order`
_ORDER_OPS: dict[str, tuple[Callable[[_Connection, msgspec.Raw], Any], _Finish]] = {
    "place": (_Connection.place_command, _Connection.placed),
    "cancel": (_Connection.cancel_command, _Connection.canceled),
}


REVOCATION_POLL_S = 1.0


async def watch_revocations(pool: asyncpg.Pool, hub: FeedHub) -> None:
    """Close the sockets logged in with a key once it is revoked, whichever process revoked it:
    one query a second for the whole process, however many sockets it holds."""
    since = None
    while True:
        try:
            if since is None:
                since = await pool.fetchval("SELECT now()")
            # A minute of overlap: a revocation that commits late (its revoked_at older than ones
            # already seen) is still found; one seen twice finds no socket the second time.
            rows = await pool.fetch("SELECT key_id, revoked_at FROM api_keys"
                                    " WHERE revoked_at > $1::timestamptz - interval '1 minute' ORDER BY revoked_at", since)
            for row in rows:
                since = max(since, row["revoked_at"])
                for conn in list(hub.logged_in.get(row["key_id"], ())):
                    conn.revoked()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("could not read revoked keys; will retry", extra={"error": repr(exc)})
        except Exception:  # a bug must not end the watch silently: revocations would stop arriving
            log.exception("reading revoked keys failed; will retry")
        await asyncio.sleep(REVOCATION_POLL_S)
