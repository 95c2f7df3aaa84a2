"""Prometheus metrics, one registry per app (tests run several apps in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    request_seconds: Histogram
    queue_depth: Gauge
    batch_size: Histogram
    commit_seconds: Histogram
    engine_seq: Gauge
    ready: Gauge
    fail_stops: Gauge
    rate_limited: Counter
    leader: Gauge
    ws_connections: Gauge
    # The labelled children of the request metrics, found once: labels() costs more than the count.
    _children: dict[tuple[str, str, int], tuple[Any, Any]] = field(default_factory=dict)

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        children = self._children.get((route, method, status))
        if children is None:  # routes x methods x statuses: a bounded set
            children = (self.requests.labels(route, method, str(status)), self.request_seconds.labels(route, method))
            self._children[(route, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    @classmethod
    def create(cls) -> Metrics:
        r = CollectorRegistry()
        return cls(
            registry=r,
            requests=Counter("exchange_http_requests_total", "HTTP requests by route, method and status",
                             ["route", "method", "status"], registry=r),
            request_seconds=Histogram("exchange_http_request_seconds", "HTTP request latency by route",
                                      ["route", "method"], buckets=_LATENCY_BUCKETS, registry=r),
            queue_depth=Gauge("exchange_sequencer_queue_depth", "commands waiting for the sequencer", registry=r),
            batch_size=Histogram("exchange_batch_commands", "commands per committed batch",
                                 buckets=(1, 10, 50, 100, 500, 1000, 2000, 4000), registry=r),
            commit_seconds=Histogram("exchange_commit_seconds", "time from a batch's commit start to COMMIT",
                                     buckets=_LATENCY_BUCKETS, registry=r),
            engine_seq=Gauge("exchange_engine_seq", "last committed sequence number", registry=r),
            ready=Gauge("exchange_ready", "1 when serving commands (leader, database reachable)", registry=r),
            fail_stops=Gauge("exchange_fail_stops", "fail-stops since start", registry=r),
            rate_limited=Counter("exchange_rate_limited_total", "requests refused by the rate limit", registry=r),
            leader=Gauge("exchange_leader", "1 on the instance holding the leader lock, 0 on a standby", registry=r),
            ws_connections=Gauge("exchange_ws_connections", "open websocket connections", registry=r),
        )
