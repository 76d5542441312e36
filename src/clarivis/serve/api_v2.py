"""The Open Inference Protocol (KServe v2) over REST, for clients and platforms that speak it
(KServe, Triton's and MLServer's clients, service meshes' health checks):

  GET  /v2                                     server metadata
  GET  /v2/health/live, /v2/health/ready       liveness (open), readiness
  GET  /v2/models/NAME[/versions/V]            model metadata: inputs, outputs, class names
  GET  /v2/models/NAME[/versions/V]/ready      model readiness
  POST /v2/models/NAME[/versions/V]/infer      inference

NAME is the served model's name (Settings.model_name, by default the run folder's), V its version
(the bundle's 12-hex-digit weights hash). A request carries one input:

  image   BYTES [N]           encoded image files (JPEG, PNG, ...), each a base64 string in JSON;
                              decoded and preprocessed by the server, as /v1/predict does
  pixels  FP32  [N, 3, S, S]  images the client preprocessed itself (see pixels_description)

and gets the outputs label BYTES [N], confidence FP32 [N], probabilities FP32 [N, C] (calibrated,
in the class order of the metadata's class_names), top_labels BYTES [N, k] and top_probabilities
FP32 [N, k] (k = parameters.top_k, 5 by default). A multi-label model's probabilities are each
class's own sigmoid, label and labels BYTES [N] are each image's set of labels (names joined by
';', '' for none) and label_mask BOOL [N, C] says which classes are in it. Every inference goes
through the service's micro-batcher, limits and prediction log, as /v1/predict's do. Errors are
{"error": "one line"}: 400 for a bad request, 404 for an unknown model or version, 413/415 for
images the limits refuse, 429 (with Retry-After) when too many images wait for the model,
503/504 as in v1.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from clarivis.errors import ClarivisError
from clarivis.extras import needs
from clarivis.prediction import LABEL_SEP
from clarivis.serve.api_v1 import TOP_K, deadline
from clarivis.serve.backends import Scored
from clarivis.serve.batching import QueueFull
from clarivis.serve.predlog import LoggedPrediction
from clarivis.serve.schemas import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    RequestInput,
    ServerLive,
    ServerMetadata,
    ServerReady,
    V2Error,
    errors,
)
from clarivis.serve.uploads import decode_all
from clarivis.spec import VERSION

with needs("serve", "clarivis serve"):
    from fastapi import APIRouter, FastAPI, HTTPException, Path, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from fastapi.routing import APIRoute
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

if TYPE_CHECKING:
    from clarivis.serve.service import Service

IMAGE_INPUT = "image"  # BYTES [N]
PIXELS_INPUT = "pixels"  # FP32 [N, 3, S, S]
OUTPUTS = ("label", "confidence", "probabilities", "top_labels", "top_probabilities")
MULTILABEL_OUTPUTS = (*OUTPUTS, "labels", "label_mask")  # the set, as text and as a mask
# The protocol's platform names are <framework>_<format>.
PLATFORMS = {"torch": "pytorch_clarivis", "onnx": "onnxruntime_onnx"}


class V2Route(APIRoute):
    """Answers every failure of a v2 route as the protocol's {"error": "one line"}: the request
    validation FastAPI does (an invalid body: 400, as the protocol's "typically 400" says) and
    the HTTPExceptions of the route, of the limits and of the body limit (their status kept,
    FastAPI's 422 made 400)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def v2_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return v2_error(400, _validation_message(exc))
            except StarletteHTTPException as exc:  # fastapi's HTTPException is one too
                return v2_error(400 if exc.status_code == 422 else exc.status_code, str(exc.detail))
            except ClarivisError as exc:
                return v2_error(400, str(exc))
            except QueueFull as full:  # too many images waiting for the model (limits.BodyLimit's 429)
                return v2_error(429, full.detail, headers={"Retry-After": str(full.retry_after_s)})

        return v2_handler


def v2_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def add_v2_routes(app: FastAPI, service: Service) -> None:
    router = APIRouter(route_class=V2Route, tags=["v2 (Open Inference Protocol)"])
    # "4XX": every other client error is a V2Error too (and FastAPI adds no 422 of its own shape)
    other = {"4XX": {"model": V2Error, "description": "Any other client error"}}
    guarded = {**errors(400, 401, model=V2Error), **other}
    unknown = {**errors(400, 401, 404, model=V2Error), **other}

    # The served name and version, in the schema as the one value each takes (others: 404).
    def name_param() -> Any:
        return Path(description="the served model's name (/v1/model's `name`)",
                    json_schema_extra={"enum": [service.name]})

    def version_param() -> Any:
        return Path(description="the served model version (12 hex digits of its weights' SHA-256)",
                    json_schema_extra={"enum": [service.version]})

    @router.get("/v2", response_model=ServerMetadata, responses=guarded)
    async def server_metadata() -> dict:
        """The server: its name, version and protocol extensions."""
        return {"name": "clarivis", "version": VERSION, "extensions": []}

    @router.get("/v2/health/live", response_model=ServerLive)
    async def server_live() -> dict:
        """Liveness: the process answers (no key needed; touches nothing else)."""
        return {"live": True}

    @router.get("/v2/health/ready", response_model=ServerReady,
                responses={503: {"model": ServerReady, "description": "not ready yet"}, **guarded})
    async def server_ready() -> JSONResponse:
        """Readiness: the model has answered its warm-up inference (503 until then)."""
        ready = service.readiness()["model"]
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @router.get("/v2/models/{name}", response_model=ModelMetadata, responses=unknown)
    async def model_metadata(name: str = name_param()) -> dict:
        """The model's inputs and outputs (datatype, shape), class names and preprocessing."""
        check_model(service, name)
        return metadata(service)

    @router.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadata, responses=unknown)
    async def model_version_metadata(name: str = name_param(), version: str = version_param()) -> dict:
        """As /v2/models/{name}, for one version (the served one)."""
        check_model(service, name, version)
        return metadata(service)

    @router.get("/v2/models/{name}/ready", response_model=ModelReady,
                responses={503: {"model": ModelReady, "description": "not ready yet"}, **unknown})
    async def model_ready(name: str = name_param()) -> JSONResponse:
        """Whether the model answers inferences (503 until its warm-up inference is done)."""
        check_model(service, name)
        return _model_ready(service)

    @router.get("/v2/models/{name}/versions/{version}/ready", response_model=ModelReady,
                responses={503: {"model": ModelReady, "description": "not ready yet"}, **unknown})
    async def model_version_ready(name: str = name_param(), version: str = version_param()) -> JSONResponse:
        """As /v2/models/{name}/ready, for one version (the served one)."""
        check_model(service, name, version)
        return _model_ready(service)

    infer_errors = {**errors(400, 401, 404, 413, 415, 429, 503, 504, model=V2Error), **other}

    @router.post("/v2/models/{name}/infer", response_model=InferenceResponse,
                 response_model_exclude_none=True, responses=infer_errors)
    async def infer(body: InferenceRequest, name: str = name_param()) -> dict:
        """Inference on encoded images (input `image`, BYTES) or preprocessed pixels (input
        `pixels`, FP32); the model metadata describes both and the outputs."""
        check_model(service, name)
        return await run_inference(service, body)

    @router.post("/v2/models/{name}/versions/{version}/infer", response_model=InferenceResponse,
                 response_model_exclude_none=True, responses=infer_errors)
    async def infer_version(body: InferenceRequest, name: str = name_param(),
                            version: str = version_param()) -> dict:
        """As /v2/models/{name}/infer, for one version (the served one)."""
        check_model(service, name, version)
        return await run_inference(service, body)

    app.include_router(router)


def check_model(service: Service, name: str, version: str | None = None) -> None:
    if name != service.name:
        raise HTTPException(404, f"model '{name[:64]}' is not served here; this server serves "
                                 f"'{service.name}'")
    if version is not None and version != service.version:
        raise HTTPException(404, f"version '{version[:64]}' of model '{service.name}' is not served "
                                 f"here; the served version is '{service.version}'")


def _model_ready(service: Service) -> JSONResponse:
    ready = service.readiness()["model"]
    return JSONResponse({"name": service.name, "ready": ready}, status_code=200 if ready else 503)


def pixels_description(service: Service) -> str:
    """What an FP32 input must hold, exactly: the bundle's preprocessing, which
    clarivis.runtime.RuntimePreprocess (resize, then normalize) implements in numpy."""
    pp = service.config.preprocess
    s = pp.img_size
    how = {"pad": "the longer side scaled to S and the rest filled with the mean colour "
                  f"{list(pp.fill)} (letterbox)",
           "crop": f"the shorter side scaled to {pp.crop_resize_size}, then the centre S x S cut out",
           "squash": "scaled to S x S, aspect ratio not kept"}[pp.resize_mode]
    return (f"float32 [N, 3, {s}, {s}] (N from 1 to {service.settings.max_files}), RGB, channels first, "
            "row-major: "
            f"each image resized with {pp.interpolation} interpolation to S = {s} ({how}), its 0..255 "
            f"values divided by 255, then per channel minus mean {list(pp.mean)} and divided by std "
            f"{list(pp.std)}. clarivis.runtime.resize and normalize compute exactly this.")


def output_names(service: Service) -> tuple[str, ...]:
    return MULTILABEL_OUTPUTS if service.config.multilabel else OUTPUTS


def metadata(service: Service) -> dict:
    c, n, s = service.config, service.config.num_classes, service.config.preprocess.img_size
    pp = c.preprocess
    answer = {
        "name": service.name,
        "versions": [service.version],
        "platform": PLATFORMS.get(service.backend.name, service.backend.name),
        "inputs": [
            {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1],
             "parameters": {"description": "encoded image files (JPEG, PNG, WebP, BMP, GIF, TIFF, PNM, "
                                           "DICOM), each a base64 string in JSON; the server decodes "
                                           "and preprocesses them"}},
            {"name": PIXELS_INPUT, "datatype": "FP32", "shape": [-1, 3, s, s],
             "parameters": {"description": pixels_description(service)}},
        ],
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1],
             "parameters": {"description": "the top class, or 'unknown' when the open-set check "
                                           "rejects the image"}},
            {"name": "confidence", "datatype": "FP32", "shape": [-1],
             "parameters": {"description": "calibrated probability of the top class"}},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, n],
             "parameters": {"description": "calibrated probabilities (softmax(logits / temperature)), "
                                           "in the order of class_names"}},
            {"name": "top_labels", "datatype": "BYTES", "shape": [-1, -1],
             "parameters": {"description": "the top_k classes, best first (top_k: a request "
                                           f"parameter, {TOP_K} by default)"}},
            {"name": "top_probabilities", "datatype": "FP32", "shape": [-1, -1],
             "parameters": {"description": "their calibrated probabilities"}},
        ],
        "parameters": {
            "class_names": list(c.class_names), "num_classes": n, "architecture": c.architecture,
            "model_version": service.version, "temperature": c.temperature,
            "open_set_threshold": (c.ood or {}).get("threshold"),
            "img_size": s, "resize_mode": pp.resize_mode, "interpolation": pp.interpolation,
            "mean": list(pp.mean), "std": list(pp.std), "crop_pct": pp.crop_pct, "task": c.task,
            "window": c.window,  # DICOM VOI window [center, width]; None: each file's own
        },
    }
    if c.multilabel:
        _describe_multilabel(answer, n)
        answer["parameters"] |= {"thresholds": c.label_thresholds(), "temperatures": c.label_temperatures(),
                                 "biases": c.label_biases()}
    return answer


