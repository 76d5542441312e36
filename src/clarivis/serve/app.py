"""The HTTP service: `create_app(model_dir, ...)` builds the FastAPI app, `serve(...)` runs it with
uvicorn. Endpoints: POST /v1/predict, POST /v1/explain, GET /v1/model, /v1/monitor, /v1/recent,
/healthz, /readyz, /metrics, the web page at / and OpenAPI docs at /docs.

Every successful prediction is logged exactly once (one transaction per request) in the
prediction log; every bad input is a 4xx with {"detail": "one line"}, never a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import torch

from clarivis.classifier import Classifier
from clarivis.errors import ClarivisError
from clarivis.explain import heatmaps, overlay_png
from clarivis.extras import needs
from clarivis.prediction import check_backend
from clarivis.serve import limits
from clarivis.serve.backends import Backend, Scored, load_backend
from clarivis.serve.batching import MicroBatcher
from clarivis.serve.metrics import MetricsMiddleware, ServiceMetrics
from clarivis.serve.monitor import monitor_report
from clarivis.serve.predlog import LoggedPrediction, PredictionLog
from clarivis.serve.settings import HOST, PORT, TIMEOUT_S, Settings
from clarivis.spec import VERSION as __version__
from clarivis.spec import bundle_version, read_bundle_config, resolve_bundle_path

with needs("serve", "clarivis serve"):
    from fastapi import Depends, FastAPI, HTTPException, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile

log = logging.getLogger("clarivis.serve")

STATIC_DIR = Path(__file__).parent / "static"
# Connections (and so uploads held in memory, up to MAX_UPLOAD_MB each) served at once; uvicorn
# answers 503 beyond it. 64 keeps the worst case near 2 GB and is 4x the load tested (16).
MAX_CONNECTIONS = 64
TOP_K = 5  # labels per image in an answer
RECENT = 50  # predictions the page's "recent" table can show (memory only; the log keeps all)

_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": [limits.FIELD],
            "properties": {limits.FIELD: {"type": "array", "items": {"type": "string", "format": "binary"},
                                          "description": "one or more images (repeat the field)"}},
        }}},
    }
}


class Service:
    """The app's state: the model behind the batcher, the explainer, the log, the metrics."""

    def __init__(self, model_dir: str | Path, settings: Settings) -> None:
        _check_settings(settings)
        self.settings = settings
        self.model_dir = resolve_bundle_path(model_dir)
        self.config = read_bundle_config(self.model_dir)
        self.version = bundle_version(self.model_dir)
        self.backend: Backend = load_backend(settings.backend, self.model_dir, settings.device)
        self._explainer = None  # a torch Classifier of its own, loaded on the first explain
        self._explainer_lock = threading.Lock()
        self.log = PredictionLog.for_model(self.model_dir, settings.db_url,
                                           store_images=settings.store_images)
        self.metrics = ServiceMetrics()
        self.batcher = MicroBatcher(self._run_batch, max_batch=settings.max_batch,
                                    max_wait_ms=settings.max_wait_ms, on_batch=self.metrics.observe_batch)
        self.recent: deque[dict] = deque(maxlen=RECENT)
        self.started_at = datetime.now(UTC)

    def _run_batch(self, payloads: list[tuple[Any, int]]) -> list[Scored]:
        """In the model thread: one backend call for the batch, at the largest top-k asked."""
        k = max(k for _, k in payloads)
        return self.backend.predict([image for image, _ in payloads], top_k=k)

    def explainer(self):
        """Grad-CAM needs gradients and hooks on the model: always torch, and never the backend's
        own Classifier, whose batch may be running in the model thread at the same moment."""
        with self._explainer_lock:
            if self._explainer is None:
                self._explainer = Classifier.load(self.model_dir, device=self.settings.device)
            return self._explainer

    def close(self) -> None:
        self.log.close()


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
        try:
            yield
        finally:
            await service.batcher.stop()
            service.close()

    app = FastAPI(title="clarivis", version=__version__, lifespan=lifespan,
                  description=f"Image classifier {service.config.architecture} "
                              f"({service.config.num_classes} classes), model version {service.version}.")
    app.state.service = service
    _add_error_handlers(app)
    auth = [Depends(_api_key_check(settings.api_key))]
    _add_predict_routes(app, service, auth)
    _add_model_routes(app, service, auth)
    _add_ops_routes(app, service)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    # Outermost last: metrics see every answer, the body limit's 413s included.
    app.add_middleware(limits.BodyLimit, max_bytes=int(settings.max_upload_mb * 1e6))
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    return app


def serve(model_dir: str | Path, *, host: str = HOST, port: int = PORT, log_level: str = "info",
          **options: Any) -> None:
    """Run the service with uvicorn until Ctrl-C; options are create_app's."""
    with needs("serve", "clarivis serve"):
        import uvicorn  # here: create_app (and the tests) run without a server

    app = create_app(model_dir, **options)
    if host not in ("127.0.0.1", "localhost", "::1") and not options.get("api_key"):
        log.warning("serving on %s without --api-key: anyone who can reach the port can use it", host)
    uvicorn.run(app, host=host, port=port, log_level=log_level, limit_concurrency=MAX_CONNECTIONS,
                timeout_graceful_shutdown=int(TIMEOUT_S))


