"""Prometheus metrics of one app: requests by endpoint and status, request latency, batch sizes,
model time per batch and predictions by label. Each app has its own registry, so two apps in one
process (tests, a server restarted in place) never share or clash on counters."""

from __future__ import annotations

import time

from clarivis.extras import needs

with needs("serve", "clarivis serve"):
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
    from starlette.routing import Match
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Request latency buckets, seconds: from a cached tiny model on loopback (~2 ms) to a large
# batch of photos on a CPU (seconds) and the request timeout (30 s).
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("clarivis_http_requests_total", "HTTP requests by endpoint and status",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("clarivis_http_request_duration_seconds", "HTTP request latency",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("clarivis_batch_size_images", "images per model call",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("clarivis_batch_duration_seconds", "model time per batch",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.predictions = Counter("clarivis_predictions_total", "predictions served by top label",
                                   ["label"], registry=self.registry)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts every HTTP request under its route template (`/v1/predict`), never the raw path:
    random 404 paths would otherwise make one time series each."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def tracked_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        finally:
            endpoint = route_template(scope)
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


def route_template(scope: Scope) -> str:
    app = scope.get("app")
    for route in getattr(getattr(app, "router", None), "routes", []):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return getattr(route, "path", "other")
    return "other"
