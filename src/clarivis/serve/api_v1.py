"""clarivis' own API: POST /v1/predict and /v1/explain, GET /v1/model, /v1/monitor, /v1/recent.

Every successful prediction is logged exactly once; every bad input is a 4xx with
{"detail": "one line"}, never a traceback. No answer names a path on the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import quote

import clarivis
from clarivis.errors import ClarivisError
from clarivis.extras import needs
from clarivis.serve import limits
from clarivis.serve.predlog import LoggedPrediction
from clarivis.serve.schemas import ModelInfo, MonitorReport, PredictResponse, RecentResponse, errors
from clarivis.serve.service import RECENT
from clarivis.serve.uploads import FILENAME_HEADER, RAW_NAME, RAW_TYPES, read_uploads

with needs("serve", "clarivis serve"):
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

if TYPE_CHECKING:
    from clarivis.serve.service import Service

TOP_K = 5  # labels per image in an answer
EXPLAIN_METHODS = ("gradcam", "gradcam++")

_BINARY = {"type": "string", "format": "binary"}
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "description": f"images as multipart/form-data (field '{limits.FIELD}', repeated), or one image as "
                       f"the raw body (its name in the optional {FILENAME_HEADER} header)",
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": [limits.FIELD],
                "properties": {limits.FIELD: {"type": "array", "items": _BINARY, "minItems": 1,
                                              "description": "one or more images (repeat the field)"}},
            }},
            **{media_type: {"schema": _BINARY} for media_type in RAW_TYPES},
        },
    },
    "parameters": [{"name": FILENAME_HEADER, "in": "header", "required": False, "schema": {"type": "string"},
                    "description": f"a raw body's file name, percent-encoded if not ASCII [{RAW_NAME}]"}],
    "responses": {"429": {
        "description": "Too many images waiting for the model, or too many uploads in progress",
        "headers": {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorDetail"}}},
    }},
}


def add_v1_routes(app: FastAPI, service: Service) -> None:
    @app.post("/v1/predict", openapi_extra=PREDICT_BODY, tags=["predict"], response_model=PredictResponse,
              responses=errors(400, 401, 413, 415, 422, 503, 504))
    async def predict(request: Request, top_k: int = Query(TOP_K, ge=1, le=1000,
                                                           description="labels per image")) -> JSONResponse:
        """Top-k labels with calibrated probabilities for every image in the `file` fields (and,
        from a multi-label model, the set of labels above their thresholds)."""
        # A JSONResponse, not a dict: FastAPI would validate and re-serialise the answer against
        # PredictResponse on every request (the schema documents it; tests/serve check the shape).
        return JSONResponse(await predict_uploads(request, service, top_k))

    @app.post("/v1/explain", openapi_extra=PREDICT_BODY, tags=["predict"], response_class=Response,
              responses={200: {"content": {"image/png": {}}}, **errors(400, 401, 413, 415, 422, 504)})
    async def explain(request: Request, method: str = Query("gradcam", description="gradcam | gradcam++"),
                      target: str | None = Query(None, description="class to explain [the predicted one]"),
                      ) -> Response:
        """Grad-CAM overlay (PNG: the model input | the heat map over it) of one image."""
        return await _explain(request, service, method, target)

    @app.get("/v1/model", tags=["model"], response_model=ModelInfo, responses=errors(400, 401))
    def model() -> dict:
        """What is served: name, version, architecture, classes, preprocessing, limits."""
        return model_info(service)

    @app.get("/v1/monitor", tags=["monitor"], response_model=MonitorReport,
             responses=errors(400, 401, 422, 503))
    async def monitor(since: str | None = Query(None, min_length=1, max_length=64,
                                                description="24h, 7d or an ISO time [whole log]"),
                      review_limit: int = Query(20, ge=0, le=1000)) -> dict:
        """Volume, latency, confidence and class drift of served traffic (clarivis monitor)."""
        return await run_in_threadpool(service.monitor, since, review_limit)

    @app.get("/v1/recent", tags=["monitor"], response_model=RecentResponse,
             responses=errors(400, 401, 404, 422))
    def recent(limit: int = Query(20, ge=1, le=RECENT)) -> dict:
        """The latest predictions of this server process, newest first (no file names, no
        images); only on a server started with --expose-recent: it shows every client's traffic."""
        if not service.settings.expose_recent:
            raise HTTPException(404, "recent predictions are not exposed; start the server with "
                                     "--expose-recent to show every client's traffic here")
        return {"predictions": list(service.recent)[:limit]}


