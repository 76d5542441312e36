"""Running the service: uvicorn with one process, or `workers` processes that each build the app
from the same spec (app_from_env) and share the port, the prediction log and the metrics
(Prometheus multiprocess mode: /metrics in any worker sums them all)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from clarivis.errors import ClarivisError
from clarivis.extras import needs
from clarivis.serve import app as service_app
from clarivis.serve.service import check_servable
from clarivis.serve.settings import HOST, PORT, TIMEOUT_S, Settings

log = logging.getLogger("clarivis.serve")

APP_FACTORY = "clarivis.serve.app:app_from_env"
PROMETHEUS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable
# Seconds an idle keep-alive connection stays open after its last answer (uvicorn's default):
# a client sending requests in a row reuses it, a client gone quiet frees it soon.
KEEP_ALIVE_S = 5
MAX_WORKERS = 64  # more processes than this is a typo, not a plan


def serve(model_dir: str | Path, *, host: str = HOST, port: int = PORT, log_level: str = "info",
          workers: int = 1, **options: Any) -> None:
    """Run the service with uvicorn until Ctrl-C; options are create_app's (Settings' fields).
    With workers > 1 each process loads the model and answers on the same port."""
    with needs("serve", "clarivis serve"):
        import uvicorn  # here: create_app (and the tests) run without a server

    settings = replace(Settings(), host=host, **options)
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        log.warning("serving on %s without --api-key: anyone who can reach the port can use it", host)
    if not 1 <= workers <= MAX_WORKERS:
        raise ClarivisError(f"--workers must be 1 to {MAX_WORKERS} (got {workers})")
    common = {"host": host, "port": port, "log_level": log_level, **uvicorn_options()}
    if workers > 1 and settings.model_threads is None:
        settings = replace(settings, model_threads=max(1, (os.cpu_count() or 1) // workers))
    if workers == 1:
        uvicorn.run(service_app.create_app(model_dir, settings), **common)
        return
    check_servable(model_dir, settings)  # fail here, once, not in every worker
    metrics_dir = Path(tempfile.mkdtemp(prefix="clarivis-metrics-"))
    os.environ[service_app.SPEC_ENV] = json.dumps({"model_dir": str(Path(model_dir).resolve()),
                                       "settings": service_app.settings_to_dict(settings)})
    os.environ[PROMETHEUS_DIR_ENV] = str(metrics_dir)
    try:
        uvicorn.run(APP_FACTORY, factory=True, workers=workers, **common)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def uvicorn_options(*, header_timeout_s: float | None = None, max_idle: int | None = None,
                    protocol: type | None = None) -> dict[str, Any]:
    """uvicorn.Config's keywords for the service, besides the app, address and log level: the
    same for `clarivis serve` and the tests' live server (tests/serve/live.py).

    No limit_concurrency: uvicorn counts open connections in it, idle ones included, and answers
    503 to everything, /healthz too, once that many are open. Instead the protocol (connections.py)
    closes connections that do not send their headers in time and caps idle ones, and what
    requests hold is bounded where it is held (limits.BodyLimit, the batcher's queue).
    `header_timeout_s`/`max_idle` override connections.py's defaults and `protocol` picks one of
    its guarded classes (tests); the default class is importable by name, which `--workers N`
    needs (uvicorn pickles the config for each worker)."""
    from clarivis.serve import connections

    protocol = protocol or connections.guarded_protocol()
    overrides = {k: v for k, v in (("header_timeout_s", header_timeout_s), ("max_idle", max_idle))
                 if v is not None}
    if overrides:
        protocol = type(f"Custom{protocol.__name__}", (protocol,), overrides)
    return {"http": protocol, "ws": "none",  # no route takes a WebSocket: refuse upgrades
            "timeout_keep_alive": KEEP_ALIVE_S, "h11_max_incomplete_event_size": connections.MAX_HEADER_BYTES,
            "timeout_graceful_shutdown": int(TIMEOUT_S)}
