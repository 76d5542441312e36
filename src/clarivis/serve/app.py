"""The HTTP service: `create_app(model_dir, ...)` builds the FastAPI app for one ModelBundle;
`app_from_env()` builds it in a uvicorn worker process (`clarivis serve --workers N`), and
serve/runner.py runs either with uvicorn.

The routes live by audience: api_v1.py (clarivis' own API), api_v2.py (the Open Inference
Protocol), ops.py (health, readiness, metrics, the web page); security.py guards them all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import clarivis
from clarivis.errors import ClarivisError
from clarivis.extras import needs
from clarivis.prediction import check_backend
from clarivis.serve import limits
from clarivis.serve.api_v1 import RECENT, add_v1_routes
from clarivis.serve.api_v2 import add_v2_routes
from clarivis.serve.backends import Backend, Scored, load_backend
from clarivis.serve.batching import MicroBatcher
from clarivis.serve.docs import add_docs_routes
from clarivis.serve.metrics import MetricsMiddleware, ServiceMetrics
from clarivis.serve.monitor import ServiceMonitor
from clarivis.serve.ops import add_ops_routes
from clarivis.serve.predlog import LogUnavailableError, PredictionLog
from clarivis.serve.security import AccessGuard, add_security_scheme, allowed_hosts_for
from clarivis.serve.settings import Settings
from clarivis.spec import VERSION as __version__
from clarivis.spec import bundle_version, read_bundle_config, resolve_bundle_path

with needs("serve", "clarivis serve"):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

log = logging.getLogger("clarivis.serve")

SPEC_ENV = "CLARIVIS_SERVE_SPEC"  # JSON {model_dir, settings} for worker processes (runner.py)
# A model name travels in URLs (/v2/models/NAME): letters, digits, '.', '_' and '-' only.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Service:
    """The app's state: the model behind the batcher, the explainer, the log, the metrics."""

    def __init__(self, model_dir: str | Path, settings: Settings) -> None:
        _check_settings(settings)
        self.settings = settings
        self.model_dir = resolve_bundle_path(model_dir)
        self.config = read_bundle_config(self.model_dir)
        self.version = bundle_version(self.model_dir)
        self.name = settings.model_name or default_model_name(self.model_dir)
        self.backend: Backend = load_backend(settings.backend, self.model_dir, settings.device,
                                              threads=settings.model_threads)
        self._explainer = None  # a torch Classifier of its own, loaded on the first explain
        self._explainer_lock = threading.Lock()
        # A database that is down at start is an outage like any other: the service starts,
        # answers and journals (a container restarted during an outage must not crash-loop).
        self.log = PredictionLog.for_model(self.model_dir, settings.db_url,
                                           store_images=settings.store_images, require_db=False)
        _warn_if_unreachable(self.log)
        self.monitor_view = ServiceMonitor(self.model_dir, self.log, version=self.version)
        self.metrics = ServiceMetrics()
        self.batcher = MicroBatcher(self._run_batch, max_batch=settings.max_batch,
                                    max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue,
                                    on_batch=self.metrics.observe_batch, on_depth=self.metrics.observe_depth,
                                    on_reject=self.metrics.observe_rejection)
        self.recent: deque[dict] = deque(maxlen=RECENT)
        self.started_at = datetime.now(UTC)
        self.warmed_up = False  # set once the model has answered one inference (readiness)

    def _run_batch(self, payloads: list[tuple[Any, int]]) -> list[Scored]:
        """In the model thread: a payload is (decoded PIL image | preprocessed float32 (3, S, S)
        array of a v2 FP32 input, top-k). One backend call per kind in the batch, each at the
        largest top-k asked; the results go back in the payloads' order."""
        k = max(k for _, k in payloads)
        images = [n for n, (item, _) in enumerate(payloads) if isinstance(item, Image.Image)]
        arrays = [n for n, (item, _) in enumerate(payloads) if not isinstance(item, Image.Image)]
        results: list[Scored | None] = [None] * len(payloads)
        if images:
            scored = self.backend.predict([payloads[n][0] for n in images], top_k=k)
            for n, s in zip(images, scored, strict=True):
                results[n] = s
        if arrays:
            scored = self.backend.predict_pixels(np.stack([payloads[n][0] for n in arrays]), top_k=k)
            for n, s in zip(arrays, scored, strict=True):
                results[n] = s
        return results  # type: ignore[return-value]  # every slot filled above

    async def warm_up(self) -> None:
        """One inference on a blank image through the batcher: the first call pays for lazy
        initialisation (onnxruntime's arena, torch's kernels), so readiness waits for it."""
        size = self.config.preprocess.img_size
        try:
            await self.batcher.submit([(Image.new("RGB", (size, size)), 1)])
        except Exception:  # noqa: BLE001 - a model that cannot answer stays "not ready"; the log says why
            log.exception("warm-up inference failed; the server stays not ready")
            return
        self.warmed_up = True

    def readiness(self) -> dict:
        """/readyz's checks, from state only (no I/O: it must answer while the database is slow)."""
        return {"model": self.warmed_up and self.batcher.running, "prediction_log": self.log.status()}

    def monitor(self, since: str | None, review_limit: int) -> dict:
        """/v1/monitor: the drift report without server paths; the review queue (every client's
        low-confidence traffic) only with expose_recent."""
        limit = review_limit if self.settings.expose_recent else 0
        report = self.monitor_view.report(since, review_limit=limit)
        if not self.settings.expose_recent:
            report["notes"].append("the review queue is not exposed; start the server with "
                                   "--expose-recent, or run clarivis monitor on the server")
        return report

    def explainer(self):
        """Grad-CAM needs gradients and hooks on the model: always torch, and never the backend's
        own Classifier, whose batch may be running in the model thread at the same moment."""
        with self._explainer_lock:
            if self._explainer is None:
                self._explainer = clarivis.Classifier.load(self.model_dir, device=self.settings.device)
            return self._explainer

    def close(self) -> None:
        self.log.close()
        self.metrics.close()


