"""The public Python API: `train(...)` and `Classifier` (load, predict, evaluate).
The CLI is a thin layer over these."""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from clarivis.config import build_config
from clarivis.data.batch_augment import Normalize
from clarivis.data.dataset import ImageDataset, model_pixels, pil_to_uint8
from clarivis.data.expand import ImageInput, expand_inputs
from clarivis.data.io import to_rgb
from clarivis.data.scan import scan_images
from clarivis.data.sources import Sample, evaluation_samples, index_dataset
from clarivis.data.transforms import eval_transform, resize_transform
from clarivis.errors import ClarivisError, DataError, ImageDecodeError
from clarivis.evaluate.calibration import calibrate_bundle, calibration_report
from clarivis.evaluate.inputs import load_labeled_pixels, model_logits
from clarivis.evaluate.metrics import EvaluationResult, compute_metrics
from clarivis.evaluate.ood import ood_score
from clarivis.models.bundle import BundleConfig, load_bundle
from clarivis.prediction import UNKNOWN_LABEL, Prediction
from clarivis.training.defaults import resolve_device
from clarivis.training.loop import TrainResult, run_training


def train(
    data: str | Path,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    config: str | Path | None = None,
    console: Console | None = None,
    **settings: Any,
) -> TrainResult:
    """Train a classifier on `data`; settings are TrainConfig fields (model=, epochs=, ...)."""
    if out is not None:
        settings["out"] = str(out)
    resolved = build_config(config, data=str(data), **settings)
    result = run_training(resolved, resume=resume, console=console)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 alone writes files
        console = console or Console(stderr=True, soft_wrap=True)
        scored = _evaluate_run(result, console, resolved.device)
        if resolved.report:
            # Imported here: the report's modules (jinja2, matplotlib) are for runs that write one.
            from clarivis.report.html import write_report

            path = write_report(result.run_dir, device=resolved.device, scored=scored)
            console.print(f"report: {path}")
    return result


def _evaluate_run(result: TrainResult, console: Console, device: str | None = None):
    """Validation metrics of the saved (best) model, written into the run folder. Returns the
    scored validation split (report.gallery.ScoredValidation) for the report, or None."""
    from clarivis.report.gallery import ScoredValidation
    from clarivis.report.html import VAL_CALIBRATION_NAME

    split = json.loads((result.run_dir / "split.json").read_text())
    if not split["val"] or not (result.bundle_dir / "config.json").exists():
        return None
    clf = Classifier.load(result.bundle_dir, device=device)
    val = load_labeled_pixels(clf, [Sample(v["path"], v["label"]) for v in split["val"]])
    logits = model_logits(clf, val.pixels)
    clf.config = calibrate_bundle(result.bundle_dir, logits, val.targets)
    probs = torch.softmax(logits / clf.config.temperature, dim=1)
    evaluation = compute_metrics(probs, val.targets, clf.class_names)
    evaluation.skipped = val.skipped
    save_evaluation(evaluation, result.run_dir / "val_metrics.json")
    reliability = calibration_report(logits, val.targets, clf.config.temperature)
    (result.run_dir / VAL_CALIBRATION_NAME).write_text(json.dumps(reliability, indent=2))
    cal = clf.config.calibration
    ece = (f"ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f} (temperature "
           f"{cal['temperature']:.2f})" if "ece_after" in cal else f"ECE {evaluation.ece:.3f}")
    console.print(
        f"best model (epoch {result.best_epoch}): val accuracy {evaluation.accuracy:.3f}, "
        f"balanced {evaluation.balanced_accuracy:.3f}, {ece}"
    )
    return ScoredValidation(clf, val, logits)


