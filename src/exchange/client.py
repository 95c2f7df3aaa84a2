"""An async Python client of the exchange's REST API (aiohttp + msgspec).

    async with ExchangeClient("http://127.0.0.1:8080", api_key) as ex:
        order = await ex.place_order("buy", "1.00", "100.00", client_order_id="bot-1")

Responses are decoded into the Structs of :mod:`exchange.schemas`. Amounts go on the wire as
decimal strings: pass ``str``, ``int`` or ``decimal.Decimal``; a ``float`` raises ``TypeError``.
An error answer raises :class:`ApiError`.

Retries are opt-in (``retries=N``) and only for idempotent requests: GETs, and POST/PATCH/DELETE
requests carrying a ``client_order_id`` or an ``Idempotency-Key``. They cover 503 answers and
connection errors (including timeouts), with capped, jittered exponential backoff; any other
request is sent exactly once. Every request is bounded by ``timeout_s`` and every response by
``max_response_bytes``. (aiohttp by itself resends a DELETE once when a kept-alive connection
turns out closed; that is switched off on the sessions this client creates, not on one passed in.)
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec
from multidict import CIMultiDict, CIMultiDictProxy

from . import schemas as s
from .client_economy import Amount, EconomyCalls, amount_text
from .core.units import OrderType, Side, Stp, TimeInForce

__all__ = ["Amount", "ApiError", "BookOutOfSync", "ExchangeClient", "FeedClient", "FeedDisconnected",
           "FeedRequestError", "LocalBook", "ResponseTooLarge", "RetryPolicy", "amount_text"]

T = TypeVar("T")
SideArg = Side | Literal["buy", "sell"]
TypeArg = OrderType | Literal["limit", "market"]
TifArg = TimeInForce | Literal["GTC", "IOC", "FOK"]
StpArg = Stp | Literal["expire_taker", "expire_maker", "expire_both", "none"]
TimeArg = str | int | datetime

_encoder = msgspec.json.Encoder()
_error_decoder = msgspec.json.Decoder(s.ErrorBody)
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
_RETRY_STATUSES = frozenset({503})
_CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError)


def _decoder(typ: Any) -> msgspec.json.Decoder[Any]:
    dec = _decoders.get(typ)
    if dec is None:
        dec = _decoders[typ] = msgspec.json.Decoder(typ)
    return dec



def order_body(side: SideArg, qty: Amount, price: Amount | None, type: TypeArg, time_in_force: TifArg,
               post_only: bool, stp: StpArg, client_order_id: str | None) -> dict[str, Any]:
    """The body of an order request, the same over REST and the websocket."""
    body: dict[str, Any] = {"side": str(side), "qty": amount_text(qty, "qty"), "type": str(type),
                            "time_in_force": str(time_in_force), "post_only": post_only, "stp": str(stp)}
    if price is not None:
        body["price"] = amount_text(price, "price")
    if client_order_id is not None:
        body["client_order_id"] = client_order_id
    return body

class ApiError(Exception):
    """An error answer: HTTP status, the stable error code, message, offending field, request id."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 request_id: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (field {field})" if field else ""))
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.request_id = request_id
        self.headers: Mapping[str, str] = headers if headers is not None else CIMultiDict()

    @property
    def retry_after_s(self) -> float | None:
        """The server's Retry-After in seconds, if it sent one."""
        raw = self.headers.get("Retry-After")
        try:
            return float(raw) if raw is not None else None
        except ValueError:
            return None


class ResponseTooLarge(Exception):
    """The answer is larger than ``max_response_bytes`` (not retried)."""


class RetryPolicy(msgspec.Struct, frozen=True):
    """How idempotent requests are retried: attempts after the first, and capped backoff."""

    retries: int = 0
    backoff_s: float = 0.05  # the first delay; doubled per attempt, with jitter in [50%, 100%]
    max_backoff_s: float = 2.0  # caps each delay, Retry-After included

    def delay(self, attempt: int, retry_after: float | None) -> float:
        base = min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            base = max(base, retry_after)
        return min(base, self.max_backoff_s)


