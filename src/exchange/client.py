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
import random
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec
from multidict import CIMultiDict, CIMultiDictProxy

from . import schemas as s
from .core.units import OrderType, Side, Stp, TimeInForce

__all__ = ["Amount", "ApiError", "ExchangeClient", "ResponseTooLarge", "RetryPolicy", "amount_text"]

T = TypeVar("T")
Amount = str | int | Decimal
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


def amount_text(value: Amount, name: str = "amount") -> str:
    """A decimal string for the wire; floats are refused (they are not exact)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | float):
        raise TypeError(f"{name} must be a str or decimal.Decimal, not {type(value).__name__}")
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{name} must be finite, not {value}")
        return format(value, "f")
    if isinstance(value, int):
        return str(value)
    raise TypeError(f"{name} must be a str or decimal.Decimal, not {type(value).__name__}")


def _time_text(value: TimeArg, name: str) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name} needs a time zone")
        return value.isoformat()
    if isinstance(value, bool):
        raise TypeError(f"{name} must be RFC 3339 text, unix seconds or a datetime")
    return str(value)


class ExchangeClient:
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
        body: dict[str, Any] = {"side": str(side), "qty": amount_text(qty, "qty"), "type": str(type),
                                "time_in_force": str(time_in_force), "post_only": post_only, "stp": str(stp)}
        if price is not None:
            body["price"] = amount_text(price, "price")
        if client_order_id is not None:
            body["client_order_id"] = client_order_id
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
