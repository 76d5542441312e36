"""What operators and their tools call: /healthz (liveness), /readyz (readiness), /metrics
(Prometheus) and the web page at /."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from clarivis.extras import needs
from clarivis.serve.schemas import Health, Readiness, errors

with needs("serve", "clarivis serve"):
    from fastapi import FastAPI
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles

if TYPE_CHECKING:
    from clarivis.serve.service import Service

log = logging.getLogger("clarivis.serve")
STATIC_DIR = Path(__file__).parent / "static"


def add_ops_routes(app: FastAPI, service: Service) -> None:
    @app.get("/healthz", tags=["ops"], response_model=Health)
    async def healthz() -> dict:
        """Liveness: the process answers. Touches nothing else (no database, no model, no thread
        pool: an async route runs on the event loop itself), so a slow database or a busy model
        never makes a healthy process look dead."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], response_model=Readiness,
             responses={503: {"model": Readiness, "description": "not ready yet"}, **errors(400, 401)})
    async def readyz() -> JSONResponse:
        """Readiness: the model has answered its warm-up inference and its worker runs. The
        prediction log's state is shown but does not decide: with the database down, predictions
        are journaled locally and still answered. Cheap: state kept by the service, no I/O."""
        checks = service.readiness()
        ready = checks["model"]
        return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks,
                             "model_name": service.name, "model_version": service.version},
                            status_code=200 if ready else 503)

    @app.get("/metrics", tags=["ops"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}}, **errors(400, 401)})
    def metrics() -> Response:
        """Prometheus text format (every worker's counts summed under --workers N)."""
        body, content_type = service.metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
