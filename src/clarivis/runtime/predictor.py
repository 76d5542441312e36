"""Predict from a ModelBundle's exported ONNX model with numpy, Pillow and onnxruntime only.
Torch is never imported here (a test checks sys.modules in a fresh interpreter)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clarivis.data.expand import ImageInput, expand_inputs
from clarivis.errors import ClarivisError, ImageDecodeError, ModelError
from clarivis.fileio import sha256_hex
from clarivis.prediction import UNKNOWN_LABEL, Prediction, multilabel_prediction
from clarivis.runtime.preprocess import RuntimePreprocess, decode, normalize, resize
from clarivis.spec import INT8_ONNX_NAME, ONNX_NAME, WEIGHTS_NAME, read_bundle_config, resolve_bundle_path

# 32 images of 224 px are 19 MB of float32: large enough that onnxruntime's per-call overhead
# vanishes, small enough for any machine.
DEFAULT_BATCH_SIZE = 32



RuntimePrediction = Prediction  # the same row as clarivis.api's predict gives


class Predictor:
    """A bundle's ONNX model with its preprocessing, temperature and open-set threshold; for a
    multi-label bundle its per-class temperatures and thresholds (the answer is a label set).

    Stable for callers (the service uses these): `predict(list of PIL images or paths)`,
    `class_names` (list[str], index i is output i), `config` (config.json as a dict)."""

    def __init__(self, bundle_dir: str | Path, *, int8: bool = False,
                 providers: list[str] | None = None, reject: bool = True,
                 threads: int | None = None, spin: bool = True) -> None:
        """`threads`: onnxruntime's intra-op threads [its default: one per core]. `spin`: let idle
        pool threads busy-wait for the next call (lowest latency for one caller in a loop); a
        server turns it off, since spinning threads take the cores its event loop needs (measured:
        ~3 ms of CPU per request at 32 px, more than the model itself)."""
        import onnxruntime as ort  # here, so that reading this module's docs costs nothing

        self.bundle_dir = resolve_bundle_path(bundle_dir)
        bundle = read_bundle_config(self.bundle_dir)  # the same parse and defaults as torch's
        self.config: dict[str, Any] = bundle.to_dict()
        self.preprocess = RuntimePreprocess(**bundle.preprocess.to_dict())
        self.temperature = bundle.temperature
        # Multi-label: sigmoid(logit_c / T_c + b_c) >= threshold_c picks class c, as Classifier does.
        self.multilabel = bundle.multilabel
        self.temperatures = np.asarray(bundle.label_temperatures(), dtype=np.float32)  # (C,)
        self.biases = np.asarray(bundle.label_biases(), dtype=np.float32)  # (C,)
        self.thresholds = bundle.label_thresholds()
        self.ood: dict[str, Any] | None = bundle.ood or None
        self.reject = reject  # answer "unknown" below the bundle's threshold (when it has one)
        self.model_path = self.bundle_dir / (INT8_ONNX_NAME if int8 else ONNX_NAME)
        if not self.model_path.is_file():
            flag = " --int8" if int8 else ""
            raise ModelError(f"{self.bundle_dir} has no {self.model_path.name}; "
                             f"run `clarivis export {self.bundle_dir}{flag}` first")
        _check_fresh(self.bundle_dir, self.config)
        # CPU by default: this runtime is for torch-free deployments, where the CPU provider is
        # the one every onnxruntime wheel has; pass e.g. ["CUDAExecutionProvider"] for a GPU.
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = max(1, int(threads))
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.model_path), sess_options=options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise ModelError(f"{self.model_path} cannot be loaded ({str(err).splitlines()[0][:160]}); "
                             f"run `clarivis export {self.bundle_dir}` again") from None
        self.input_name = self.session.get_inputs()[0].name

    @property
    def class_names(self) -> list[str]:
        return list(self.config["class_names"])

    def predict(self, images: ImageInput | Iterable[ImageInput], top_k: int = 5,
                batch_size: int = DEFAULT_BATCH_SIZE) -> list[RuntimePrediction]:
        """Paths or PIL images -> one row each, in order; unreadable files become error rows."""
        return list(self.iter_predict(images, top_k=top_k, batch_size=batch_size))

    def iter_predict(self, images: ImageInput | Iterable[ImageInput], top_k: int = 5,
                     batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[RuntimePrediction]:
        """Like predict, yielding rows batch by batch (bounded memory for long inputs). Paths are
        taken as files; predict_files also expands folders and globs."""
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        entries = ((f"<image {n}>", im) if isinstance(im, Image.Image) else (str(im), None)
                   for n, im in enumerate(images))
        yield from self._predict_entries(entries, top_k, batch_size)

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (N, 3, S, S), already normalised -> (N, C) raw logits."""
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        return self.session.run(None, {self.input_name: pixels})[0]

    def prepare(self, source: ImageInput) -> np.ndarray:
        """One path or PIL image -> uint8 (S, S, 3), the resized pixels predict normalises.
        Raises ImageDecodeError when a file is unreadable."""
        return resize(decode(source, self.preprocess), self.preprocess)

    def _predict_entries(self, entries: Iterable[tuple[str, Any]], top_k: int,
                         batch_size: int) -> Iterator[RuntimePrediction]:
        """(source, PIL image | error message | None: decode source) -> rows, in input order."""
        _check_counts(top_k, batch_size)
        k = min(top_k, len(self.class_names))
        pending: list[tuple[str, np.ndarray]] = []
        for source, item in entries:
            try:
                if isinstance(item, str):  # why the input names no readable file
                    raise ImageDecodeError(item)
                pending.append((source, self.prepare(source if item is None else item)))
            except ImageDecodeError as err:
                yield from self._flush(pending, k)  # earlier rows first: output keeps input order
                pending = []
                yield RuntimePrediction(source=source, error=str(err).removeprefix(f"{source}: "))
                continue
            if len(pending) >= batch_size:
                yield from self._flush(pending, k)
                pending = []
        yield from self._flush(pending, k)

    def _flush(self, pending: list[tuple[str, np.ndarray]], k: int) -> Iterator[RuntimePrediction]:
        if not pending:
            return
        logits = self.predict_pixels(normalize(np.stack([p for _, p in pending]), self.preprocess))
        if self.multilabel:  # no open-set check: a set may be empty, which says "none of these"
            probs = sigmoid(logits / self.temperatures + self.biases)  # (N, C), each class on its own
            for (source, _), row in zip(pending, probs, strict=True):
                yield multilabel_prediction(source, row.tolist(), self.class_names, self.thresholds, k)
            return
        probs = softmax(logits / np.float32(self.temperature))  # (N, C)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # (N, k) best first
        scores = ood_score(logits, self.temperature, self.ood["score"]) if self.ood else None
        names = self.class_names
        for n, (source, _) in enumerate(pending):
            top = [(names[i], float(probs[n, i])) for i in order[n]]
            score = float(scores[n]) if scores is not None else None
            rejected = self.reject and score is not None and score < float(self.ood["threshold"])
            yield RuntimePrediction(source=source, label=UNKNOWN_LABEL if rejected else top[0][0],
                                    confidence=top[0][1], top_k=top, ood_score=score)


