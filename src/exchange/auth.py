"""API keys and the principal a request acts as.

A key reads `hb_<key_id>_<secret>`: the key id is public and indexed, the secret is
256 random bits of which only a SHA-256 hash is stored (a slow password hash adds
nothing for secrets this long). The account, and so the role, always come from the
key. The bootstrap admin token from EXCHANGE_ADMIN_TOKEN is stored the same way under
the fixed key id `env-admin`, so changing the variable rotates it, and unsetting it revokes
it at the next start (while it is set, each start installs it again).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

import asyncpg

from .core.units import Role

SCOPES = ("read", "trade")
ENV_ADMIN_KEY_ID = "env-admin"
CACHE_SECONDS = 5.0  # revocations by another process take effect within this
MAX_CACHED_KEYS = 100_000
MAX_CACHED_MISSES = 10_000
_KEY_ID = re.compile(r"[0-9a-f]{16}")  # secrets.token_hex(8), as new_key makes them
_PREFIX = "hb_"


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    account_id: int
    role: Role
    scopes: frozenset[str]


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _check(entry: tuple[float, bytes, Principal | None], secret: str) -> Principal | None:
    _, stored, principal = entry
    # Constant time: the comparison must not tell how much of a secret was right.
    if principal is None or not hmac.compare_digest(stored, _hash(secret)):
        return None
    return principal


def new_key() -> tuple[str, str, bytes]:
    """(key id, the full key to show once, the hash to store)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{_PREFIX}{key_id}_{secret}", _hash(secret)


def split_key(token: str) -> tuple[str, str]:
    """(key id, secret); the env admin token is any string that is not in the key format."""
    if token.startswith(_PREFIX) and token.count("_") >= 2:
        key_id, _, secret = token[len(_PREFIX):].partition("_")
        return key_id, secret
    return ENV_ADMIN_KEY_ID, token


class KeyStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        # Keys that exist, and apart from them the key ids that do not: made-up ids can push
        # only each other out of their bounded cache, never a real key.
        self._cache: dict[str, tuple[float, bytes, Principal | None]] = {}
        self._misses: OrderedDict[str, tuple[float, bytes, Principal | None]] = OrderedDict()

    async def authenticate(self, token: str) -> Principal | None:
        if not token or len(token) > 200:
            return None
        key_id, secret = split_key(token)
        if key_id != ENV_ADMIN_KEY_ID and not _KEY_ID.fullmatch(key_id):
            return None  # not an id this store ever made: no lookup
        return _check(await self._lookup(key_id), secret)

    def known(self, token: str) -> Principal | None:
        """The principal when the key is cached, in force and the secret right; None when that
        takes a lookup (or the key is wrong): the fast path of every request, no await."""
        if len(token) > 200:
            return None
        key_id, secret = split_key(token)
        cached = self._cache.get(key_id)
        if cached is None or cached[0] < time.monotonic():
            return None
        return _check(cached, secret)

    async def _lookup(self, key_id: str) -> tuple[float, bytes, Principal | None]:
        now = time.monotonic()
        cached = self._cache.get(key_id) or self._misses.get(key_id)
        if cached is None or cached[0] < now:
            row = await self.pool.fetchrow(
                "SELECT k.secret_hash, k.account_id, k.scopes, a.role FROM api_keys k"
                " JOIN accounts a USING (account_id) WHERE k.key_id = $1 AND k.revoked_at IS NULL", key_id)
            principal = None if row is None else Principal(
                key_id, row["account_id"], Role(row["role"]), frozenset(row["scopes"]))
            cached = (now + CACHE_SECONDS, row["secret_hash"] if row else b"", principal)
            self._remember(key_id, cached)
        return cached

    def _remember(self, key_id: str, entry: tuple[float, bytes, Principal | None]) -> None:
        if entry[2] is None:
            self._cache.pop(key_id, None)
            self._misses[key_id] = entry
            self._misses.move_to_end(key_id)
            while len(self._misses) > MAX_CACHED_MISSES:
                self._misses.popitem(last=False)
        else:
            self._misses.pop(key_id, None)
            if len(self._cache) > MAX_CACHED_KEYS:
                self._cache.clear()  # bound memory; it refills from the database
            self._cache[key_id] = entry

    def _forget(self, key_id: str) -> None:
        self._cache.pop(key_id, None)
        self._misses.pop(key_id, None)

    async def create(self, account_id: int, scopes: list[str], label: str = "") -> tuple[str, str]:
        key_id, key, digest = new_key()
        await self.pool.execute(
            "INSERT INTO api_keys (key_id, account_id, secret_hash, scopes, label) VALUES ($1, $2, $3, $4, $5)",
            key_id, account_id, digest, sorted(set(scopes)), label)
        return key_id, key

    async def set_env_admin(self, account_id: int, token: str) -> None:
        await self.pool.execute(
            "INSERT INTO api_keys (key_id, account_id, secret_hash, scopes, label) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (key_id) DO UPDATE SET secret_hash = excluded.secret_hash, account_id = excluded.account_id,"
            " revoked_at = NULL",
            ENV_ADMIN_KEY_ID, account_id, _hash(token), list(SCOPES), "EXCHANGE_ADMIN_TOKEN")
        self._forget(ENV_ADMIN_KEY_ID)

    async def revoke_env_admin(self) -> bool:
        """Revoke the EXCHANGE_ADMIN_TOKEN key, if it is in force; whether it was."""
        revoked = await self.pool.fetchval(
            "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL RETURNING key_id",
            ENV_ADMIN_KEY_ID)
        self._forget(ENV_ADMIN_KEY_ID)
        return revoked is not None

    async def revoke(self, account_id: int, key_id: str | None = None) -> int:
        """Revoke one key of the account, or all of them; returns how many were revoked."""
        if key_id is None:
            rows = await self.pool.fetch(
                "UPDATE api_keys SET revoked_at = now() WHERE account_id = $1 AND revoked_at IS NULL"
                " RETURNING key_id", account_id)
        else:
            rows = await self.pool.fetch(
                "UPDATE api_keys SET revoked_at = now() WHERE account_id = $1 AND key_id = $2"
                " AND revoked_at IS NULL RETURNING key_id", account_id, key_id)
        for r in rows:
            self._forget(r["key_id"])
        return len(rows)

    async def list(self, account_id: int) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT key_id, scopes, label, created_at, revoked_at FROM api_keys WHERE account_id = $1"
            " ORDER BY created_at", account_id)
