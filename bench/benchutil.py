"""What the benchmark scripts share (imported from the scripts' own directory)."""

from __future__ import annotations


def pct(values: list[float], p: float, *, is_sorted: bool = False) -> float | None:
    """The p-quantile of durations in seconds, in milliseconds (None when there are none)."""
    if not values:
        return None
    ordered = values if is_sorted else sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000, 2)


def price_text(ticks: int) -> str:
    """A price in 0.01 CNY ticks as the API's decimal string."""
    return f"{ticks // 100}.{ticks % 100:02d}"
