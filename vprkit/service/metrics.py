"""Prometheus metrics of one service (own registry, so several apps in one process never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("vprkit_requests", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram("vprkit_request_seconds", "request latency", ["route"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.batch = Histogram("vprkit_batch_size", "images per forward pass", buckets=BATCH_BUCKETS,
                               registry=self.registry)
        self.map_size = Gauge("vprkit_map_images", "live map images", registry=self.registry)
        self.streams = Gauge("vprkit_streams", "live streams", registry=self.registry)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
