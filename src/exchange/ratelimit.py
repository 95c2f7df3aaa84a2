"""Token-bucket rate limits per API key (or client address for public routes)."""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_BUCKETS = 100_000  # bound memory: full buckets are the same as absent ones


@dataclass(slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the bucket is full again
    retry_after_s: int  # seconds until one request is allowed (when refused)


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str, now: float) -> Decision:
        return self._decision(*self._spend(key, now))

    def _decision(self, allowed: bool, tokens: float) -> Decision:
        missing = self.burst - tokens
        return Decision(
            allowed=allowed,
            limit=self.burst,
            remaining=int(tokens),
            reset_s=math.ceil(missing / self.rate) if self.rate else 0,
            retry_after_s=0 if allowed else max(1, math.ceil((1.0 - tokens) / self.rate)),
        )

    def allow(self, key: str, now: float) -> bool:
        """`take` without the figures for headers (a websocket message's check)."""
        return self._spend(key, now)[0]

    def _spend(self, key: str, now: float) -> tuple[bool, float]:
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if len(self._buckets) >= MAX_BUCKETS and key not in self._buckets:
            self._evict_full(now)
        self._buckets[key] = (tokens, now)
        return allowed, tokens

    def _evict_full(self, now: float) -> None:
        full = [k for k, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= MAX_BUCKETS:  # still full: forget the oldest half
            for k in sorted(self._buckets, key=lambda k: self._buckets[k][1])[: MAX_BUCKETS // 2]:
                del self._buckets[k]