def predict_files(model: str | Path, images: ImageInput | Iterable[ImageInput], *, top_k: int = 5,
                  batch_size: int = DEFAULT_BATCH_SIZE, int8: bool = False, reject: bool = True,
                  providers: list[str] | None = None) -> Iterator[RuntimePrediction]:
    """`clarivis predict --backend onnx`: files, folders or globs -> rows with Prediction's fields
    (the CLI printers take them as they are); missing files and empty folders are error rows."""
    _check_counts(top_k, batch_size)  # now, not at the first row: the CLI prints errors before rows
    predictor = Predictor(model, int8=int8, providers=providers, reject=reject)
    return predictor._predict_entries(expand_inputs(images), top_k, batch_size)


def _check_counts(top_k: int, batch_size: int) -> None:
    if top_k < 1:
        raise ClarivisError(f"--top-k must be at least 1 (got {top_k})")
    if batch_size < 1:
        raise ClarivisError(f"--batch-size must be at least 1 (got {batch_size})")


def _check_fresh(folder: Path, config: dict[str, Any]) -> None:
    """Refuse ONNX files exported from other weights than the bundle's (retrained since). Skipped
    when the weights are absent (an ONNX-only deployment) or the export left no record."""
    recorded = (config.get("export") or {}).get("weights_sha256")
    weights = folder / WEIGHTS_NAME
    if not recorded or not weights.is_file():
        return
    if sha256_hex(weights)[:len(recorded)] != recorded:
        raise ModelError(f"the ONNX files in {folder} were exported from other weights; "
                         f"run `clarivis export {folder}` again")


def softmax(x: np.ndarray) -> np.ndarray:
    """(N, C) -> (N, C) probabilities along the classes, stable for large logits."""
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Elementwise logistic, without overflow warnings for large negative inputs."""
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(np.float32)


def ood_score(logits: np.ndarray, temperature: float, score: str) -> np.ndarray:
    """(N, C) raw logits -> (N,) in-distribution score, as clarivis.evaluate.ood.ood_score."""
    logits = logits.astype(np.float32)
    scaled = logits / np.float32(temperature)
    if score == "energy":  # T * logsumexp(logits / T)
        peak = scaled.max(axis=1)
        return temperature * (peak + np.log(np.exp(scaled - peak[:, None]).sum(axis=1)))
    if score == "max_logit":
        return logits.max(axis=1)
    if score == "msp":
        return softmax(scaled).max(axis=1)
    raise ModelError(f"the bundle's open-set score {score!r} is unknown to this runtime; upgrade clarivis")
