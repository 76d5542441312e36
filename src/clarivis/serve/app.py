"""The HTTP service: `create_app(model_dir, ...)` builds the FastAPI app for one ModelBundle;
`app_from_env()` builds it in a uvicorn worker process (`clarivis serve --workers N`), and
serve/runner.py runs either with uvicorn.

The state they serve is service.py's Service; the routes live by audience: api_v1.py (clarivis'
own API), api_v2.py (the Open Inference Protocol), ops.py (health, readiness, metrics, the web
page), docs.py (Swagger UI and ReDoc from local files); security.py guards them all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from clarivis.errors import ClarivisError
from clarivis.extras import needs
from clarivis.serve import limits
from clarivis.serve.api_search import add_search_routes
from clarivis.serve.api_v1 import add_v1_routes
from clarivis.serve.api_v2 import add_v2_routes
from clarivis.serve.docs import add_docs_routes
from clarivis.serve.metrics import MetricsMiddleware
from clarivis.serve.ops import add_ops_routes
from clarivis.serve.predlog import LogUnavailableError
from clarivis.serve.security import AccessGuard, add_security_scheme, allowed_hosts_for
from clarivis.serve.service import Service
from clarivis.serve.settings import Settings
from clarivis.spec import VERSION as __version__

with needs("serve", "clarivis serve"):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

log = logging.getLogger("clarivis.serve")

SPEC_ENV = "CLARIVIS_SERVE_SPEC"  # JSON {model_dir, settings} for worker processes (runner.py)


def create_app(model_dir: str | Path, settings: Settings | None = None, **options: Any) -> FastAPI:
    """The service for one ModelBundle. `options` are Settings' fields by keyword (backend,
    api_key, db_url, max_batch, ...; the CLI and `serve` pass them so), applied over `settings`.
    The model and the prediction log open here, so a bad bundle, backend or database URL fails
    before any port is opened (ClarivisError)."""
    settings = replace(settings or Settings(), **options)
    settings = replace(settings, api_key=settings.api_key or None)  # "" means no key
    service = Service(model_dir, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.batcher.start()
        warm_up = asyncio.get_running_loop().create_task(service.warm_up())  # /healthz answers meanwhile
        try:
            yield
        finally:
            warm_up.cancel()
            await service.batcher.stop()
            service.close()

    app = FastAPI(title="clarivis", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # add_docs_routes: the same pages without a CDN
                  description=f"Image classifier {service.name}: {service.config.architecture} "
                              f"({service.config.num_classes} classes), model version {service.version}.")
    app.state.service = service
    _add_error_handlers(app)
    add_v1_routes(app, service)
    add_search_routes(app, service)
    add_v2_routes(app, service)
    add_ops_routes(app, service)
    add_docs_routes(app)
    _add_openapi_security(app, settings)
    # Outermost last: metrics see every answer, the guard's 400/401s and the body limit's 413s.
    app.add_middleware(limits.BodyLimit, max_bytes=int(settings.max_upload_mb * 1e6))
    app.add_middleware(AccessGuard, api_key=settings.api_key, public_metrics=settings.public_metrics,
                       allowed_hosts=allowed_hosts_for(settings.host, settings.allowed_hosts))
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    return app


def app_from_env() -> FastAPI:
    """create_app from $CLARIVIS_SERVE_SPEC: the factory each uvicorn worker process calls."""
    spec = json.loads(os.environ[SPEC_ENV])
    return create_app(spec["model_dir"], settings_from_dict(spec["settings"]))


def settings_to_dict(settings: Settings) -> dict:
    return asdict(settings)


def settings_from_dict(data: dict) -> Settings:
    known = {f.name for f in fields(Settings)}
    values = {k: v for k, v in data.items() if k in known}
    if "allowed_hosts" in values:
        values["allowed_hosts"] = tuple(values["allowed_hosts"])
    return Settings(**values)


def _add_openapi_security(app: FastAPI, settings: Settings) -> None:
    """The API-key scheme in /openapi.json when the server has a key, so clients and /docs'
    Authorize button know how to send it."""
    if settings.api_key is None:
        return
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = add_security_scheme(original())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = " ".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.exception_handler(LogUnavailableError)
    async def log_down(_request: Request, exc: LogUnavailableError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "30"})

    @app.exception_handler(ClarivisError)
    async def user_error(_request: Request, exc: ClarivisError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server log (uvicorn prints it), never to the client.
        log.error("unhandled %s on %s", type(exc).__name__, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the server log has "
                                       "the details"}, status_code=500)
