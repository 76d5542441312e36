"""What the service may be asked for: one typed Settings object (create_app's options, the flags
of `clarivis serve`) and the defaults it starts from. Torch-free and free of the web framework,
so `clarivis serve --help` shows these defaults without importing torch or FastAPI."""

from __future__ import annotations

from dataclasses import dataclass

from clarivis.data.io import MAX_IMAGE_PIXELS
from clarivis.errors import ClarivisError
from clarivis.serve.batching import MAX_BATCH, MAX_QUEUE, MAX_WAIT_MS

HOST = "127.0.0.1"  # loopback: exposing the service is a deliberate --host 0.0.0.0
PORT = 8000
# A request (upload, decode, queue, model, log) that takes 30 s is stuck, not slow: a 64-image
# request of 224 px photos on one CPU core takes ~3 s. The client gets 504 and may retry.
TIMEOUT_S = 30.0
# 32 MB a request holds a full-resolution photo from any phone or DSLR (a 48 MP JPEG is 12-25 MB)
# and a handful of ordinary ones, and bounds what one request makes the server hold in memory.
MAX_UPLOAD_MB = 32.0
# The limit predict and training use (64 MP, ~192 MB decoded): the service reads every image the
# CLI reads. Larger headers are rejected before decoding (decompression bombs).
MAX_PIXELS = MAX_IMAGE_PIXELS
# Images a request may carry: keeps one request from holding the batcher for long.
MAX_FILES = 64
# Pixels one request may make the server decode, summed over its images from their headers
# before any is decoded (a JPEG counts at the DCT scale it decodes at, 1/8 of a photo's side
# for a 224 px model). 4 images at the per-image limit: 64 blank 8000x8000 PNGs fit in 12 MB
# and would take ~2 minutes of CPU to decode (~2 s each on a shared core); 256 MP is ~8 s, well
# inside the request timeout, and still takes 64 photos of 4 MP, or 64 phone JPEGs of any size.
# Memory does not grow with it: images are decoded one at a time and reduced straight away.
MAX_REQUEST_PIXELS = 4 * MAX_PIXELS


@dataclass(frozen=True)
class Settings:
    """Everything create_app was asked for (one typed object, not a dozen parameters);
    /v1/model shows it (without the key)."""

    backend: str = "torch"
    model_name: str | None = None  # the name clients address (v2 /v2/models/NAME) [the run folder's]
    device: str | None = None
    api_key: str | None = None
    db_url: str | None = None
    store_images: bool = False
    max_upload_mb: float = MAX_UPLOAD_MB
    max_pixels: int = MAX_PIXELS
    max_files: int = MAX_FILES
    max_request_pixels: int = MAX_REQUEST_PIXELS  # decoded pixels of all images of one request
    max_queue: int = MAX_QUEUE  # images waiting for the model before requests get 429
    timeout_s: float = TIMEOUT_S
    max_batch: int = MAX_BATCH
    max_wait_ms: float = MAX_WAIT_MS
    model_threads: int | None = None  # the model's threads per process [all cores; cores / workers]
    # Who may connect (serve/security.py): the bind address decides the Host names allowed.
    host: str = HOST
    allowed_hosts: tuple[str, ...] = ()  # Host header names besides the bind address; "*" = any
    public_metrics: bool = False  # /metrics without the key, for a Prometheus scraper
    # /v1/recent and the monitor's review queue show every client's traffic (labels, hashes):
    # off unless the operator asks, so one client never sees what another sent.
    expose_recent: bool = False
    # A vector index (clarivis index) to answer /v1/search from; None: no search endpoint.
    index: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_request_pixels", "max_queue"):
            value = getattr(self, name)
            if value < 1:
                raise ClarivisError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
