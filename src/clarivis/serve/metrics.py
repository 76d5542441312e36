"""Prometheus metrics of one app: requests by endpoint and status, request latency, batch sizes,
model time per batch, predictions by label, images waiting for the model and requests refused
because too many were waiting, plus the process' CPU, memory and file handles.
Each app has its own registry, so two apps in one process (tests, a server restarted in place)
never share or clash on counters.

Under `--workers N` (PROMETHEUS_MULTIPROC_DIR set by serve/runner.py before the workers start)
every worker writes its values to files in that folder and /metrics, whichever worker answers,
sums them all (prometheus_client's multiprocess mode). That mode has no per-process collectors,
so the process_* metrics are only there with one worker.
"""

from __future__ import annotations

import os
import time

from clarivis.extras import needs

with needs("serve", "clarivis serve"):
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        PLATFORM_COLLECTOR,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        ProcessCollector,
        generate_latest,
        multiprocess,
    )
    from starlette.routing import Match
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Request latency buckets, seconds: from a cached tiny model on loopback (~2 ms) to a large
# batch of photos on a CPU (seconds) and the request timeout (30 s).
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        if not multiprocess_mode():
            ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, resident memory, fds
            self.registry.register(PLATFORM_COLLECTOR)  # python_info
        self.requests = Counter("clarivis_http_requests_total", "HTTP requests by endpoint and status",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("clarivis_http_request_duration_seconds", "HTTP request latency",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("clarivis_batch_size_images", "images per model call",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("clarivis_batch_duration_seconds", "model time per batch",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.predictions = Counter("clarivis_predictions_total",
                                   "predictions served by label (multi-label: one for each label of "
                                   "an image's set; an image with no label as label \"\")",
                                   ["label"], registry=self.registry)
        # livesum: under --workers N each process has its own queue; the server's depth is their
        # sum over the processes alive (a dead worker's last value must not linger).
        self.queue_depth = Gauge("clarivis_queue_depth_images", "images waiting for the model",
                                 multiprocess_mode="livesum", registry=self.registry)
        self.queue_rejections = Counter("clarivis_queue_rejections_total",
                                        "requests refused with 429: too many images waiting",
                                        registry=self.registry)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def observe_depth(self, images: int) -> None:
        self.queue_depth.set(images)

    def observe_rejection(self, _images: int) -> None:
        self.queue_rejections.inc()

    def exposition(self) -> tuple[bytes, str]:
        if multiprocess_mode():  # every worker's files, summed; a fresh registry each time, as documented
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """A worker going away: its live gauges stop counting (counters keep their totals)."""
        if multiprocess_mode():
            multiprocess.mark_process_dead(os.getpid())


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
    """The route's path template. Starlette's router leaves the route it picked in the scope
    (1.x); else, and for answers given before routing (the guard's 401s), the route list is
    matched again."""
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return route.path
    app = scope.get("app")
    for route in getattr(getattr(app, "router", None), "routes", []):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return getattr(route, "path", "other")
    return "other"
