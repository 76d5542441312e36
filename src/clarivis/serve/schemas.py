"""The JSON the service answers, as pydantic models: routes name them as `response_model`, so
/openapi.json (and /docs) describe every answer, and a route that drifts from its model fails
loudly instead of sending clients something undocumented.

clarivis' own API (v1, ops) answers errors as {"detail": "one line"}; the Open Inference
Protocol (v2) as {"error": "one line"}, as that protocol says.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# ----------------------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    """Every 4xx/5xx of clarivis' own API: one line, never a traceback."""

    detail: str = Field(description="what went wrong and what to do, in one line")


class V2Error(BaseModel):
    """Every 4xx/5xx of the Open Inference Protocol routes (its $inference_error_response)."""

    error: str = Field(description="what went wrong and what to do, in one line")


_ERROR_TEXT = {
    400: "Bad request (v2: any invalid request); or a Host header this server does not answer to",
    401: "Missing or wrong API key (the server was started with --api-key)",
    404: "Not found: an unknown model name or version, or a feature the server does not expose",
    413: "Body over the upload limit, or an image over the pixel limit",
    415: "Not an image clarivis reads, or not multipart/form-data",
    422: "Invalid request: a parameter out of range, an empty or corrupt image, no `file` field",
    429: "Too many images waiting for the model; retry after the Retry-After header's seconds",
    503: "Not ready, or the prediction could not be logged",
    504: "The request took longer than the server's time limit",
}


def errors(*statuses: int, model: type[BaseModel] = ErrorDetail) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: the error statuses it may answer, each with its body's model."""
    return {s: {"model": model, "description": _ERROR_TEXT[s]} for s in statuses}


# ----------------------------------------------------------------------------- v1 and ops


class TopLabel(BaseModel):
    label: str
    probability: float = Field(description="calibrated probability (the bundle's temperature applied)")


class ImagePrediction(BaseModel):
    filename: str = Field(description="the client's file name, base name only")
    label: str = Field(description="the top class, or 'unknown' when the open-set check rejects the image; "
                                   "multi-label models: the names in `labels` joined by ';' ('' for none)")
    confidence: float = Field(description="calibrated probability of the top class")
    top_k: list[TopLabel] = Field(description="best first; multi-label models: each probability is the "
                                              "class's own (they need not sum to 1)")
    labels: list[TopLabel] | None = Field(None, description="multi-label models only: every class whose "
                                                            "calibrated probability reaches its threshold, "
                                                            "most probable first (empty: none does)")
    ood_score: float | None = Field(description="in-distribution score (higher: more like the training "
                                                "data); null when the bundle has no open-set check")
    width: int = Field(description="pixels, as stored in the file")
    height: int
    sha256: str = Field(description="of the uploaded bytes, hex")


class PredictResponse(BaseModel):
    model_name: str
    model_version: str
    backend: str = Field(description="torch | onnx")
    latency_ms: float = Field(description="from the request's arrival to the model's answer")
    predictions: list[ImagePrediction] = Field(description="one per `file` field, in request order")


class Limits(BaseModel):
    max_upload_mb: float
    max_pixels: int
    max_files: int
    timeout_s: float
    max_request_pixels: int = Field(description="decoded pixels all images of one request may have")
    max_queue: int = Field(description="images waiting for the model before requests get 429")


class Batching(BaseModel):
    max_batch: int
    max_wait_ms: float


class PredictionLogInfo(BaseModel):
    database: str = Field(description="the database's dialect (sqlite, postgresql, ...), never its URL")
    store_images: bool


class ModelInfo(BaseModel):
    name: str = Field(description="the name clients address, e.g. /v2/models/NAME")
    model_version: str = Field(description="first 12 hex digits of the weights' SHA-256")
    clarivis_version: str = Field(description="the clarivis that trained the bundle")
    architecture: str
    num_classes: int
    class_names: list[str] = Field(description="index i is the model's output i")
    input_size: list[int] = Field(description="[3, S, S]: channels, height, width")
    resize_mode: str = Field(description="pad | crop | squash")
    temperature: float = Field(description="calibration: probabilities are softmax(logits / temperature)")
    task: Literal["multiclass", "multilabel"] = Field(
        description="multiclass: one label an image; multilabel: a set of labels, each class decided "
                    "on its own (sigmoid(logit_c / temperatures[c] + biases[c]) >= thresholds[c])")
    thresholds: list[float] | None = Field(description="multilabel: each class's decision threshold, "
                                                       "in class_names order; null otherwise")
    temperatures: list[float] | None = Field(description="multilabel: each class's sigmoid temperature; "
                                                         "null otherwise")
    biases: list[float] | None = Field(None, description="multilabel: each class's logit shift after "
                                                         "its temperature; null otherwise")
    search: dict[str, Any] | None = Field(None, description="with --index: {images: N, text: whether "
                                                            "/v1/search takes words (a CLIP index)}")
    window: list[float] | None = Field(None, description="DICOM uploads are decoded with this VOI window "
                                                         "[center, width]; null: each file's own")
    open_set_threshold: float | None = Field(description="below it the label is 'unknown'")
    training: dict[str, Any] = Field(description="the training summary (no data path)")
    backend: str
    started_at: str = Field(description="ISO 8601, UTC")
    limits: Limits
    batching: Batching
    prediction_log: PredictionLogInfo
    auth_required: bool
    expose_recent: bool