# ----------------------------------------------------------------------------- routes


def _add_predict_routes(app: FastAPI, service: Service, auth: list) -> None:
    @app.post("/v1/predict", dependencies=auth, openapi_extra=_PREDICT_BODY, tags=["predict"])
    async def predict(request: Request, top_k: int = Query(TOP_K, ge=1, le=1000,
                                                           description="labels per image")) -> dict:
        """Top-k labels with calibrated probabilities for every image in the `file` fields."""
        return await _predict(request, service, top_k)

    @app.post("/v1/explain", dependencies=auth, openapi_extra=_PREDICT_BODY, tags=["predict"],
              response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def explain(request: Request, method: str = Query("gradcam", description="gradcam | gradcam++"),
                      target: str | None = Query(None, description="class to explain [the predicted one]"),
                      ) -> Response:
        """Grad-CAM overlay (PNG: the model input | the heat map over it) of one image."""
        return await _explain(request, service, method, target)


def _add_model_routes(app: FastAPI, service: Service, auth: list) -> None:
    @app.get("/v1/model", dependencies=auth, tags=["model"])
    def model() -> dict:
        """What is served: version, architecture, classes, preprocessing, limits."""
        return _model_info(service)

    @app.get("/v1/monitor", dependencies=auth, tags=["monitor"])
    async def monitor(since: str | None = Query(None, description="24h, 7d or an ISO time [whole log]"),
                      review_limit: int = Query(20, ge=0, le=1000)) -> dict:
        """Volume, latency, confidence and class drift of served traffic (clarivis monitor)."""
        return await run_in_threadpool(monitor_report, service.model_dir, service.settings.db_url, since,
                                       review_limit=review_limit)

    @app.get("/v1/recent", dependencies=auth, tags=["monitor"])
    def recent(limit: int = Query(20, ge=1, le=RECENT)) -> dict:
        """The latest predictions of this server process, newest first (no file names, no images)."""
        return {"predictions": list(service.recent)[:limit]}


def _add_ops_routes(app: FastAPI, service: Service) -> None:
    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        """Readiness: the model worker runs and the prediction log answers."""
        db_ok = await run_in_threadpool(_db_ok, service)
        checks = {"model": service.batcher.running, "prediction_log": db_ok}
        ready = all(checks.values())
        return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks,
                             "model_version": service.version}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def metrics() -> Response:
        """Prometheus text format."""
        body, content_type = service.metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")


async def _predict(request: Request, service: Service, top_k: int) -> dict:
    start = time.perf_counter()
    async with _deadline(service.settings.timeout_s):
        uploads = await _read_uploads(request, service)
        k = min(top_k, service.config.num_classes)
        scored = await service.batcher.submit([(u.image, k) for u in uploads])
    latency_ms = (time.perf_counter() - start) * 1000
    now = datetime.now(UTC)
    entries = [LoggedPrediction.from_upload(
        u.data, model_version=service.version, label=s.label, confidence=s.confidence,
        latency_ms=latency_ms, width=u.width, height=u.height, ood_score=s.ood_score, time=now)
        for u, s in zip(uploads, scored, strict=True)]
    # Outside the deadline: once the model has answered, the answer is logged and returned;
    # a timeout can only strike before, so no request is logged without being answered.
    try:
        await run_in_threadpool(service.log.record, entries)
    except ClarivisError as err:
        raise HTTPException(503, f"prediction not logged: {err}") from None
    predictions = []
    for u, s in zip(uploads, scored, strict=True):
        service.metrics.predictions.labels(s.label).inc()
        predictions.append({"filename": u.filename, "label": s.label, "confidence": s.confidence,
                            "top_k": [{"label": lbl, "probability": p} for lbl, p in s.top_k[:k]],
                            "ood_score": s.ood_score, "width": u.width, "height": u.height,
                            "sha256": u.sha256})
        service.recent.appendleft({"time": now.isoformat(), "label": s.label,
                                   "confidence": s.confidence, "latency_ms": latency_ms,
                                   "width": u.width, "height": u.height, "sha256": u.sha256[:12]})
    return {"model_version": service.version, "backend": service.backend.name,
            "latency_ms": latency_ms, "predictions": predictions}


async def _explain(request: Request, service: Service, method: str, target: str | None) -> Response:
    if method not in ("gradcam", "gradcam++"):
        raise HTTPException(422, f"unknown method '{method}'; use gradcam or gradcam++")
    if target is not None and target not in service.config.class_names:
        raise HTTPException(422, f"unknown target class '{target:.100}'; the model's classes are "
                                 f"{', '.join(service.config.class_names[:20])}")
    async with _deadline(service.settings.timeout_s):
        uploads = await _read_uploads(request, service)
        if len(uploads) != 1:
            raise HTTPException(422, f"send one image per explain request (got {len(uploads)})")
        png, label, confidence = await run_in_threadpool(_overlay, service, uploads[0], method, target)
    return Response(png, media_type="image/png",
                    headers={"X-Label": _header_safe(label), "X-Confidence": f"{confidence:.6f}",
                             "X-Model-Version": service.version})


