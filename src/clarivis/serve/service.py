"""The service's state for one ModelBundle: the model behind the micro-batcher, the explainer, the
prediction log, the monitor and the metrics. The routes (api_v1, api_v2, ops) read it; app.py
builds it and the FastAPI app around it."""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import clarivis
from clarivis.errors import ClarivisError
from clarivis.prediction import LABEL_SEP, check_backend
from clarivis.serve.backends import Backend, Scored, load_backend
from clarivis.serve.batching import MicroBatcher
from clarivis.serve.metrics import ServiceMetrics
from clarivis.serve.monitor import ServiceMonitor, split_label_set
from clarivis.serve.predlog import TEXT_LIMITS, LoggedPrediction, PredictionLog
from clarivis.serve.settings import Settings
from clarivis.spec import bundle_version, read_bundle_config, resolve_bundle_path

log = logging.getLogger("clarivis.serve")

# A model name travels in URLs (/v2/models/NAME): letters, digits, '.', '_' and '-' only.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RECENT = 50  # predictions /v1/recent can show (memory only; the log keeps all)


class Service:
    """The app's state: the model behind the batcher, the explainer, the log, the metrics."""

    def __init__(self, model_dir: str | Path, settings: Settings) -> None:
        check_settings(settings)
        self.settings = settings
        self.model_dir = resolve_bundle_path(model_dir)
        self.config = read_bundle_config(self.model_dir)
        self._class_names = frozenset(self.config.class_names)
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
        self.searcher = _open_index(settings.index, settings.device)
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

    def log_answers(self, entries: list[LoggedPrediction]) -> None:
        """One request's answered predictions into the log, the metrics and /v1/recent (every
        route that predicts calls this). On the event loop: record() appends one journal line (no
        database I/O, no fsync while the database answers), cheaper than a thread-pool hop.
        Raises ClarivisError when the journal cannot be written.

        A multi-label answer counts once for each label of its set in the per-label counter
        (an empty set under the label "")."""
        multilabel = self.config.multilabel
        for e in entries:
            for label in self._label_set(e.label) if multilabel else (e.label,):
                self.metrics.predictions.labels(label).inc()
            if multilabel:
                e.label = fit_label_set(e.label)
        self.log.record(entries)
        for e in entries:
            self.recent.appendleft({"time": e.time.isoformat(), "label": e.label, "confidence": e.confidence,
                                    "latency_ms": e.latency_ms, "width": e.width, "height": e.height,
                                    "sha256": e.sha256[:12]})

    def _label_set(self, joined: str) -> list[str]:
        """A multi-label answer's label -> its names; the empty set -> [""], so an image with
        no label is counted too."""
        return split_label_set(joined, self._class_names) or [""]

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


def fit_label_set(joined: str, limit: int = TEXT_LIMITS["label"]) -> str:
    """A label set as the log's label column holds it: whole labels, most probable first, as
    many as fit (a set of many long names could pass the column's limit, and the log would then
    refuse the prediction and the client get a 503)."""
    if len(joined) <= limit:
        return joined
    kept: list[str] = []
    for name in joined.split(LABEL_SEP):
        if len(LABEL_SEP.join([*kept, name])) > limit:
            break
        kept.append(name)
    return LABEL_SEP.join(kept)


def default_model_name(model_dir: Path) -> str:
    """The run folder's name (runs/NAME/model -> NAME), made URL-safe."""
    folder = model_dir.parent if model_dir.name == "model" else model_dir
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name).strip("-.") or "model"
    return name[:64]


def check_servable(model_dir: str | Path, settings: Settings) -> None:
    """What create_app would refuse, checked without loading the model: the parent of several
    workers fails once with one line instead of each worker failing with a traceback."""
    check_settings(settings)
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


def check_settings(s: Settings) -> None:
    check_backend(s.backend)
    for name in ("max_upload_mb", "max_pixels", "max_files", "timeout_s", "max_batch"):
        if getattr(s, name) <= 0:
            raise ClarivisError(f"--{name.replace('_', '-')} must be positive (got {getattr(s, name)})")
    if s.model_name is not None and not MODEL_NAME.match(s.model_name):
        raise ClarivisError(f"--model-name '{s.model_name[:70]}' is not usable in a URL; use letters, "
                            "digits, '.', '_' and '-' (at most 64)")
    if s.max_wait_ms < 0:
        raise ClarivisError(f"--max-wait-ms must not be negative (got {s.max_wait_ms})")


def _open_index(index: str | None, device: str | None):
    """The vector index /v1/search answers from (clarivis.index.Searcher), or None. Loaded at
    start, so a bad --index fails before the port opens; it loads the index's torch encoder."""
    if index is None:
        return None
    from clarivis.index import Searcher  # torch and usearch: only a service given --index

    return Searcher(index, device)
