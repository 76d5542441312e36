"""The inference core: `Classifier`, a ModelBundle's model with its preprocessing and class
names. Everything that runs a model on images (predict, evaluate, embeddings, explain, active
labeling, the audit) goes through its one batch loop, `iter_batches`: inputs are expanded
lazily, decoded and resized in threads a few batches ahead, and handed over as uint8 batches,
with unreadable inputs reported in input order."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from clarivis.data.batch_augment import Normalize
from clarivis.data.dataset import ImageDataset, label_targets, model_pixels, pil_to_uint8
from clarivis.data.expand import ImageInput, expand_inputs
from clarivis.data.io import to_rgb
from clarivis.data.scan import scan_images
from clarivis.data.sources import Sample, evaluation_samples, index_dataset
from clarivis.data.transforms import eval_transform, resize_transform
from clarivis.device import resolve_device
from clarivis.errors import ClarivisError, DataError, ImageDecodeError
from clarivis.metrics import EvaluationResult, compute_metrics, ood_score
from clarivis.models.bundle import load_bundle
from clarivis.prediction import LABEL_SEP, UNKNOWN_LABEL, Prediction, multilabel_prediction
from clarivis.spec import BundleConfig

if TYPE_CHECKING:
    from clarivis.multilabel_metrics import MultilabelEvaluation

CHUNK = 128  # images per forward pass over already-decoded pixels (bounded activation memory)


@dataclass
class ImageBatch:
    """Readable inputs, decoded and resized: what the model gets next."""

    sources: list[str]  # file path, or "<image N>" for in-memory images
    pixels: torch.Tensor  # uint8 (n, 3, S, S), resized, not normalised


@dataclass
class Unusable:
    """An input that gives no image: unreadable (reason set), or passed over by `exclude`."""

    source: str
    reason: str | None  # None: excluded by the caller, not an error


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

    # ------------------------------------------------------------------ forward passes

    @torch.no_grad()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) preprocessed batch -> (N, C) raw logits on the CPU."""
        batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        return self.model(batch).float().cpu()

    def predict_proba(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) preprocessed batch -> (N, C) calibrated probabilities (multi-label
        models: each class's own sigmoid, so a row need not sum to 1)."""
        return self.probabilities(self.logits(batch))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, C) raw logits -> calibrated probabilities: softmax(logits / T), or, multi-label,
        sigmoid(logit_c / T_c + b_c) a class."""
        if self.config.multilabel:
            return torch.sigmoid(self.label_logits(logits))
        return torch.softmax(logits / self.config.temperature, dim=1)

    def label_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Multi-label: (N, C) raw logits -> calibrated ones, logit_c / T_c + b_c (their sigmoid
        is `probabilities`; a per-label BCE is taken on them)."""
        temperatures = torch.as_tensor(self.config.label_temperatures(), dtype=torch.float32)
        biases = torch.as_tensor(self.config.label_biases(), dtype=torch.float32)
        return logits.float() / temperatures + biases

    @torch.no_grad()
    def embed_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) preprocessed batch -> (N, D) pre-logits features on the CPU (timm's
        forward_features + forward_head(pre_logits=True): what the classifier head sees)."""
        batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        net = self.model
        return net.forward_head(net.forward_features(batch), pre_logits=True).flatten(1).float().cpu()

    def pixel_logits(self, pixels: torch.Tensor, *, batch_size: int = CHUNK) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> float32 (N, C) raw logits (before the temperature), on the CPU."""
        return self._in_chunks(self.logits, pixels, batch_size, width=len(self.class_names))

    def pixel_embeddings(self, pixels: torch.Tensor, *, batch_size: int = CHUNK) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> float32 (N, D) pre-logits features, on the CPU."""
        return self._in_chunks(self.embed_batch, pixels, batch_size, width=0)

    def _in_chunks(self, forward: Callable, pixels: torch.Tensor, batch_size: int, *,
                   width: int) -> torch.Tensor:
        out = [forward(self.normalize(pixels[i:i + batch_size].to(self.device)))
               for i in range(0, len(pixels), batch_size)]
        return torch.cat(out) if out else torch.empty(0, width)

    # ------------------------------------------------------------------ the batch loop

    def prepare(self, entry: tuple[str, Any]) -> tuple[str, torch.Tensor | str]:
        """(source, None: decode the file | PIL image | error message) -> (source, resized uint8
        image or error message)."""
        source, item = entry
        if isinstance(item, str):
            return source, item
        try:
            if item is None:
                pp = self.config.preprocess
                pixels = model_pixels(source, pp.img_size, window=pp.window)
            else:
                pixels = pil_to_uint8(to_rgb(item))
        except ImageDecodeError as err:
            return source, str(err).removeprefix(f"{source}: ")
        return source, self.resize(pixels)

    def iter_batches(self, images: ImageInput | Iterable[ImageInput], *, batch_size: int = 64,
                     exclude: Callable[[str], bool] | None = None,
                     threads: bool = True) -> Iterator[ImageBatch | Unusable]:
        """Files, folders, globs or PIL images -> ImageBatch of up to `batch_size` readable
        images, and Unusable for each input that gives none, in input order (a batch is handed
        over before the next Unusable). `exclude(path)` passes files over without decoding."""
        check_batch_size(batch_size)

        def prepare(entry):
            if exclude is not None and entry[1] is None and exclude(entry[0]):
                return entry[0], None
            return self.prepare(entry)

        entries = expand_inputs(images)
        prepared = (ordered_map(prepare, entries, window=2 * batch_size) if threads
                    else map(prepare, entries))
        pending: list[tuple[str, torch.Tensor]] = []
        for source, item in prepared:
            if isinstance(item, torch.Tensor):
                pending.append((source, item))
                if len(pending) == batch_size:
                    yield _batch(pending)
                    pending = []
                continue
            if pending:  # earlier images first: the output keeps the input order
                yield _batch(pending)
                pending = []
            yield Unusable(source, item)
        if pending:
            yield _batch(pending)

    # ------------------------------------------------------------------ predict and evaluate

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
        k = min(top_k, len(self.class_names))
        for item in self.iter_batches(images, batch_size=batch_size):
            if isinstance(item, Unusable):
                yield Prediction(source=item.source, error=item.reason)
            else:
                yield from self._predictions(item, k)

    def _predictions(self, batch: ImageBatch, k: int) -> Iterator[Prediction]:
        logits = self.logits(self.normalize(batch.pixels.to(self.device)))
        if self.config.multilabel:
            thresholds = self.config.label_thresholds()
            for source, probs in zip(batch.sources, self.probabilities(logits).tolist(), strict=True):
                yield multilabel_prediction(source, probs, self.class_names, thresholds, k)
            return
        values, indices = torch.softmax(logits / self.config.temperature, dim=1).topk(k, dim=1)
        ood = self.config.ood
        scores = ood_score(logits, self.config.temperature, ood["score"]).tolist() if ood else None
        for n, (source, vals, idxs) in enumerate(zip(batch.sources, values.tolist(), indices.tolist(),
                                                     strict=True)):
            top = [(self.class_names[i], float(v)) for v, i in zip(vals, idxs, strict=True)]
            score = scores[n] if scores else None
            rejected = self.reject and score is not None and score < ood["threshold"]
            yield Prediction(source=source, label=UNKNOWN_LABEL if rejected else top[0][0],
                             confidence=top[0][1], top_k=top, ood_score=score)

    def evaluate(self, data: str | Path, *, batch_size: int = 64, label_sep: str = LABEL_SEP
                 ) -> EvaluationResult | MultilabelEvaluation:
        """Metrics on a labeled dataset (its test split when it has one, else all images). A
        multi-label model reads the manifest's `label` or `labels` cells as sets."""
        check_batch_size(batch_size)
        index = index_dataset(data, task="multilabel" if self.config.multilabel else "auto",
                              label_sep=label_sep)
        if index.task == "multilabel" and not self.config.multilabel:
            raise DataError(f"{data} is multi-label (a 'labels' column) but the model is "
                            "single-label; evaluate a model trained on multi-label data")
        samples = evaluation_samples(index)
        unknown = sorted({n for s in samples for n in s.label_set} - set(self.class_names))
        if unknown:
            raise DataError(
                f"{data} has classes the model does not know ({', '.join(unknown[:5])}); "
                f"the model's classes are {', '.join(self.class_names[:10])}"
            )
        return self.evaluate_samples(samples, batch_size=batch_size)

    def evaluate_samples(self, samples: list[Sample], *, batch_size: int = 64
                         ) -> EvaluationResult | MultilabelEvaluation:
        """Metrics on labeled samples whose labels are among the model's classes."""
        pp = self.config.preprocess
        scan = scan_images(samples, window=pp.window)
        if not scan.samples:
            raise DataError(f"none of the {len(samples)} images could be read; check the files")
        class_to_idx = {name: i for i, name in enumerate(self.class_names)}
        dataset = ImageDataset(scan.samples, class_to_idx, self.resize, scan.images,
                               img_size=pp.img_size, window=pp.window)
        if self.config.multilabel:  # multi-hot rows even for single-label samples
            dataset.targets = label_targets(scan.samples, class_to_idx, multi_hot=True)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
        probs, targets = [], []
        for pixels, target in loader:  # uint8 (N, 3, S, S), normalised per batch as in predict
            probs.append(self.predict_proba(self.normalize(pixels.to(self.device))))
            targets.append(target)
        if self.config.multilabel:
            from clarivis.multilabel_metrics import compute_multilabel_metrics

            result = compute_multilabel_metrics(torch.cat(probs), torch.cat(targets), self.class_names,
                                                self.config.label_thresholds())
        else:
            result = compute_metrics(torch.cat(probs), torch.cat(targets), self.class_names)
        result.skipped = [{"path": p, "reason": r} for p, r in scan.skipped]
        return result


def _batch(pending: list[tuple[str, torch.Tensor]]) -> ImageBatch:
    return ImageBatch([s for s, _ in pending], torch.stack([t for _, t in pending]))


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ClarivisError(f"--batch-size must be at least 1 (got {batch_size})")


def ordered_map(fn, items: Iterator, *, window: int, workers: int | None = None) -> Iterator:
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