class Classifier:
    """A trained model with its preprocessing and class names, restored from a ModelBundle."""

    def __init__(self, model: torch.nn.Module, config: BundleConfig, device: torch.device, *,
                 reject: bool = True):
        # channels_last, as in training: oneDNN and cuDNN run convolutions fastest in it.
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.config = config
        self.device = device
        self.transform = eval_transform(config.preprocess)  # uint8 (3, H, W) -> float (3, S, S)
        # Predict and evaluate split it: the resize per image, the normalisation per batch.
        # Public: every stage that feeds the model (audit, explain, attacks) uses these two.
        self.resize = resize_transform(config.preprocess)  # uint8 (3, H, W) -> uint8 (3, S, S)
        self.normalize = Normalize(config.preprocess, device)  # uint8 (N, 3, S, S) -> float
        # Answer "unknown" below the bundle's open-set threshold (when training fitted one).
        self.reject = reject

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, *, reject: bool = True) -> Classifier:
        dev = resolve_device(device)
        model, config = load_bundle(path, device=dev)
        return cls(model, config, dev, reject=reject)

    @property
    def class_names(self) -> list[str]:
        return self.config.class_names

    @torch.no_grad()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) preprocessed batch -> (N, C) raw logits on the CPU."""
        batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        return self.model(batch).float().cpu()

    def predict_proba(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) preprocessed batch -> (N, C) calibrated probabilities."""
        return torch.softmax(self.logits(batch) / self.config.temperature, dim=1)

    def predict(
        self, images: ImageInput | Iterable[ImageInput], *, top_k: int = 5, batch_size: int = 64
    ) -> list[Prediction]:
        """Predict files, folders, globs or PIL images; unreadable files become error rows."""
        return list(self.iter_predict(images, top_k=top_k, batch_size=batch_size))

    def iter_predict(
        self, images: ImageInput | Iterable[ImageInput], *, top_k: int = 5, batch_size: int = 64
    ) -> Iterator[Prediction]:
        """Like predict, but yields rows batch by batch (bounded memory for large folders)."""
        if top_k < 1:
            raise ClarivisError(f"--top-k must be at least 1 (got {top_k})")
        _check_batch_size(batch_size)
        k = min(top_k, len(self.class_names))
        pending: list[tuple[str, torch.Tensor]] = []
        # Decoding and resizing run in threads, a few batches ahead of the model, in input order.
        prepared = _ordered_map(self.prepare, expand_inputs(images), window=2 * batch_size)
        for source, item in prepared:
            if isinstance(item, str):  # an error message
                yield from self._flush(pending, k)
                pending = []
                yield Prediction(source=source, error=item)
                continue
            pending.append((source, item))
            if len(pending) >= batch_size:
                yield from self._flush(pending, k)
                pending = []
        yield from self._flush(pending, k)

    def prepare(self, entry: tuple[str, Any]) -> tuple[str, torch.Tensor | str]:
        """(source, None: decode the file | PIL image | error message) -> (source, resized uint8
        image or error message)."""
        source, item = entry
        if isinstance(item, str):
            return source, item
        try:
            if item is None:
                pixels = model_pixels(source, self.config.preprocess.img_size)
            else:
                pixels = pil_to_uint8(to_rgb(item))
        except ImageDecodeError as err:
            return source, str(err).removeprefix(f"{source}: ")
        return source, self.resize(pixels)

    def _flush(self, pending: list[tuple[str, torch.Tensor]], k: int) -> Iterator[Prediction]:
        if not pending:
            return
        pixels = torch.stack([t for _, t in pending]).to(self.device)  # uint8 (N, 3, S, S)
        logits = self.logits(self.normalize(pixels))
        values, indices = torch.softmax(logits / self.config.temperature, dim=1).topk(k, dim=1)
        ood = self.config.ood
        scores = ood_score(logits, self.config.temperature, ood["score"]).tolist() if ood else None
        for n, ((source, _), vals, idxs) in enumerate(zip(pending, values.tolist(), indices.tolist(),
                                                          strict=True)):
            top = [(self.class_names[i], float(v)) for v, i in zip(vals, idxs, strict=True)]
            score = scores[n] if scores else None
            rejected = self.reject and score is not None and score < ood["threshold"]
            yield Prediction(source=source, label=UNKNOWN_LABEL if rejected else top[0][0],
                             confidence=top[0][1], top_k=top, ood_score=score)

    def evaluate(self, data: str | Path, *, batch_size: int = 64) -> EvaluationResult:
        """Metrics on a labeled dataset (its test split when it has one, else all images)."""
        _check_batch_size(batch_size)
        index = index_dataset(data)
        samples = evaluation_samples(index)
        unknown = sorted({s.label for s in samples} - set(self.class_names))
        if unknown:
            raise DataError(
                f"{data} has classes the model does not know ({', '.join(unknown[:5])}); "
                f"the model's classes are {', '.join(self.class_names[:10])}"
            )
        return self.evaluate_samples(samples, batch_size=batch_size)

    def evaluate_samples(self, samples: list[Sample], *, batch_size: int = 64) -> EvaluationResult:
        """Metrics on labeled samples whose labels are among the model's classes."""
        scan = scan_images(samples)
        if not scan.samples:
            raise DataError(f"none of the {len(samples)} images could be read; check the files")
        class_to_idx = {name: i for i, name in enumerate(self.class_names)}
        dataset = ImageDataset(scan.samples, class_to_idx, self.resize, scan.images,
                               img_size=self.config.preprocess.img_size)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
        probs, targets = [], []
        for pixels, target in loader:  # uint8 (N, 3, S, S), normalised per batch as in predict
            probs.append(self.predict_proba(self.normalize(pixels.to(self.device))))
            targets.append(target)
        result = compute_metrics(torch.cat(probs), torch.cat(targets), self.class_names)
        result.skipped = [{"path": p, "reason": r} for p, r in scan.skipped]
        return result


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ClarivisError(f"--batch-size must be at least 1 (got {batch_size})")


def save_evaluation(result: EvaluationResult, json_path: str | Path) -> tuple[Path, Path]:
    """Write the metrics JSON and a confusion-matrix PNG beside it."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result.to_dict(), indent=2))
    png = json_path.with_name(json_path.stem + "_confusion.png")
    from clarivis.report.plots import save_confusion_matrix  # matplotlib: only when drawing

    save_confusion_matrix(result.confusion_matrix, result.class_names, png)
    return json_path, png


def _ordered_map(fn, items: Iterator, *, window: int, workers: int | None = None) -> Iterator:
    """fn over items in threads, results in input order, at most `window` items in flight
    (Executor.map would submit the whole iterator at once: unbounded memory)."""
    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        in_flight: deque = deque()
        for item in items:
            in_flight.append(pool.submit(fn, item))
            if len(in_flight) >= window:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()
