"""Prometheus metrics of a serving app (`Metrics`, one registry per app) and the ASGI middleware that counts
requests and their latency per endpoint (`CountRequests`)."""

from __future__ import annotations

import time
from typing import Any

ENDPOINTS = ("/predict", "/model", "/health", "/ready", "/metrics", "/", "/report")


class Metrics:
    """Prometheus metrics of one app, in their own registry (several apps can live in one process)."""

    def __init__(self, max_batch_size: int):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("leanvision_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("leanvision_errors", "Refused or failed /predict requests by reason", ["reason"],
                              registry=r)
        self.latency = Histogram("leanvision_request_latency_seconds", "Time from request start to response",
                                 ["endpoint"], registry=r, buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5,
                                                                    1, 2, 5))
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, max_batch_size})
        self.batch_size = Histogram("leanvision_batch_size", "Images per runtime call", registry=r,
                                    buckets=[s for s in sizes if s <= max_batch_size])
        self.queue = Histogram("leanvision_queue_seconds", "Time an image waited for its runtime call", registry=r,
                               buckets=(.0001, .0005, .001, .002, .005, .01, .02, .05, .1, .5, 1))
        self.inference = Histogram("leanvision_inference_seconds", "Wall time of one runtime call", registry=r,
                                   buckets=(.0001, .0005, .001, .002, .005, .01, .02, .05, .1, .5, 1))
        self.images = Counter("leanvision_images", "Images classified", registry=r)
        self.in_flight = Gauge("leanvision_in_flight_requests", "/predict requests in progress", registry=r)

    def observe_batch(self, size: int, model_s: float, queue_s: list[float]) -> None:
        self.batch_size.observe(size)
        self.inference.observe(model_s)
        self.images.inc(size)
        for q in queue_s:
            self.queue.observe(q)


class CountRequests:
    """Pure ASGI middleware (no per-request task or stream, unlike `@app.middleware`): counts every HTTP request by
    endpoint and status and observes its latency."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
