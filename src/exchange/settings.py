"""Service settings: defaults, then environment variables (EXCHANGE_*), then command-line flags."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .core.units import Market
from .economy_settings import check_economy
from .gcpolicy import FREEZE_EVERY
from .loop import LOOPS

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_PLACEHOLDERS = ("change-me", "changeme", "replace-me")  # the deploy examples' admin token text


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("var")
    database_url: str | None = None  # None: start the embedded PostgreSQL in data_dir
    admin_token: str | None = None  # when set, this exact key is the bootstrap admin key
    log_level: str = "INFO"
    event_loop: str = "uvloop"  # uvloop | asyncio (exchange.loop)
    # bounds
    max_body_bytes: int = 64 * 1024
    max_page: int = 1000
    max_queue: int = 10_000
    max_batch: int = 4_000
    snapshot_every: int = 200_000
    commit_interval_ms: float = 2.0  # under load, commits start at most this often (ADR 0015); 0: back to back
    gc_freeze_every: int = FREEZE_EVERY  # committed commands between gc.freeze() calls; 0: never (ADR 0013)
    # public feed messages (book, trades, ticker) cover the batches committed within one interval
    # of journal time; 0: one message set per batch. Engine and gateways must agree (ADR 0008).
    feed_interval_ms: int = 50
    read_pool_size: int = 8
    # rate limit per API key: a token bucket
    rate_limit_per_s: float = 200.0
    rate_limit_burst: int = 400
    public_rate_limit_per_s: float = 100.0  # per client address, for unauthenticated routes
    # Reverse proxies whose X-Forwarded-For names the client (e.g. nginx); empty: the peer is the client.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    max_sockets_per_address: int = 1_000  # websockets open at once from one client address
    # market
    market: Market = field(default_factory=Market)
    hb_cap_lots: int = 39_000_000
    demo: bool = False  # create funded demo accounts on start (local use only)
    # token economics (DOMAIN.md); the genesis ones are fixed by the first start
    genesis_date: str | None = None  # YYYY-MM-DD; None: the stored one, else the first start's local date
    genesis_price: str = "1.00"  # CNY per HB until anything circulates
    genesis_allocation: str = "0"  # HB minted to the desk at genesis, within the cap
    timezone: str = "Asia/Shanghai"  # must keep a fixed UTC offset (no daylight saving)
    fixing_time: str = "00:00"  # local time the scheduler runs the daily cycle
    fixing_policy: str = "backing"  # backing | vwap
    fixing_band_bps: int = 0  # 0: no daily move band; e.g. 1000 for ±10%
    consumer_multiplier: int = 10
    merchant_multiplier: int = 2
    cycle_slice: int = 1_000  # 嗨值 holders airdropped per engine step (bench/cycle.py chose it)
    scheduler: bool = True  # run the daily cycle at the fixing time (off: operators drive it)

    @property
    def embedded(self) -> bool:
        return self.database_url is None


def _networks(raw: str) -> tuple[IPNetwork, ...]:
    """Comma-separated addresses or networks: "127.0.0.1,::1" or "172.28.0.0/24"."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip())