def _describe_multilabel(answer: dict, n: int) -> None:
    """A multi-label model's outputs: its label set as text and as a mask, and what its
    probabilities mean (each class's own, not a distribution)."""
    outputs = {o["name"]: o for o in answer["outputs"]}
    joined = ("the set of labels whose calibrated probability reaches their class's threshold, "
              f"most probable first, joined by '{LABEL_SEP}' ('' for none)")
    outputs["label"]["parameters"]["description"] = joined
    outputs["confidence"]["parameters"]["description"] = "the highest calibrated probability of any class"
    outputs["probabilities"]["parameters"]["description"] = (
        "each class's calibrated probability, sigmoid(logit_c / temperatures[c] + biases[c]), in the "
        "order of class_names (they need not sum to 1)")
    answer["outputs"] += [
        {"name": "labels", "datatype": "BYTES", "shape": [-1], "parameters": {"description": joined}},
        {"name": "label_mask", "datatype": "BOOL", "shape": [-1, n],
         "parameters": {"description": "true where the class is in the image's set, in the order of "
                                       "class_names"}},
    ]


async def run_inference(service: Service, body: InferenceRequest) -> dict:
    if len(body.inputs) != 1:
        raise HTTPException(400, f"send exactly one input, '{IMAGE_INPUT}' (BYTES) or '{PIXELS_INPUT}' "
                                 f"(FP32) (got {len(body.inputs)})")
    (tensor,) = body.inputs
    wanted = _requested_outputs(body, output_names(service))
    k = _top_k(body, service.config.num_classes)
    # probabilities needs every class's; top_k=C gives them (ties broken in class order)
    model_k = service.config.num_classes if "probabilities" in wanted else k
    start = time.perf_counter()
    async with deadline(service.settings.timeout_s):
        if tensor.name == IMAGE_INPUT:
            _check_datatype(tensor, "BYTES")
            uploads = await decode_all(_encoded_images(tensor, service), service.settings,
                                       service.config.preprocess.img_size,
                                       window=service.config.preprocess.window)
            scored = await service.batcher.submit([(u.image, model_k) for u in uploads])
            sources = [(u.data, u.width, u.height) for u in uploads]
        elif tensor.name == PIXELS_INPUT:
            _check_datatype(tensor, "FP32")
            # off the event loop: 4 images of 224 px are 600k numbers (12 MB of JSON), 20-60 ms here
            pixels = await run_in_threadpool(_pixels, tensor, service)
            scored = await service.batcher.submit([(p, model_k) for p in pixels])
            s = service.config.preprocess.img_size
            sources = [(p.tobytes(), s, s) for p in pixels]
        else:
            raise HTTPException(400, f"unknown input '{tensor.name[:64]}'; send '{IMAGE_INPUT}' (BYTES, "
                                     f"encoded images) or '{PIXELS_INPUT}' (FP32, preprocessed pixels)")
    latency_ms = (time.perf_counter() - start) * 1000
    _record(service, scored, sources, latency_ms, stored=tensor.name == IMAGE_INPUT)
    response: dict[str, Any] = {
        "model_name": service.name, "model_version": service.version,
        "parameters": {"backend": service.backend.name, "latency_ms": latency_ms, "top_k": k},
        "outputs": [o for o in _outputs(scored, service.config.class_names, k, wanted)
                    if o["name"] in wanted],
    }
    if body.id is not None:
        response["id"] = body.id
    return response