async def predict_uploads(request: Request, service: Service, top_k: int) -> dict:
    start = time.perf_counter()
    async with deadline(service.settings.timeout_s):
        pp = service.config.preprocess
        uploads = await read_uploads(request, service.settings, pp.img_size, window=pp.window)
        k = min(top_k, service.config.num_classes)
        scored = await service.batcher.submit([(u.image, k) for u in uploads])
    latency_ms = (time.perf_counter() - start) * 1000
    now = datetime.now(UTC)
    entries = [LoggedPrediction(
        time=now, model_version=service.version, label=s.label, confidence=s.confidence,
        latency_ms=latency_ms, width=u.width, height=u.height, num_bytes=len(u.data), sha256=u.sha256,
        ood_score=s.ood_score, image=u.data) for u, s in zip(uploads, scored, strict=True)]
    # Outside the deadline: once the model has answered, the answer is logged and returned;
    # a timeout can only strike before, so no request is logged without being answered.
    try:
        service.log_answers(entries)
    except ClarivisError as err:
        raise HTTPException(503, f"prediction not logged: {err}") from None
    predictions = [_answer(u, s, k) for u, s in zip(uploads, scored, strict=True)]
    return {"model_name": service.name, "model_version": service.version, "backend": service.backend.name,
            "latency_ms": latency_ms, "predictions": predictions}


def _answer(upload, s, k: int) -> dict:
    """One image's entry in /v1/predict's answer; `labels` (the set) only from a multi-label model."""
    answer = {"filename": upload.filename, "label": s.label, "confidence": s.confidence,
              "top_k": _labelled(s.top_k[:k]), "ood_score": s.ood_score,
              "width": upload.width, "height": upload.height, "sha256": upload.sha256}
    if s.labels is not None:
        answer["labels"] = _labelled(s.labels)
    return answer


def _labelled(pairs: list[tuple[str, float]]) -> list[dict]:
    return [{"label": lbl, "probability": p} for lbl, p in pairs]


async def _explain(request: Request, service: Service, method: str, target: str | None) -> Response:
    if method not in EXPLAIN_METHODS:
        raise HTTPException(422, f"unknown method '{method:.40}'; use gradcam or gradcam++")
    if target is not None and target not in service.config.class_names:
        raise HTTPException(422, f"unknown target class '{target:.100}'; the model's classes are "
                                 f"{', '.join(service.config.class_names[:20])}")
    async with deadline(service.settings.timeout_s):
        pp = service.config.preprocess
        uploads = await read_uploads(request, service.settings, pp.img_size, window=pp.window)
        if len(uploads) != 1:
            raise HTTPException(422, f"send one image per explain request (got {len(uploads)})")
        png, label, confidence = await run_in_threadpool(
            lambda: clarivis.explain_overlay(service.explainer(), uploads[0].image, method=method,
                                             target=target))
    return Response(png, media_type="image/png",
                    headers={"X-Label": _header_safe(label), "X-Confidence": f"{confidence:.6f}",
                             "X-Model-Version": service.version})


def model_info(service: Service) -> dict:
    """The /v1/model answer: nothing in it names a path on the server or the training machine."""
    c, settings = service.config, service.settings
    return {
        "name": service.name,
        "model_version": service.version, "clarivis_version": c.clarivis_version,
        "architecture": c.architecture, "num_classes": c.num_classes, "class_names": c.class_names,
        "input_size": list(c.input_size), "resize_mode": c.resize_mode, "temperature": c.temperature,
        "task": c.task,
        "thresholds": c.label_thresholds() if c.multilabel else None,
        "temperatures": c.label_temperatures() if c.multilabel else None,
        "biases": c.label_biases() if c.multilabel else None,
        "window": c.window,
        # /v1/search on a service given --index: how many images, and whether words work (CLIP)
        "search": ({"images": len(service.searcher), "text": service.searcher.info.is_clip}
                   if service.searcher is not None else None),
        "open_set_threshold": (c.ood or {}).get("threshold"),
        # the training summary without the data path: a path on the training machine says
        # nothing to a client and may name people or sites
        "training": {k: v for k, v in c.training.items() if k != "data"},
        "backend": service.backend.name, "started_at": service.started_at.isoformat(),
        "limits": {"max_upload_mb": settings.max_upload_mb, "max_pixels": settings.max_pixels,
                   "max_files": settings.max_files, "timeout_s": settings.timeout_s,
                   "max_request_pixels": settings.max_request_pixels, "max_queue": settings.max_queue},
        "batching": {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms},
        "prediction_log": {"database": service.log.engine.dialect.name,
                           "store_images": settings.store_images},
        "auth_required": settings.api_key is not None,
        "expose_recent": settings.expose_recent,
    }


@asynccontextmanager
async def deadline(seconds: float) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise HTTPException(504, f"request took longer than the {seconds:g} s limit; send fewer or "
                                 "smaller images, or retry when the server is less busy") from None


def _header_safe(text: str) -> str:
    """HTTP headers are latin-1: class names in other scripts travel percent-encoded."""
    return quote(text, safe=" -_.()")