def _time_text(value: TimeArg, name: str) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name} needs a time zone")
        return value.isoformat()
    if isinstance(value, bool):
        raise TypeError(f"{name} must be RFC 3339 text, unix seconds or a datetime")
    return str(value)


class ExchangeClient(EconomyCalls):
    """One API key's view of the exchange. Use as ``async with``; ``with_key`` shares the session."""

    def __init__(self, base_url: str, api_key: str | None = None, *, session: aiohttp.ClientSession | None = None,
                 timeout_s: float = 10, retries: int | RetryPolicy = 0, connections: int = 100,
                 max_response_bytes: int = 16 * 1024 * 1024) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.retry = retries if isinstance(retries, RetryPolicy) else RetryPolicy(retries=retries)
        self.connections = connections
        self.max_response_bytes = max_response_bytes
        self._session = session
        self._owns_session = session is None

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ExchangeClient:
        self._ensure_session()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this client created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    def with_key(self, api_key: str | None) -> ExchangeClient:
        """Another key on the same session (closing it leaves the session to this client)."""
        other = ExchangeClient(self.base_url, api_key, session=self._ensure_session(),
                               timeout_s=self.timeout.total or 10, retries=self.retry,
                               max_response_bytes=self.max_response_bytes)
        return other

    def stream(self, **kwargs: Any) -> FeedClient:
        """A websocket :class:`FeedClient` on this client's URL and key (use ``async with``)."""
        return FeedClient(self.base_url, self.api_key, **kwargs)

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if not self._owns_session:
                raise RuntimeError("the shared session is closed")
            connector = aiohttp.TCPConnector(limit=self.connections, limit_per_host=self.connections)
            session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
            # aiohttp silently resends a DELETE once when a kept-alive connection turns out closed;
            # a cancel may then have happened and its repeat answer 404. Retries are ours to decide.
            if hasattr(session, "_retry_connection"):
                session._retry_connection = False
            self._session = session
        return self._session

    # ------------------------------------------------------------ transport

    async def _call(self, method: str, path: str, typ: type[T], *, body: Any = None,
                    params: Mapping[str, str | int | None] | None = None, idempotent: bool | None = None,
                    idempotency_key: str | None = None, ok: Sequence[int] = ()) -> T:
        """One logical request (one request id) with the retry policy; decodes a 2xx body as ``typ``."""
        session = self._ensure_session()
        url = self.base_url + path
        headers = {"Accept": "application/json", "X-Request-Id": uuid.uuid4().hex}
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        data = None
        if body is not None:
            data = _encoder.encode(body)
            headers["Content-Type"] = "application/json"
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        if idempotent is None:
            idempotent = method == "GET" or idempotency_key is not None
        attempts = 1 + (self.retry.retries if idempotent else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                async with session.request(method, url, data=data, params=query, headers=headers,
                                           timeout=self.timeout) as resp:
                    raw = await self._read(resp)
                    status, resp_headers = resp.status, CIMultiDict(resp.headers)
            except _CONNECTION_ERRORS:
                if last:
                    raise
                await asyncio.sleep(self.retry.delay(attempt, None))
                continue
            if 200 <= status < 300 or status in ok:
                result: T = _decoder(typ).decode(raw)
                return result
            error = _api_error(status, raw, resp_headers, headers["X-Request-Id"])
            if last or status not in _RETRY_STATUSES:
                raise error
            await asyncio.sleep(self.retry.delay(attempt, error.retry_after_s))
        raise AssertionError("unreachable")

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self.max_response_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise ResponseTooLarge(f"response of {resp.content_length} bytes exceeds {limit}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(65536):
            size += len(chunk)
            if size > limit:
                raise ResponseTooLarge(f"response exceeds {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # ------------------------------------------------------------ market data (public)

    async def market(self) -> s.MarketInfo:
        """The market's configuration and status."""
        return await self._call("GET", "/v1/market", s.MarketInfo)

    async def book(self, depth: int | None = None) -> s.BookSnapshot:
        """The committed L2 book, ``depth`` levels per side (server default 50)."""
        return await self._call("GET", "/v1/book", s.BookSnapshot,
                                params={"depth": depth})

    async def trades(self, limit: int | None = None, before: int | None = None) -> s.Page[s.Trade]:
        """Recent trades, newest first."""
        return await self._call("GET", "/v1/trades", s.Page[s.Trade],
                                params={"limit": limit, "before": before})

    async def ticker(self) -> s.Ticker:
        """Last price, best bid/ask and 24 h statistics."""
        return await self._call("GET", "/v1/ticker", s.Ticker)

    async def candles(self, interval: Literal["1m", "1h", "1d"] = "1h", from_: TimeArg | None = None,
                      to: TimeArg | None = None) -> list[s.Candle]:
        """OHLCV candles; times as RFC 3339 text, unix seconds or aware datetimes."""
        params: dict[str, str | int | None] = {"interval": interval}
        if from_ is not None:
            params["from"] = _time_text(from_, "from_")
        if to is not None:
            params["to"] = _time_text(to, "to")
        return await self._call("GET", "/v1/candles", list[s.Candle], params=params)

    # ------------------------------------------------------------ trading and wallet

    async def place_order(self, side: SideArg, qty: Amount, price: Amount | None = None, type: TypeArg = "limit",
                          time_in_force: TifArg = "GTC", post_only: bool = False, stp: StpArg = "expire_taker",
                          client_order_id: str | None = None) -> s.Order:
        """Place an order; with a ``client_order_id`` a repeat returns the original order (retryable)."""
        body = order_body(side, qty, price, type, time_in_force, post_only, stp, client_order_id)
        return await self._call("POST", "/v1/orders", s.Order, body=body,
                                idempotent=client_order_id is not None)

    async def get_order(self, order_id: int) -> s.Order:
        """An own order by id."""
        return await self._call("GET", f"/v1/orders/{int(order_id)}", s.Order)

    async def get_order_by_client_id(self, client_order_id: str) -> s.Order:
        """An own order by its client_order_id."""
        path = f"/v1/orders/by-client-id/{quote(client_order_id, safe='')}"
        return await self._call("GET", path, s.Order)

    async def orders(self, status: Literal["open", "closed", "all"] | None = None, limit: int | None = None,
                     before: int | None = None) -> s.Page[s.Order]:
        """Own orders, newest first (server default: open)."""
        return await self._call("GET", "/v1/orders", s.Page[s.Order],
                                params={"status": status, "limit": limit, "before": before})

    async def cancel_order(self, order_id: int) -> s.Order:
        """Cancel an own open order; returns it as canceled."""
        return await self._call("DELETE", f"/v1/orders/{int(order_id)}", s.Order)

    async def cancel_all(self) -> s.CancelAllResult:
        """Cancel all own open orders."""
        return await self._call("DELETE", "/v1/orders", s.CancelAllResult)

    async def reduce_order(self, order_id: int, qty: Amount) -> s.Order:
        """Reduce an own order's open quantity to ``qty``, keeping its queue priority."""
        return await self._call("PATCH", f"/v1/orders/{int(order_id)}", s.Order,
                                body={"qty": amount_text(qty, "qty")})

    async def fills(self, limit: int | None = None, before: int | None = None) -> s.Page[s.Fill]:
        """Own fills, newest first."""
        return await self._call("GET", "/v1/fills", s.Page[s.Fill],
                                params={"limit": limit, "before": before})

    async def balances(self) -> list[s.Balance]:
        """Own balances (available, held, total) per asset."""
        return await self._call("GET", "/v1/balances", list[s.Balance])

    async def ledger(self, limit: int | None = None, before: int | None = None) -> s.Page[s.LedgerEntry]:
        """Own statement, newest first."""
        return await self._call("GET", "/v1/ledger", s.Page[s.LedgerEntry],
                                params={"limit": limit, "before": before})

    # ------------------------------------------------------------ operator (admin key)

    async def create_account(self, role: Literal["user", "merchant", "desk", "admin"], name: str,
                             idempotency_key: str | None = None) -> s.Account:
        """Open an account (retryable with an ``idempotency_key``)."""
        return await self._call("POST", "/v1/admin/accounts", s.Account,
                                body={"role": role, "name": name}, idempotency_key=idempotency_key)

    async def account(self, account_id: int) -> s.Account:
        """An account with its balances."""
        return await self._call("GET", f"/v1/admin/accounts/{int(account_id)}",
                                s.Account)

    async def create_key(self, account_id: int, scopes: Sequence[Literal["read", "trade"]] = ("read", "trade"),
                         label: str = "") -> s.CreatedKey:
        """A new API key for the account (the secret is shown only here)."""
        return await self._call("POST", f"/v1/admin/accounts/{int(account_id)}/keys",
                                s.CreatedKey, body={"scopes": list(scopes), "label": label})

    async def keys(self, account_id: int) -> list[s.ApiKey]:
        """The account's keys (never the secrets)."""
        return await self._call("GET", f"/v1/admin/accounts/{int(account_id)}/keys",
                                list[s.ApiKey])

    async def revoke_keys(self, account_id: int, key_id: str | None = None) -> s.Revoked:
        """Revoke one key of the account, or all of them."""
        path = f"/v1/admin/accounts/{int(account_id)}/keys"
        if key_id is not None:
            path += f"/{quote(key_id, safe='')}"
        return await self._call("DELETE", path, s.Revoked)

    async def move_cash(self, account_id: int, amount: Amount, direction: Literal["deposit", "withdrawal"],
                        idempotency_key: str | None = None) -> s.CashMovement:
        """Deposit or withdraw an account's CNY (retryable with an ``idempotency_key``)."""
        body = {"account_id": int(account_id), "amount": amount_text(amount), "direction": direction}
        return await self._call("POST", "/v1/admin/cash", s.CashMovement,
                                body=body, idempotency_key=idempotency_key)

    async def halt(self) -> s.Halt:
        """Halt matching (cancels stay allowed)."""
        return await self._call("POST", "/v1/admin/halt", s.Halt, body={})

    async def resume(self) -> s.Halt:
        """Resume matching."""
        return await self._call("POST", "/v1/admin/resume", s.Halt, body={})

    # ------------------------------------------------------------ operations

    async def health(self) -> s.Health:
        """Liveness."""
        return await self._call("GET", "/healthz", s.Health)

    async def ready(self) -> s.Health:
        """Readiness; a not-ready service (503) is an answer here, not an error, and is not retried."""
        return await self._call("GET", "/readyz", s.Health, ok=(503,))


def _api_error(status: int, raw: bytes, headers: CIMultiDict[str], request_id: str) -> ApiError:
    """The error body as an ApiError; a body that is not the API's error shape keeps its text."""
    view = CIMultiDictProxy(headers)
    try:
        err = _error_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        text = raw[:200].decode("utf-8", "replace")
        return ApiError(status, "http_error", text or f"HTTP {status}", None,
                        headers.get("X-Request-Id", request_id), view)
    return ApiError(status, err.error.code, err.error.message, err.error.field, err.request_id, view)


# ================================================================ the websocket side (/v1/ws)
#
#     async with FeedClient("http://127.0.0.1:8080", api_key) as feed:
#         await feed.subscribe(["book", "trades"])
#         async for msg in feed:          # raises FeedDisconnected when the socket goes away
#             ...                         # feed.book is kept in step (seq + checksum checked)
#
# `ExchangeClient.stream()` opens one on the client's URL and key.


class FeedDisconnected(Exception):
    """The socket closed or went silent; ``code`` is the close code (1013: slow consumer), if any.

    Raised by the message iterator, and by requests that were waiting for an acknowledgement
    (a ``place`` in flight may or may not have been committed: look it up by client_order_id)."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(f"feed disconnected: {reason}" + (f" (close code {code})" if code is not None else ""))
        self.reason = reason
        self.code = code


class FeedRequestError(ApiError):
    """A request over the socket was refused (``{"ok": false, "error": {...}}``); status is 0."""

    def __init__(self, op: str | None, code: str, message: str) -> None:
        super().__init__(0, code, message)
        self.op = op


class BookOutOfSync(Exception):
    """The local book cannot take this message: a gap in ``seq`` or a checksum mismatch."""

    def __init__(self, kind: Literal["gap", "checksum"], detail: str) -> None:
        super().__init__(f"book {kind}: {detail}")
        self.kind = kind


def _is_zero(qty: str) -> bool:
    return Decimal(qty) == 0  # "0", "0.00": a removed level


class LocalBook:
    """The L2 book rebuilt from a ``book`` snapshot and its updates (absolute level quantities).

    ``apply`` checks that each update follows the last (``prev_seq == seq``) and that the
    CRC32 of the top ``checksum_levels`` levels matches the server's; it raises
    :class:`BookOutOfSync` otherwise and leaves ``seq`` at the last good message."""

    def __init__(self, checksum_levels: int = 25) -> None:
        from sortedcontainers import SortedDict
        self.checksum_levels = checksum_levels
        self.seq: int | None = None  # None until a snapshot arrived
        self.engine_seq: int | None = None
        self.valid = False
        self._bids: SortedDict = SortedDict()  # -price -> (price text, qty text)
        self._asks: SortedDict = SortedDict()  # price -> (price text, qty text)

    def reset(self, snapshot: Mapping[str, Any]) -> None:
        """Start again from a snapshot; raises BookOutOfSync when its checksum does not match."""
        if snapshot.get("type") != "snapshot":
            raise ValueError("reset takes a book snapshot")
        self._bids.clear()
        self._asks.clear()
        self._levels(snapshot)
        self.seq, self.engine_seq = int(snapshot["seq"]), snapshot.get("engine_seq")
        self.valid = False
        self._check(snapshot)
        self.valid = True

    def apply(self, update: Mapping[str, Any]) -> None:
        """Apply one update (a snapshot resets)."""
        if update.get("type") == "snapshot":
            self.reset(update)
            return
        if self.seq is None or not self.valid:
            raise BookOutOfSync("gap", "no valid snapshot yet")
        if update.get("prev_seq") != self.seq:
            raise BookOutOfSync("gap", f"expected prev_seq {self.seq}, got {update.get('prev_seq')}")
        self._levels(update)
        self.seq, self.engine_seq = int(update["seq"]), update.get("engine_seq", self.engine_seq)
        self._check(update)

    def _levels(self, msg: Mapping[str, Any]) -> None:
        for side, levels, sign in ((self._bids, msg.get("bids", ()), -1), (self._asks, msg.get("asks", ()), 1)):
            for price, qty in levels:
                key = sign * Decimal(price)
                if _is_zero(qty):
                    side.pop(key, None)
                else:
                    side[key] = (price, qty)

    def _check(self, msg: Mapping[str, Any]) -> None:
        expected = msg.get("checksum")
        if expected is not None and self.checksum() != expected:
            self.valid = False
            raise BookOutOfSync("checksum", f"local {self.checksum()} != server {expected} at seq {msg.get('seq')}")

    def checksum(self) -> int:
        n = self.checksum_levels
        parts = [f"{p}:{q}" for p, q in self._asks.values()[:n]]
        parts += [f"{p}:{q}" for p, q in self._bids.values()[:n]]
        return zlib.crc32(":".join(parts).encode())

    def levels(self, depth: int | None = None) -> tuple[list[list[str]], list[list[str]]]:
        """(bids best first, asks best first) as ``[price, qty]`` text pairs, like GET /v1/book."""
        bids = [list(v) for v in self._bids.values()[:depth]]
        asks = [list(v) for v in self._asks.values()[:depth]]
        return bids, asks

    def best(self) -> tuple[str | None, str | None]:
        bid = self._bids.peekitem(0)[1][0] if self._bids else None
        ask = self._asks.peekitem(0)[1][0] if self._asks else None
        return bid, ask


_ws_decode = msgspec.json.Decoder().decode
_DONE = object()


class FeedClient:
    """One ``/v1/ws`` socket: requests acknowledged by id, pushes as an async iterator,
    and a :class:`LocalBook` kept in step while subscribed to ``book``.

    * Requests (``subscribe``, ``login``, ``place``, ``cancel``, ``ping``) wait at most
      ``timeout_s`` for their acknowledgement; a refusal raises :class:`FeedRequestError`.
      ``send(op, args)`` returns the acknowledgement's future without waiting (pipelining).
    * A book gap (``prev_seq``, or a heartbeat's seq ahead of ours) resubscribes with
      ``resume_from`` = the last good seq; a checksum mismatch takes a fresh snapshot. Book
      messages are dropped until the resubscription is acknowledged. Each resync is also
      pushed to the iterator as ``{"type": "resync", "reason": ..., "from_seq": ...}`` and
      counted in ``stats``.
    * A socket that closes, errors or is silent for ``idle_timeout_s`` (the server sends a
      heartbeat every second) raises :class:`FeedDisconnected` from the iterator and from
      pending requests; with ``reconnect=N`` it is reopened instead (up to N times in a row,
      with backoff), logged in and resubscribed from the last seqs, and the iterator yields
      ``{"type": "reconnected", "attempt": n, "code": ..., "reason": ...}``.
    * Pushes are queued up to ``queue_limit`` messages; past that the reader waits for the
      consumer (the server then treats the socket as slow). Heartbeats are yielded only with
      ``heartbeats=True``.
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, session: aiohttp.ClientSession | None = None,
                 timeout_s: float = 10, idle_timeout_s: float = 5, reconnect: int = 0, local_book: bool = True,
                 heartbeats: bool = False, queue_limit: int = 100_000) -> None:
        if timeout_s <= 0 or idle_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        self.url = base_url.rstrip("/") + "/v1/ws"
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.reconnect = reconnect
        self.yield_heartbeats = heartbeats
        self.book: LocalBook | None = LocalBook() if local_book else None
        self.stats: dict[str, int] = {"messages": 0, "gaps": 0, "checksum_mismatches": 0, "resyncs": 0,
                                      "snapshots": 0, "reconnects": 0}
        self.drop_filter: Callable[[dict[str, Any]], bool] | None = None  # test hook: True drops a push
        self._session = session
        self._owns_session = session is None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[Any] = asyncio.Queue(queue_limit)
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._ids = 0
        self._logged_in = False
        self._channels: dict[str, int | None] = {}  # subscribed channel -> last seq seen
        self._resync_id: str | None = None
        self._closing = False
        self._failure: FeedDisconnected | None = None
        self._end: Any = None  # what ended the iterator: _DONE or the FeedDisconnected

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FeedClient:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def connect(self) -> None:
        if self._session is None or self._session.closed:
            if not self._owns_session:
                raise RuntimeError("the shared session is closed")
            self._session = aiohttp.ClientSession()
        await self._open()
        self._reader = asyncio.create_task(self._read_loop(), name="feed-reader")

    async def _open(self) -> None:
        assert self._session is not None
        self._ws = await asyncio.wait_for(self._session.ws_connect(
            self.url, timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self.timeout_s),
            autoping=True, max_msg_size=64 * 1024 * 1024), self.timeout_s)
        self._failure = None

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), self.timeout_s)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self._fail_pending(FeedDisconnected("closed by the client"))
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    @property
    def closed(self) -> bool:
        return self._ws is None or self._ws.closed

    # ------------------------------------------------------------ requests

    async def send(self, op: str, args: Any = None) -> asyncio.Future[Any]:
        """Send a request now; the future resolves to its ``result`` or raises FeedRequestError /
        FeedDisconnected. Bound the wait yourself (``request`` does)."""
        if self._failure is not None:
            raise self._failure
        if self._ws is None or self._ws.closed:
            raise FeedDisconnected("not connected")
        self._ids += 1
        rid = f"c{self._ids}"
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        fut.add_done_callback(lambda _f, rid=rid: self._pending.pop(rid, None))  # type: ignore[misc]
        try:
            await self._send({"op": op, "id": rid, "args": args})
        except BaseException:
            fut.cancel()
            raise
        return fut

    async def _send(self, body: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise FeedDisconnected("not connected")
        try:
            await asyncio.wait_for(ws.send_str(_encoder.encode(body).decode()), self.timeout_s)
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise FeedDisconnected(f"send failed: {exc!r}") from exc

    async def request(self, op: str, args: Any = None, timeout_s: float | None = None) -> Any:
        fut = await self.send(op, args)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout_s or self.timeout_s)
        except TimeoutError:
            fut.cancel()
            raise

    async def login(self, api_key: str | None = None) -> dict[str, Any]:
        key = api_key or self.api_key
        if key is None:
            raise ValueError("login needs an API key")
        result: dict[str, Any] = await self.request("login", {"api_key": key})
        self.api_key, self._logged_in = key, True
        return result

    async def subscribe(self, channels: Sequence[str], resume_from: int | Mapping[str, int] | None = None) -> list[str]:
        """Subscribe; ``resume_from`` (one seq, or per channel) replays what was missed."""
        args = []
        for ch in channels:
            start = resume_from.get(ch) if isinstance(resume_from, Mapping) else resume_from
            args.append({"channel": ch} | ({"resume_from": start} if start is not None else {}))
            self._channels.setdefault(ch, start)
        result: list[str] = await self.request("subscribe", args)
        return result

    async def unsubscribe(self, channels: Sequence[str]) -> list[str]:
        result: list[str] = await self.request("unsubscribe", [{"channel": ch} for ch in channels])
        for ch in channels:
            self._channels.pop(ch, None)
        return result

    async def ping(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("ping")
        return result

    def place_args(self, side: SideArg, qty: Amount, price: Amount | None = None, type: TypeArg = "limit",
                   time_in_force: TifArg = "GTC", post_only: bool = False, stp: StpArg = "expire_taker",
                   client_order_id: str | None = None) -> dict[str, Any]:
        return order_body(side, qty, price, type, time_in_force, post_only, stp, client_order_id)

    async def place(self, side: SideArg, qty: Amount, price: Amount | None = None, type: TypeArg = "limit",
                    time_in_force: TifArg = "GTC", post_only: bool = False, stp: StpArg = "expire_taker",
                    client_order_id: str | None = None) -> s.Order:
        """Place an order over the socket (acknowledged after COMMIT)."""
        body = self.place_args(side, qty, price, type, time_in_force, post_only, stp, client_order_id)
        order: s.Order = msgspec.convert(await self.request("place", body), s.Order, strict=False)
        return order

    async def cancel(self, order_id: int) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("cancel", {"order_id": int(order_id)})
        return result

    # ------------------------------------------------------------ pushes

    def __aiter__(self) -> FeedClient:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._end is not None and self._queue.empty():
            if isinstance(self._end, BaseException):
                raise self._end
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._end = item
            raise item
        if item is _DONE:
            self._end = item
            raise StopAsyncIteration
        msg: dict[str, Any] = item
        return msg

    async def next(self, timeout_s: float | None = None) -> dict[str, Any]:
        """The next message, waiting at most ``timeout_s`` (default ``timeout_s``)."""
        return await asyncio.wait_for(self.__anext__(), timeout_s or self.timeout_s)

    async def _push(self, item: Any) -> None:
        await self._queue.put(item)

    # ------------------------------------------------------------ the reader

    async def _read_loop(self) -> None:
        attempts = 0
        while True:
            reason, code = await self._read_socket()
            if self._closing:
                await self._push(_DONE)
                return
            failure = FeedDisconnected(reason, code)
            self._fail_pending(failure)
            if attempts >= self.reconnect:
                self._failure = failure
                await self._push(failure)
                return
            attempts += 1
            try:
                await asyncio.sleep(min(2.0, 0.05 * 2 ** attempts) * random.uniform(0.5, 1.0))
                await asyncio.wait_for(self._open(), self.timeout_s)
                resumed = asyncio.ensure_future(self._resume())
                # the acks arrive through this loop: read while resuming
                self.stats["reconnects"] += 1
                await self._push({"type": "reconnected", "attempt": attempts, "code": code, "reason": reason})
                resumed.add_done_callback(_consume_exception)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self._ws = None
                if attempts >= self.reconnect:
                    failure = FeedDisconnected(f"{reason}; reconnect failed: {exc!r}", code)
                    self._failure = failure
                    await self._push(failure)
                    return

    async def _resume(self) -> None:
        if self._logged_in and self.api_key is not None:
            await self.request("login", {"api_key": self.api_key})
        if self._channels:
            args = []
            for ch, last in self._channels.items():
                if ch == "book" and self.book is not None:
                    last = self.book.seq if self.book.valid else None
                args.append({"channel": ch} | ({"resume_from": last} if last is not None else {}))
            await self.request("subscribe", args)

    async def _read_socket(self) -> tuple[str, int | None]:
        ws = self._ws
        if ws is None:
            return "not connected", None
        while True:
            try:
                msg = await ws.receive(timeout=self.idle_timeout_s)
            except TimeoutError:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 1)
                return f"no message for {self.idle_timeout_s} s", None
            if msg.type is aiohttp.WSMsgType.TEXT or msg.type is aiohttp.WSMsgType.BINARY:
                await self._dispatch(_ws_decode(msg.data))
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                reason = msg.extra if isinstance(msg.extra, str) and msg.extra else "closed by the server"
                return reason, ws.close_code
            elif msg.type is aiohttp.WSMsgType.ERROR:
                return f"socket error: {ws.exception()!r}", ws.close_code

    async def _dispatch(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            return
        if "ok" in msg and "op" in msg:
            self._acknowledged(msg)
            return
        self.stats["messages"] += 1
        if self.drop_filter is not None and self.drop_filter(msg):
            return
        ch = msg.get("ch")
        if msg.get("type") == "heartbeat":
            self._heartbeat(msg)
            if self.yield_heartbeats:
                await self._push(msg)
            return
        if ch == "book" and self.book is not None:
            if self._resync_id is not None:
                return  # stale until the resubscription is acknowledged
            if msg.get("type") == "snapshot":
                self.stats["snapshots"] += 1
            try:
                self.book.apply(msg)
            except BookOutOfSync as exc:
                await self._resync(exc.kind, str(exc))
                return
        if isinstance(ch, str) and "seq" in msg and ch in self._channels:
            self._channels[ch] = msg["seq"]
        await self._push(msg)

    def _heartbeat(self, msg: dict[str, Any]) -> None:
        seqs = msg.get("seqs") or {}
        book = self.book
        if (book is not None and book.valid and book.seq is not None and self._resync_id is None
                and isinstance(seqs.get("book"), int) and seqs["book"] > book.seq):
            # the socket was idle yet the server is ahead: the last update(s) went missing
            task = asyncio.ensure_future(self._resync("gap", f"heartbeat at {seqs['book']}, book at {book.seq}"))
            task.add_done_callback(_consume_exception)

    async def _resync(self, kind: str, detail: str) -> None:
        assert self.book is not None
        self.stats["gaps" if kind == "gap" else "checksum_mismatches"] += 1
        self.stats["resyncs"] += 1
        last = self.book.seq if kind == "gap" and self.book.valid else None
        args = [{"channel": "book"} | ({"resume_from": last} if last is not None else {})]
        self._ids += 1
        rid = f"resync{self._ids}"
        self._resync_id = rid
        try:
            await self._send({"op": "subscribe", "id": rid, "args": args})
        except FeedDisconnected:
            self._resync_id = None  # the reader sees the close next
            return
        await self._push({"type": "resync", "ch": "book", "reason": kind, "detail": detail, "from_seq": last})

    def _acknowledged(self, msg: dict[str, Any]) -> None:
        rid = msg.get("id")
        if rid is not None and rid == self._resync_id:
            self._resync_id = None
            if not msg.get("ok"):  # try again with a fresh snapshot on the next book message
                assert self.book is not None
                self.book.valid = False
            return
        fut = self._pending.pop(str(rid), None) if rid is not None else None
        if fut is None or fut.done():
            return
        if msg.get("ok"):
            fut.set_result(msg.get("result"))
        else:
            err = msg.get("error") or {}
            fut.set_exception(FeedRequestError(msg.get("op"), str(err.get("code", "error")),
                                               str(err.get("message", ""))))

    def _fail_pending(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._resync_id = None


def _consume_exception(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()




def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on `host` (for a process about to be started on it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def wait_ready(base_url: str, *, timeout_s: float = 20.0, alive: Callable[[], bool] | None = None) -> None:
    """Poll `GET /readyz` until it answers 200 (a service or gateway just started).

    `alive` tells whether the process being waited for still runs: a process that exited fails
    at once instead of after the timeout.
    """
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                raise RuntimeError(f"the process behind {base_url} exited before it was ready")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(base_url.rstrip("/") + "/readyz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{base_url} was not ready within {timeout_s} s")