def _record(service: Service, scored: list[Scored], sources: list[tuple[bytes, int, int]],
                  latency_ms: float, *, stored: bool) -> None:
    """The prediction log, the metrics and /v1/recent (Service.log_answers, as /v1/predict). Pixel
    arrays are logged by their hash and size only (`image` stays empty: they are not an image file)."""
    now = datetime.now(UTC)
    entries = []
    for s, (data, width, height) in zip(scored, sources, strict=True):
        fields = {"model_version": service.version, "label": s.label, "confidence": s.confidence,
                  "latency_ms": latency_ms, "width": width, "height": height, "ood_score": s.ood_score}
        entries.append(LoggedPrediction.from_upload(data, time=now, **fields) if stored else
                       LoggedPrediction(time=now, num_bytes=len(data),
                                        sha256=hashlib.sha256(data).hexdigest(), **fields))
    try:
        service.log_answers(entries)
    except ClarivisError as err:
        raise HTTPException(503, f"prediction not logged: {err}") from None


def _outputs(scored: list[Scored], class_names: list[str], k: int, wanted: set[str]) -> list[dict]:
    n, c = len(scored), len(class_names)
    index = {name: i for i, name in enumerate(class_names)}
    probabilities = np.zeros((n, c), dtype=np.float32)
    for row, s in enumerate(scored):
        for label, p in s.top_k:
            probabilities[row, index[label]] = p
    outputs = [
        {"name": "label", "datatype": "BYTES", "shape": [n], "data": [s.label for s in scored]},
        {"name": "confidence", "datatype": "FP32", "shape": [n], "data": [s.confidence for s in scored]},
        {"name": "probabilities", "datatype": "FP32", "shape": [n, c],
         "data": probabilities.ravel().tolist()},
        {"name": "top_labels", "datatype": "BYTES", "shape": [n, k],
         "data": [label for s in scored for label, _ in s.top_k[:k]]},
        {"name": "top_probabilities", "datatype": "FP32", "shape": [n, k],
         "data": [p for s in scored for _, p in s.top_k[:k]]},
    ]
    if "labels" in wanted or "label_mask" in wanted:  # only a multi-label model's outputs
        outputs += _label_set_outputs(scored, index)
    return outputs