def _on_off(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("on", "off", "true", "false", "1", "0"):
        raise ValueError(f"{raw!r} is not on or off")
    return value in ("on", "true", "1")


# name in Settings -> (environment variable, command-line flag, parser)
_SOURCES: dict[str, tuple[str, str, Any]] = {
    "host": ("EXCHANGE_HOST", "--host", str),
    "port": ("EXCHANGE_PORT", "--port", int),
    "data_dir": ("EXCHANGE_DATA_DIR", "--data-dir", Path),
    "database_url": ("EXCHANGE_DATABASE_URL", "--database-url", str),
    "admin_token": ("EXCHANGE_ADMIN_TOKEN", "--admin-token", str),
    "log_level": ("EXCHANGE_LOG_LEVEL", "--log-level", str.upper),
    "event_loop": ("EXCHANGE_EVENT_LOOP", "--event-loop", str.lower),
    "max_queue": ("EXCHANGE_MAX_QUEUE", "--max-queue", int),
    "max_batch": ("EXCHANGE_MAX_BATCH", "--max-batch", int),
    "snapshot_every": ("EXCHANGE_SNAPSHOT_EVERY", "--snapshot-every", int),
    "commit_interval_ms": ("EXCHANGE_COMMIT_INTERVAL_MS", "--commit-interval-ms", float),
    "gc_freeze_every": ("EXCHANGE_GC_FREEZE_EVERY", "--gc-freeze-every", int),
    "feed_interval_ms": ("EXCHANGE_FEED_INTERVAL_MS", "--feed-interval-ms", int),
    "read_pool_size": ("EXCHANGE_READ_POOL_SIZE", "--read-pool-size", int),
    "rate_limit_per_s": ("EXCHANGE_RATE_LIMIT_PER_S", "--rate-limit-per-s", float),
    "rate_limit_burst": ("EXCHANGE_RATE_LIMIT_BURST", "--rate-limit-burst", int),
    "public_rate_limit_per_s": ("EXCHANGE_PUBLIC_RATE_LIMIT_PER_S", "--public-rate-limit-per-s", float),
    "trusted_proxies": ("EXCHANGE_TRUSTED_PROXIES", "--trusted-proxies", _networks),
    "max_sockets_per_address": ("EXCHANGE_MAX_SOCKETS_PER_ADDRESS", "--max-sockets-per-address", int),
    "genesis_date": ("EXCHANGE_GENESIS_DATE", "--genesis-date", str),
    "genesis_price": ("EXCHANGE_GENESIS_PRICE", "--genesis-price", str),
    "genesis_allocation": ("EXCHANGE_GENESIS_ALLOCATION", "--genesis-allocation", str),
    "timezone": ("EXCHANGE_TIMEZONE", "--timezone", str),
    "fixing_time": ("EXCHANGE_FIXING_TIME", "--fixing-time", str),
    "fixing_policy": ("EXCHANGE_FIXING_POLICY", "--fixing-policy", str),
    "fixing_band_bps": ("EXCHANGE_FIXING_BAND_BPS", "--fixing-band-bps", int),
    "consumer_multiplier": ("EXCHANGE_CONSUMER_MULTIPLIER", "--consumer-multiplier", int),
    "merchant_multiplier": ("EXCHANGE_MERCHANT_MULTIPLIER", "--merchant-multiplier", int),
    "cycle_slice": ("EXCHANGE_CYCLE_SLICE", "--cycle-slice", int),
    "scheduler": ("EXCHANGE_SCHEDULER", "--scheduler", _on_off),
}
ENVIRONMENT_VARIABLES = tuple(env for env, _, _ in _SOURCES.values())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for name, (env, flag, _) in _SOURCES.items():
        parser.add_argument(flag, dest=name, default=None, help=f"(env {env})")
    parser.add_argument("--demo", action="store_true", help="create funded demo accounts on start")


def load(env: Mapping[str, str] | None = None, args: argparse.Namespace | None = None) -> Settings:
    """Defaults < environment < flags. Raises ValueError naming the bad setting."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, (var, flag, parse) in _SOURCES.items():
        raw = getattr(args, name, None) if args is not None else None
        source = flag
        if raw is None:
            raw, source = env.get(var), var
        if raw in (None, ""):
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc
    if args is not None and getattr(args, "demo", False):
        values["demo"] = True
    settings = replace(Settings(), **values)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    if not 0 <= s.port <= 65535:
        raise ValueError(f"port {s.port} is out of range")
    if s.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"log level {s.log_level} is not one of DEBUG, INFO, WARNING, ERROR")
    for name in ("max_queue", "max_batch", "read_pool_size", "rate_limit_burst", "max_sockets_per_address"):
        if getattr(s, name) <= 0:
            raise ValueError(f"{name} must be positive")
    if not 0 <= s.commit_interval_ms <= 100:
        raise ValueError("commit_interval_ms must be between 0 and 100")
    if s.gc_freeze_every < 0:
        raise ValueError("gc_freeze_every must be 0 (never) or positive")
    if s.event_loop not in LOOPS:
        raise ValueError(f"event loop must be one of {', '.join(LOOPS)}")
    if not 0 <= s.feed_interval_ms <= 1000:
        raise ValueError("feed_interval_ms must be between 0 and 1000")
    if s.admin_token is not None:
        if len(s.admin_token) < 24:
            raise ValueError("EXCHANGE_ADMIN_TOKEN must be at least 24 characters")
        if any(word in s.admin_token.lower().replace("_", "-") for word in _PLACEHOLDERS):
            raise ValueError("EXCHANGE_ADMIN_TOKEN is an example's placeholder: set a random one"
                             " (python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    check_economy(s)


def describe(s: Settings) -> dict[str, Any]:
    """Settings for logs: secrets masked."""
    out = {f.name: getattr(s, f.name) for f in fields(s) if f.name != "market"}
    out["admin_token"] = "***" if s.admin_token else None
    if s.database_url:
        out["database_url"] = _mask_url(s.database_url)
    out["data_dir"] = str(s.data_dir)
    out["trusted_proxies"] = [str(network) for network in s.trusted_proxies]
    return out


def _mask_url(url: str) -> str:
    """The URL with any password masked: in the user info (up to the last '@', as a raw password
    may hold '@', '/', '?' or '#') and in a `password` parameter."""
    url = _USERINFO_PASSWORD.sub(r"\1:***@", url)
    return _PASSWORD_PARAM.sub(r"\1***", url)


_USERINFO_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/?#@]*):.*@")  # to the last '@': over-masking is safe
_PASSWORD_PARAM = re.compile(r"((?:^|[?&\s])password\s*=\s*)[^&#\s]*", re.IGNORECASE)


def parse_flags(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="exchange serve")
    add_arguments(parser)
    return parser.parse_args(argv)
