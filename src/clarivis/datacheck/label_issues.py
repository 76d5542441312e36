"""Suspected label errors: out-of-fold predicted probabilities -> cleanlab.

Out-of-fold means every image is scored by a model that never saw its label, so a wrong label
cannot be memorised away. The probabilities come from either
  (a) features + cross-validated logistic regression: a trained ModelBundle's or a pretrained
      backbone's (evaluate.label_features chooses which, clarivis.embeddings computes them), or
  (b) a small classifier trained with `clarivis.train` on the other folds, once per fold."""

from __future__ import annotations

import csv
import tempfile
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import (
    PredefinedSplit,
    StratifiedGroupKFold,
    StratifiedKFold,
    cross_val_predict,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clarivis.classifier import Classifier
from clarivis.config import build_config
from clarivis.data.sources import Sample
from clarivis.datacheck.label_features import FeatureSource, backbone_features, choose_features
from clarivis.errors import DataError
from clarivis.evaluate.inputs import load_labeled_pixels
from clarivis.extras import needs
from clarivis.training.dispatch import run_training

# cleanlab's own default (cv_n_folds=5): each model sees 80% of the data, so its probabilities
# are close to those of a model trained on all of it; more folds cost more trainings for little.
DEFAULT_FOLDS = 5

# Per-fold training without a model (b): clarivis.train's own defaults pick the model and size
# (resnet18 for small images); the fast recipe (SGD, high lr, label smoothing 0.2, 12 epochs,
# no early stopping) fits the clean labels before it memorises the wrong ones, which is when
# out-of-fold probabilities expose them. Measured with test_resnet at 32 px on 4 colour classes
# x 40 images, 8 labels flipped, 5 folds, 1 CPU core: fast recipe 12 epochs recall 0.88 (6 s),
# 8 epochs 0.62, 4 epochs 0.50; the default recipe at 12 epochs 0.75; precision 1.0 in all.
# val_fraction 0: train on all K-1 folds (the held-out fold is the evaluation that matters).
DEFAULT_TRAIN_SETTINGS: dict[str, Any] = {"recipe": "fast", "val_fraction": 0.0}

# Inverse L2 strengths of the logistic regression on standardised features, chosen by the
# out-of-fold log loss over the check's own folds (the probabilities cleanlab reads, so the
# proper score for them). Measured on ImageNet efficientnet_lite0 features of 3 CIFAR-10
# classes x 120 images with 18 planted errors (benchmarks/label_check_planted.py, 3 seeds):
# log loss picks 0.01/0.01/0.001, which rank 15/16/17 planted errors into the top 40; a fixed
# C=1 (the former default, set for a trained bundle's features) ranks 14/17/16.
LOGREG_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class LabelIssue:
    path: str
    split: str
    given_label: str
    suggested_label: str  # argmax of the out-of-fold probabilities
    # cleanlab's self-confidence label quality: the out-of-fold probability of the given label,
    # 0..1, LOWER = MORE SUSPECT.
    score: float


@dataclass
class LabelIssueResult:
    issues: list[LabelIssue]  # flagged by cleanlab, most suspect (lowest score) first
    method: str  # "embeddings+logreg" or "cross-validated training"
    folds: int
    checked: int  # images that took part
    oof_accuracy: float  # of the out-of-fold predictions against the given labels
    notes: list[str] = field(default_factory=list)  # e.g. classes left out, folds reduced
    features: str = ""  # whose features (a) used, e.g. "efficientnet_lite0 (weights W, 224 px)"
    reg_c: float | None = None  # the logistic regression's C that (a) chose
    # "multilabel": issues are MultilabelIssues (multilabel_issues.py) and oof_accuracy is
    # label-wise (1 - Hamming loss at 0.5).
    task: str = "multiclass"
    # The features (a) scored, (checked, D) float32, and their images' paths: check looks for
    # edited copies in them (similar_images.py). Not in to_dict; None without features.
    vectors: np.ndarray | None = field(default=None, repr=False)
    vector_paths: list[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        task = {"task": self.task} if self.task == "multilabel" else {}  # single-label as before
        return {"method": self.method, "folds": self.folds, "checked": self.checked,
                "oof_accuracy": self.oof_accuracy, "notes": self.notes,
                "features": self.features, "reg_c": self.reg_c, **task,
                "issues": [asdict(i) for i in self.issues]}


@dataclass(frozen=True)
class LabelCheckOptions:
    """How the label check gets its probabilities (find_label_issues also takes these fields by
    keyword). Features of a bundle or pretrained backbone (`model`, `weights`, `pretrained`,
    `img_size`; see label_features.choose_features, which also uses cached hub weights unless
    `cached` is off or `train_settings` are given), else a small model trained per fold."""

    model: str | Path | FeatureSource | None = None
    weights: str | Path | None = None
    pretrained: bool = False
    img_size: int | None = None
    cached: bool = True
    folds: int = DEFAULT_FOLDS
    device: str | None = None
    seed: int = 0
    train_settings: dict[str, Any] | None = None  # TrainConfig fields of the per-fold runs
    # One group value per sample (e.g. its patient id): each group's images share a fold, so
    # no fold's model has seen the patient it scores. None: folds by image.
    groups: list[str] | None = None


def find_label_issues(samples: list[Sample], splits: list[str], options: LabelCheckOptions | None = None,
                      *, console: Console | None = None, **fields: Any) -> LabelIssueResult:
    """Suspected label errors among readable `samples` (with their split names), by (a) the
    features of a bundle or pretrained backbone, or (b) training per fold when there are none.
    `fields`: LabelCheckOptions' fields by keyword, over `options`. Single-label samples;
    multi-label ones go to multilabel_issues.find_multilabel_issues."""
    if any(s.labels is not None for s in samples):
        raise ValueError("multi-label samples: call multilabel_issues.find_multilabel_issues")
    opts = replace(options or LabelCheckOptions(), **fields)
    model, weights, pretrained, img_size = opts.model, opts.weights, opts.pretrained, opts.img_size
    cached, folds, device, seed, train_settings = (opts.cached, opts.folds, opts.device, opts.seed,
                                                   opts.train_settings)
    console = console or Console(stderr=True, quiet=True)
    source = choose_features(model, weights=weights, pretrained=pretrained, img_size=img_size,
                             cached=cached and train_settings is None)
    groups = opts.groups
    if groups is not None:  # carried through _usable as the sample's own group
        samples = [Sample(s.path, s.label, {"_fold_group": g})
                   for s, g in zip(samples, groups, strict=True)]
    kept, kept_splits, class_names, k, notes = _usable(samples, splits, folds)
    labels = np.array([class_names.index(s.label) for s in kept])
    kept_groups = None if groups is None else [s.groups["_fold_group"] for s in kept]
    if kept_groups is not None and len(set(kept_groups)) < k:
        n_groups = len(set(kept_groups))
        if n_groups < 2:
            raise DataError("the label check with --group-by needs at least 2 groups")
        notes.append(f"{n_groups} folds instead of {k}: there are {n_groups} groups")
        k = n_groups
    fold_of = _assign_folds(labels, k, seed, kept_groups)
    reg_c, features = None, None
    if source is not None:
        console.print(f"label check: features of {source.describe()} ({source.why}) + logistic "
                      f"regression, {k} folds")
        features = backbone_features(source, kept, device=device)
        probs, reg_c = logreg_oof_probabilities(features, labels, fold_of, len(class_names),
                                                seed=seed)
        method = "embeddings+logreg"
    else:
        console.print(f"label check: training a small model on each of {k} folds")
        probs = trained_oof_probabilities(kept, class_names, fold_of, device=device, seed=seed,
                                          settings=train_settings, console=console)
        method = "cross-validated training"
    issues = rank_label_issues(kept, kept_splits, class_names, labels, probs)
    accuracy = float((probs.argmax(1) == labels).mean())
    return LabelIssueResult(issues, method, k, len(kept), accuracy, notes,
                            features=source.describe() if source else "", reg_c=reg_c,
                            vectors=features, vector_paths=[s.path for s in kept])


def rank_label_issues(
    samples: list[Sample], splits: list[str], class_names: list[str], labels: np.ndarray,
    probs: np.ndarray,
) -> list[LabelIssue]:
    """The suspects, most suspect first, with suggested label and quality score: cleanlab's
    flagged images and every image whose out-of-fold prediction is another class. cleanlab alone
    (prune_by_noise_rate) estimates how many labels are wrong from the confident joint and keeps
    that many; on features that confuse 13% of clean images it kept 18-43 of 360 and missed a
    third of 18 planted errors, the union keeps 45-60 and ranks 15-17 of them into its top 40
    (benchmarks/README.md, "label_check_planted.py")."""
    with needs("trust", "clarivis check"):
        import cleanlab.filter
        import cleanlab.rank

    probs = _renormalised(probs)
    # n_jobs=1: cleanlab would fork a pool per call; the per-class work is milliseconds here.
    flagged = cleanlab.filter.find_label_issues(labels, probs, n_jobs=1)
    flagged |= probs.argmax(1) != labels
    scores = cleanlab.rank.get_label_quality_scores(labels, probs)  # self_confidence
    order = sorted(np.flatnonzero(flagged), key=lambda i: (scores[i], samples[i].path))
    return [LabelIssue(samples[i].path, splits[i], samples[i].label,
                       class_names[int(probs[i].argmax())], round(float(scores[i]), 6))
            for i in order]


def _usable(samples: list[Sample], splits: list[str], folds: int):
    """Samples of classes with at least 2 images, and the folds their smallest class allows."""
    if folds < 2:
        raise DataError(f"--folds must be at least 2 (got {folds})")
    counts = Counter(s.label for s in samples)
    notes = []
    small = sorted(name for name, c in counts.items() if c < 2)
    if small:
        notes.append(f"left out classes with a single image: {', '.join(small)}")
    kept = [(s, sp) for s, sp in zip(samples, splits, strict=True) if counts[s.label] >= 2]
    class_names = sorted({s.label for s, _ in kept})
    if len(class_names) < 2:
        raise DataError("the label check needs at least 2 classes with 2 or more readable images each")
    smallest = min(counts[name] for name in class_names)
    k = min(folds, smallest)
    if k < folds:
        notes.append(f"{k} folds instead of {folds}: the smallest class has {smallest} images")
    return [s for s, _ in kept], [sp for _, sp in kept], class_names, k, notes


def _assign_folds(labels: np.ndarray, k: int, seed: int,
                  groups: list[str] | None = None) -> np.ndarray:
    """Fold number per image, stratified by class (every fold sees every class); with `groups`,
    each group's images in one fold (StratifiedGroupKFold: classes balanced as groups allow)."""
    fold_of = np.empty(len(labels), dtype=np.int64)
    splitter = (StratifiedKFold(n_splits=k, shuffle=True, random_state=seed) if groups is None
                else StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed))
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        fold_of[held_out] = fold
    return fold_of


def _renormalised(probs: np.ndarray) -> np.ndarray:
    """Rows summing to 1, with no exact zeros (cleanlab divides by them)."""
    probs = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None)
    return probs / probs.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- (a) embeddings