class SearchHit(BaseModel):
    id: int = Field(description="the image's key in the index: GET /v1/search/image/{id} is its thumbnail")
    path: str = Field(description="the image's path relative to the indexed collection's root")
    score: float = Field(description="cosine similarity of the embeddings, -1..1 (1: the same image)")
    metadata: dict[str, Any] = Field(description="the manifest columns it was indexed with")


class SearchQuery(BaseModel):
    query: str = Field(description="the uploaded file's name, or the words")
    results: list[SearchHit] = Field(description="most similar first")


class SearchResponse(BaseModel):
    index_size: int = Field(description="images in the index")
    queries: list[SearchQuery] = Field(description="one result list per uploaded image (or the text)")


class Health(BaseModel):
    status: Literal["ok"]


class PredictionLogStatus(BaseModel):
    """The prediction log's writer (serve/predlog.py PredictionLog.status): shown, never deciding
    readiness (with the database down, predictions are journaled locally and still answered)."""

    model_config = ConfigDict(extra="allow")  # fields may be added; clients read the ones they know

    db_reachable: bool = Field(description="the last write attempt (or the check at start) reached it")
    pending_rows: int = Field(description="journaled, not yet in the database")
    adopted_files: int = Field(description="journal files of stopped processes still to replay")
    rejected_rows: int
    last_error: str | None = Field(description="one line")
    last_write: str | None = Field(description="ISO 8601, UTC")
    accepting: bool = Field(description="the log takes new predictions")


class ReadinessChecks(BaseModel):
    model_config = ConfigDict(extra="allow")  # checks may be added; clients read the ones they know

    model: bool = Field(description="the model answered its warm-up inference and its worker runs")
    prediction_log: PredictionLogStatus


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: ReadinessChecks
    model_name: str
    model_version: str


class MonitorReport(BaseModel):
    """clarivis monitor's report for this server's log (serve/monitor.py); its sections are
    documented there. Fields beyond these are part of the report too."""

    model_config = ConfigDict(extra="allow")

    model_version: str
    generated_at: str
    total_predictions: int
    review_queue: list[dict[str, Any]] = Field(description="empty unless the server runs --expose-recent")
    notes: list[str]


class RecentPrediction(BaseModel):
    time: str
    label: str
    confidence: float
    latency_ms: float
    width: int
    height: int
    sha256: str = Field(description="first 12 hex digits of the upload's SHA-256")


class RecentResponse(BaseModel):
    predictions: list[RecentPrediction] = Field(description="newest first")


# ----------------------------------------------------------------------------- v2 (Open Inference Protocol)

# A parameter's value is a string, a number or a boolean in the protocol; clarivis also puts lists
# (the class names) in the model metadata's parameters.
Parameters = dict[str, Any]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="BYTES | FP32 | BOOL")
    shape: list[int] = Field(description="-1: any size")
    parameters: Parameters | None = None


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata] = Field(description="send exactly one of these inputs per request")
    outputs: list[TensorMetadata]
    parameters: Parameters | None = None


# The schema says what this server takes (`json_schema_extra`: documented, not enforced by
# pydantic), so clients and fuzzers know; the routes check it and answer a V2Error that says
# what to send instead of pydantic's generic message.


class RequestInput(BaseModel):
    name: str = Field(json_schema_extra={"enum": ["image", "pixels"]},
                      description="image (BYTES: encoded image files) or pixels (FP32: preprocessed); "
                                  "see the model metadata")
    shape: list[int] = Field(description="the whole batch's shape: [N] for image, [N, 3, S, S] for pixels",
                             json_schema_extra={"items": {"type": "integer", "minimum": 0}})
    datatype: str = Field(json_schema_extra={"enum": ["BYTES", "FP32"]})
    parameters: Parameters | None = None
    data: list[Any] = Field(description="row-major, flat or nested; BYTES elements are base64 strings",
                            json_schema_extra={"minItems": 1})


class RequestOutput(BaseModel):
    name: str
    parameters: Parameters | None = None


class InferenceRequest(BaseModel):
    id: str | None = Field(None, description="echoed in the response")
    parameters: Parameters | None = Field(
        None, description="top_k: labels per image in top_labels and top_probabilities [5]",
        json_schema_extra={"properties": {"top_k": {"type": "integer", "minimum": 1}}})
    inputs: list[RequestInput] = Field(description="exactly one input: image or pixels",
                                       json_schema_extra={"minItems": 1, "maxItems": 1})
    outputs: list[RequestOutput] | None = Field(None, description="the outputs to return [all]")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] = Field(description="row-major, flat")


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]