def _label_set_outputs(scored: list[Scored], index: dict[str, int]) -> list[dict]:
    """A multi-label model's sets: joined names BYTES [N] and the mask BOOL [N, C]."""
    mask = np.zeros((len(scored), len(index)), dtype=bool)
    for row, s in enumerate(scored):
        for label, _ in s.labels or ():
            mask[row, index[label]] = True
    return [
        {"name": "labels", "datatype": "BYTES", "shape": [len(scored)],
         "data": [LABEL_SEP.join(label for label, _ in s.labels or ()) for s in scored]},
        {"name": "label_mask", "datatype": "BOOL", "shape": list(mask.shape), "data": mask.ravel().tolist()},
    ]


def _requested_outputs(body: InferenceRequest, known: tuple[str, ...]) -> set[str]:
    if body.outputs is None:
        return set(known)
    names = {o.name for o in body.outputs}
    unknown = sorted(names - set(known))
    if unknown:
        raise HTTPException(400, f"unknown output '{unknown[0][:64]}'; the outputs are {', '.join(known)}")
    return names


def _top_k(body: InferenceRequest, num_classes: int) -> int:
    value = (body.parameters or {}).get("top_k", TOP_K)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HTTPException(400, f"parameter top_k must be a whole number from 1 (got {str(value)[:40]})")
    return min(value, num_classes)


