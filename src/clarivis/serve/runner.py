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
from clarivis.serve.settings import HOST, PORT, TIMEOUT_S, Settings

log = logging.getLogger("clarivis.serve")

APP_FACTORY = "clarivis.serve.app:app_from_env"
PROMETHEUS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable
# Connections (and so uploads held in memory, up to MAX_UPLOAD_MB each) served at once; uvicorn
# answers 503 beyond it. 64 keeps the worst case near 2 GB and is 4x the load tested (16).
MAX_CONNECTIONS = 64
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
    common = {"host": host, "port": port, "log_level": log_level, "limit_concurrency": MAX_CONNECTIONS,
              "timeout_graceful_shutdown": int(TIMEOUT_S)}
    if workers == 1:
        uvicorn.run(service_app.create_app(model_dir, settings), **common)
        return
    service_app.check_servable(model_dir, settings)  # fail here, once, not in every worker
    metrics_dir = Path(tempfile.mkdtemp(prefix="clarivis-metrics-"))
    os.environ[service_app.SPEC_ENV] = json.dumps({"model_dir": str(Path(model_dir).resolve()),
                                       "settings": service_app.settings_to_dict(settings)})
    os.environ[PROMETHEUS_DIR_ENV] = str(metrics_dir)
    try:
        uvicorn.run(APP_FACTORY, factory=True, workers=workers, **common)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