def _model_info(service: Service) -> dict:
    """The /v1/model answer."""
    c, folder, settings = service.config, service.model_dir, service.settings
    return {
        "name": folder.parent.name if folder.name == "model" else folder.name,  # the run's name
        "model_version": service.version, "clarivis_version": c.clarivis_version,
        "architecture": c.architecture, "num_classes": c.num_classes, "class_names": c.class_names,
        "input_size": list(c.input_size), "resize_mode": c.resize_mode, "temperature": c.temperature,
        "open_set_threshold": (c.ood or {}).get("threshold"),
        # the training summary without the data path: a path on the training machine says
        # nothing to a client and may name people or sites
        "training": {k: v for k, v in c.training.items() if k != "data"},
        "backend": service.backend.name, "started_at": service.started_at.isoformat(),
        "limits": {"max_upload_mb": settings.max_upload_mb, "max_pixels": settings.max_pixels,
                   "max_files": settings.max_files, "timeout_s": settings.timeout_s},
        "batching": {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms},
        "prediction_log": {"db": service.log.url, "store_images": settings.store_images},
        "auth_required": settings.api_key is not None,
    }


async def _read_uploads(request: Request, service: Service) -> list[limits.Upload]:
    """The `file` fields of a multipart request, decoded (in a thread: decoding a photo takes
    milliseconds to seconds). Any bad file fails the whole request, before the model runs."""
    settings = service.settings
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise HTTPException(415, f"send images as multipart/form-data in field '{limits.FIELD}' "
                                 f"(got content type '{content_type[:60] or 'none'}')")
    async with request.form(max_files=settings.max_files, max_fields=settings.max_files) as form:
        items = form.getlist(limits.FIELD)
        if not items:
            got = ", ".join(k[:30] for k in sorted(set(form.keys()))[:5])
            raise HTTPException(422, f"no images: send each image in multipart field '{limits.FIELD}'"
                                     + (f" (got fields: {got})" if got else ""))
        if not all(isinstance(i, UploadFile) for i in items):
            raise HTTPException(422, f"field '{limits.FIELD}' must hold files, not text")
        raw = [(i.filename, await i.read()) for i in items]
    size = service.config.preprocess.img_size
    return await run_in_threadpool(
        lambda: [limits.decode_upload(name, data, max_pixels=settings.max_pixels, reduce_to=size, index=n)
                 for n, (name, data) in enumerate(raw)])


def _overlay(service: Service, upload: limits.Upload, method: str,
             target: str | None) -> tuple[bytes, str, float]:
    """(PNG, predicted label, its calibrated probability) for one decoded upload."""
    clf = service.explainer()
    _, pixels = clf.prepare(("upload", upload.image))
    if isinstance(pixels, str):  # decode_upload already read it; a failure here is not the client's
        raise RuntimeError(pixels)
    batch = pixels.unsqueeze(0)
    probs = clf.predict_proba(clf.normalize(batch.to(clf.device)))[0]
    index = int(probs.argmax())
    label, confidence = clf.class_names[index], float(probs[index])
    target_index = index if target is None else clf.class_names.index(target)
    heat = heatmaps(clf, batch, method=method, targets=torch.tensor([target_index]))[0]
    caption = f"{label} {confidence:.0%} · {method}"
    if target_index != index:
        caption += f" · map for {target}"
    return overlay_png(pixels, heat, caption), label, confidence


def _db_ok(service: Service) -> bool:
    try:
        with service.log.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 - any failure means "not ready"; the log says why
        log.exception("prediction log not reachable")
        return False


def _api_key_check(api_key: str | None):
    async def check(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key")
        bearer = request.headers.get("authorization", "")
        if given is None and bearer.lower().startswith("bearer "):
            given = bearer[7:].strip()
        # compare_digest: the time taken says nothing about how much of the key was right.
        if not given or not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong API key; send it as header X-API-Key: KEY "
                                     "or Authorization: Bearer KEY",
                                headers={"WWW-Authenticate": "Bearer"})
    return check


@asynccontextmanager
async def _deadline(seconds: float) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise HTTPException(504, f"request took longer than the {seconds:g} s limit; send fewer or "
                                 "smaller images, or retry when the server is less busy") from None


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = " ".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

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
    if s.max_wait_ms < 0:
        raise ClarivisError(f"--max-wait-ms must not be negative (got {s.max_wait_ms})")


def _header_safe(text: str) -> str:
    """HTTP headers are latin-1: class names in other scripts travel percent-encoded."""
    return quote(text, safe=" -_.()")