def _check_datatype(tensor: RequestInput, datatype: str) -> None:
    if tensor.datatype != datatype:
        raise HTTPException(400, f"input '{tensor.name}' must have datatype {datatype} (got "
                                 f"'{tensor.datatype[:20]}')")


def _batch_size(tensor: RequestInput, service: Service) -> int:
    n, limit = tensor.shape[0] if tensor.shape else 0, service.settings.max_files
    if not 1 <= n <= limit:
        raise HTTPException(400, f"input '{tensor.name}' holds {n} images; send 1 to {limit} per request")
    return n


def _encoded_images(tensor: RequestInput, service: Service) -> list[tuple[str, bytes]]:
    """BYTES [N]: N base64 strings -> (name for messages, bytes)."""
    if len(tensor.shape) != 1:
        raise HTTPException(400, f"input '{IMAGE_INPUT}' must have shape [N] (got {tensor.shape[:8]})")
    n = _batch_size(tensor, service)
    if len(tensor.data) != n:
        raise HTTPException(400, f"input '{IMAGE_INPUT}' has shape [{n}] but {len(tensor.data)} elements")
    out = []
    for i, item in enumerate(tensor.data):
        name = f"{IMAGE_INPUT}[{i}]"
        if not isinstance(item, str):
            raise HTTPException(400, f"{name}: send each image as a base64 string "
                                     f"(got {type(item).__name__})")
        try:
            out.append((name, base64.b64decode(item, validate=True)))
        except (binascii.Error, ValueError):
            raise HTTPException(400, f"{name}: not base64; send each image file base64-encoded") from None
    return out


def _pixels(tensor: RequestInput, service: Service) -> np.ndarray:
    """FP32 [N, 3, S, S]: the numbers, checked for shape and finiteness -> float32 array."""
    s = service.config.preprocess.img_size
    expected = f"[N, 3, {s}, {s}]"
    if len(tensor.shape) != 4 or list(tensor.shape[1:]) != [3, s, s]:
        raise HTTPException(400, f"input '{PIXELS_INPUT}' must have shape {expected} for this model "
                                 f"(got {tensor.shape[:8]}); see the model metadata")
    n = _batch_size(tensor, service)
    try:
        values = np.asarray(tensor.data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        values = np.asarray([None])  # ragged nesting: reported below as not numbers
    if values.dtype.kind not in "fiu":
        raise HTTPException(400, f"input '{PIXELS_INPUT}' must hold numbers only (FP32), flat or nested "
                                 f"as {expected}")
    if values.size != math.prod(tensor.shape):
        raise HTTPException(400, f"input '{PIXELS_INPUT}' has {values.size} values; shape "
                                 f"{tensor.shape} needs {math.prod(tensor.shape)}")
    with np.errstate(over="ignore", invalid="ignore"):
        pixels = values.astype(np.float32).reshape(n, 3, s, s)
    if not np.isfinite(pixels).all():
        raise HTTPException(400, f"input '{PIXELS_INPUT}' holds values that are not finite FP32 numbers "
                                 "(NaN, infinity, or beyond FP32's range)")
    return pixels


def _validation_message(exc: RequestValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {}
    where = " ".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg', 'invalid request')}"[:300]