def logreg_oof_probabilities(
    features: np.ndarray, labels: np.ndarray, fold_of: np.ndarray, num_classes: int, *,
    seed: int = 0, grid: tuple[float, ...] = LOGREG_C_GRID,
) -> tuple[np.ndarray, float]:
    """(N, C) out-of-fold probabilities of standardised features + logistic regression, at the
    C of `grid` with the lowest out-of-fold log loss, and that C."""
    best: tuple[float, np.ndarray, float] | None = None  # (log loss, probabilities, C)
    for reg_c in grid:
        classifier = make_pipeline(StandardScaler(),
                                   LogisticRegression(C=reg_c, max_iter=1000, random_state=seed))
        with warnings.catch_warnings():
            # lbfgs may stop at max_iter on hard folds; its probabilities are still usable.
            warnings.simplefilter("ignore", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*(converge|ITERATIONS).*")
            probs = cross_val_predict(classifier, features, labels, cv=PredefinedSplit(fold_of),
                                      method="predict_proba")
        if probs.shape[1] != num_classes:  # cannot happen with stratified folds; guard anyway
            raise DataError("a class is missing from a training fold; give every class more images")
        loss = log_loss(labels, _renormalised(probs), labels=np.arange(num_classes))
        if best is None or loss < best[0]:
            best = (loss, probs, reg_c)
    assert best is not None, "the C grid is empty"
    return best[1], best[2]


# ----------------------------------------------------------------------------- (b) training


def trained_oof_probabilities(
    samples: list[Sample], class_names: list[str], fold_of: np.ndarray, *,
    device: str | None = None, seed: int = 0, settings: dict[str, Any] | None = None,
    console: Console | None = None,
) -> np.ndarray:
    """(N, C) probabilities of each image from a model trained on the other folds (clarivis.train
    on a manifest of those folds; the run folders are temporary). Samples with label sets train
    a multi-label model: each column is then that label's own sigmoid probability."""
    settings = {**DEFAULT_TRAIN_SETTINGS, **(settings or {})}
    multilabel = any(s.labels is not None for s in samples)
    quiet = Console(stderr=True, quiet=True)
    probs = np.zeros((len(samples), len(class_names)))
    k = int(fold_of.max()) + 1
    with tempfile.TemporaryDirectory(prefix="clarivis-check-") as tmp:
        for fold in range(k):
            held_out = np.flatnonzero(fold_of == fold)
            manifest = Path(tmp) / f"fold{fold}.csv"
            _write_manifest(manifest, [s for s, f in zip(samples, fold_of, strict=True) if f != fold])
            if console is not None:
                console.print(f"label check: fold {fold + 1}/{k}, training on "
                              f"{len(samples) - len(held_out)} images")
            config = build_config(data=str(manifest), out=str(Path(tmp) / f"run{fold}"),
                                  device=device, seed=seed, **{**settings, "report": False})
            result = run_training(config, console=quiet)  # no val split: nothing to calibrate
            clf = Classifier.load(result.bundle_dir, device=device)
            loaded = load_labeled_pixels(clf, [samples[i] for i in held_out])
            fold_probs = clf.probabilities(clf.pixel_logits(loaded.pixels)).numpy()
            row_of = {s.path: i for s, i in zip(loaded.samples, range(len(loaded.samples)), strict=True)}
            columns = [class_names.index(name) for name in clf.class_names]
            # A label no training image of this fold has: no evidence either way.
            unseen = 0.5 if multilabel else 0.0
            for i in held_out:
                row = row_of.get(samples[i].path)
                if row is None:  # unreadable now: no evidence either way
                    probs[i] = 0.5 if multilabel else 1.0 / len(class_names)
                else:
                    probs[i] = unseen
                    probs[i, columns] = fold_probs[row]
    return probs


def _write_manifest(path: Path, samples: list[Sample]) -> None:
    """path,label,split; path,labels,split (names joined by ';') for multi-label samples."""
    multilabel = any(s.labels is not None for s in samples)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels" if multilabel else "label", "split"])
        for s in samples:
            writer.writerow([str(Path(s.path).resolve()), s.label, "train"])

