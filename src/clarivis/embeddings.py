"""Embeddings: the features a backbone's classifier head sees (timm's forward_features then
forward_head(pre_logits=True)), for image files, folders and labeled datasets. They feed the
linear probe, active labeling and users' own analysis (written as .npy or .parquet)."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from clarivis.classifier import Classifier, Unusable
from clarivis.data.expand import ImageInput
from clarivis.data.sources import Sample, index_dataset
from clarivis.device import resolve_device
from clarivis.errors import ClarivisError, DataError
from clarivis.models.factory import check_model_name, create_model, pretrained_cfg
from clarivis.spec import IMAGENET_MEAN, IMAGENET_STD, BundleConfig, Preprocess, resolve_bundle_path

EMBED_FORMATS = (".npy", ".parquet")


@dataclass
class Embeddings:
    paths: list[str]  # one per row of `vectors`, in input order
    vectors: np.ndarray  # float32 (N, D)
    labels: list[str] | None = None  # class of each row when the input was a labeled dataset
    skipped: list[dict] = field(default_factory=list)  # {path, reason} of unreadable inputs

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1]) if self.vectors.ndim == 2 else 0


def load_encoder(model: str | Path, *, weights: str | Path | None = None, pretrained: bool = False,
                 img_size: int | None = None, device: str | None = None) -> Classifier:
    """A feature extractor as a Classifier: a ModelBundle folder (its own preprocessing), or a
    timm name with optional local weights or timm hub weights (`pretrained`; the architecture's
    pretrained preprocessing, its head removed). The Classifier supplies resize/normalize, so
    features match predict's."""
    dev = resolve_device(device)
    if Path(model).expanduser().exists():
        if weights is not None or pretrained:
            raise ClarivisError("--weights and --pretrained go with a timm model name; a "
                                "ModelBundle has its own")
        return Classifier.load(resolve_bundle_path(model), device=str(dev))
    name = str(model)
    check_model_name(name)
    cfg = pretrained_cfg(name)
    size = img_size or (cfg.get("input_size") or (3, 224, 224))[1]
    net = create_model(name, num_classes=0, img_size=size, pretrained=pretrained,
                       weights=weights)  # headless: features
    preprocess = Preprocess(img_size=size, mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
                            std=tuple(cfg.get("std", IMAGENET_STD)))
    config = BundleConfig.for_model(architecture=name, class_names=[], preprocess=preprocess)
    return Classifier(net.to(dev), config, dev)


def embed_images(clf: Classifier, images: ImageInput | Iterable[ImageInput], *,
                 batch_size: int = 64) -> Embeddings:
    """Embeddings of every readable input; unreadable ones are listed in `skipped`."""
    paths: list[str] = []
    chunks: list[torch.Tensor] = []
    skipped: list[dict] = []
    for item in clf.iter_batches(images, batch_size=batch_size):  # predict's decode and resize
        if isinstance(item, Unusable):
            skipped.append({"path": item.source, "reason": item.reason})
            continue
        paths += item.sources
        chunks.append(clf.pixel_embeddings(item.pixels, batch_size=batch_size))
    vectors = torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)
    return Embeddings(paths, vectors.astype(np.float32, copy=False), None, skipped)


def embed_samples(clf: Classifier, samples: list[Sample], *, batch_size: int = 64) -> Embeddings:
    """Embeddings of labeled samples, with their labels aligned to the readable rows."""
    result = embed_images(clf, [s.path for s in samples], batch_size=batch_size)
    label_of = {s.path: s.label for s in samples}
    result.labels = [label_of[p] for p in result.paths]
    return result


def embed(images: ImageInput | Iterable[ImageInput], *, model: str | Path,
          weights: str | Path | None = None, img_size: int | None = None, batch_size: int = 64,
          device: str | None = None, out: str | Path | None = None) -> Embeddings:
    """Embed files, folders or globs with a ModelBundle or a timm backbone. A single labeled
    dataset (class folders, split folders or a CSV manifest) keeps its labels; `out` (.npy or
    .parquet) is written when given."""
    if out is not None:
        _check_out_suffix(out)
    clf = load_encoder(model, weights=weights, img_size=img_size, device=device)
    samples = _labeled_samples(images)
    if samples is not None:
        result = embed_samples(clf, samples, batch_size=batch_size)
    else:
        result = embed_images(clf, images, batch_size=batch_size)
    if not result.paths:
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in result.skipped[:3])
        raise DataError(f"no readable images to embed ({reasons}); check the paths")
    if out is not None:
        save_embeddings(result, out)
    return result


def save_embeddings(result: Embeddings, path: str | Path) -> list[Path]:
    """.npy: the (N, D) float32 matrix, plus PATH.rows.csv naming each row (path, label).
    .parquet: one row per image with path, label and the embedding as a list column."""
    path = Path(path)
    _check_out_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = result.labels or [""] * len(result.paths)
    if path.suffix == ".npy":
        np.save(path, result.vectors)
        rows = path.with_suffix(".rows.csv")
        with open(rows, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["row", "path", "label"])
            writer.writerows((i, p, lbl) for i, (p, lbl) in enumerate(zip(result.paths, labels, strict=True)))
        return [path, rows]
    import pyarrow as pa  # pyarrow (~0.3 s to import): only when writing .parquet
    import pyarrow.parquet as pq

    dim = result.dim
    table = pa.table({
        "path": result.paths,
        "label": labels,
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(result.vectors.reshape(-1)), dim),
    })
    pq.write_table(table, path)
    return [path]


def _check_out_suffix(path: str | Path) -> None:
    if Path(path).suffix not in EMBED_FORMATS:
        raise ClarivisError(f"--out must end in .npy or .parquet (got {Path(path).name})")


def _labeled_samples(images) -> list[Sample] | None:
    """All samples of a single labeled dataset input, else None (plain images)."""
    if not isinstance(images, (str, Path)):
        return None
    path = Path(images).expanduser()
    if not (path.is_dir() or path.suffix.lower() == ".csv"):
        return None
    try:
        return index_dataset(path).all_samples
    except DataError:
        return None  # a flat folder of images: no labels