def default_model_name(model_dir: Path) -> str:
    """The run folder's name (runs/NAME/model -> NAME), made URL-safe."""
    folder = model_dir.parent if model_dir.name == "model" else model_dir
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name).strip("-.") or "model"
    return name[:64]


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


def check_servable(model_dir: str | Path, settings: Settings) -> None:
    """What create_app would refuse, checked without loading the model: the parent of several
    workers fails once with one line instead of each worker failing with a traceback."""
    _check_settings(settings)
    folder = resolve_bundle_path(model_dir)
    read_bundle_config(folder)
    if settings.backend == "onnx":
        load_backend("onnx", folder)  # small next to a worker's copy; checks model.onnx opens
    # require_db=False: a bad URL still fails here; an unreachable server is a warning (above)
    PredictionLog.for_model(folder, settings.db_url, require_db=False).close()


def _warn_if_unreachable(prediction_log: PredictionLog) -> None:
    status = prediction_log.status()
    if status["db_reachable"] is False:
        log.warning("the prediction log at %s does not answer (%s); serving anyway, predictions are "
                    "journaled and written when it answers (see /readyz)", prediction_log.url,
                    status["last_error"])


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


def _check_settings(s: Settings) -> None:
    check_backend(s.backend)
    for name in ("max_upload_mb", "max_pixels", "max_files", "timeout_s", "max_batch"):
        if getattr(s, name) <= 0:
            raise ClarivisError(f"--{name.replace('_', '-')} must be positive (got {getattr(s, name)})")
    if s.model_name is not None and not MODEL_NAME.match(s.model_name):
        raise ClarivisError(f"--model-name '{s.model_name[:70]}' is not usable in a URL; use letters, "
                            "digits, '.', '_' and '-' (at most 64)")
    if s.max_wait_ms < 0:
        raise ClarivisError(f"--max-wait-ms must not be negative (got {s.max_wait_ms})")


