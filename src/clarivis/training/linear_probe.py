"""Linear probe: a logistic-regression head (scikit-learn) fitted on frozen embeddings of any
backbone (ImageNet, self-supervised or CLIP), written into the model's own classifier layer so
the result is an ordinary ModelBundle that every command accepts.

With few labels this is the strongest cheap baseline (the CLIP and SimCLR papers' protocol):
no augmentation, no epochs, seconds of fitting after one forward pass over the images."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import torch
from rich.console import Console
from torch import nn

from clarivis import runs
from clarivis.classifier import Classifier
from clarivis.config import TrainConfig
from clarivis.embeddings import embed_samples
from clarivis.errors import ModelError
from clarivis.models.bundle import save_bundle
from clarivis.models.factory import create_model, pretrained_cfg
from clarivis.spec import BundleConfig
from clarivis.training.callbacks import RunLogger
from clarivis.training.prepare import preprocess_for
from clarivis.training.result import TrainResult

# Inverse L2 strengths searched by cross-validation on standardized features, 1e-4..10 in 11
# log steps: with 10 labels a class on 1280-d features the best C is ~1e-3, with thousands ~1
# (the CLIP paper sweeps a similar log range on validation data).
C_GRID = np.logspace(-4, 1, 11)
MAX_ITER = 1000  # lbfgs converges in ~100-300 iterations on standardized features
MAX_FOLDS = 5


@dataclass
class LinearHead:
    weight: np.ndarray  # float32 (C, D): acts on raw embeddings (standardization folded in)
    bias: np.ndarray  # float32 (C,)
    reg_c: float  # the inverse L2 strength chosen
    cv_accuracy: float | None  # mean cross-validated accuracy at reg_c; None without CV

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight.T + self.bias


def fit_logistic_head(x: np.ndarray, y: np.ndarray, num_classes: int, *, seed: int = 0,
                      reg_c: float | None = None) -> LinearHead:
    """Multinomial logistic regression of `y` (N,) int on `x` (N, D) float. Features are
    standardized first (lbfgs converges fast and one C grid suits every backbone), and the
    scaling is folded back into the weights. `reg_c` None: chosen by stratified k-fold CV."""
    # scikit-learn costs ~1 s to import on 2 cores: only --linear-probe runs pay it, not every run.
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    x = np.asarray(x, dtype=np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-6  # (D,); the floor guards dead features
    z = (x - mean) / std
    folds = min(MAX_FOLDS, int(np.bincount(y).min()))
    cv_accuracy = None
    if reg_c is None and folds >= 2:
        splits = StratifiedKFold(folds, shuffle=True, random_state=seed)
        cv = LogisticRegressionCV(Cs=C_GRID, cv=splits, max_iter=MAX_ITER,
                                  scoring=accuracy_then_log_loss)
        with warnings.catch_warnings():  # sklearn 1.8+ announces renamed attributes; we use C_
            warnings.simplefilter("ignore", FutureWarning)
            cv.fit(z, y)
        reg_c = float(cv.C_[0])
        cv_accuracy = float(cross_val_score(LogisticRegression(C=reg_c, max_iter=MAX_ITER), z, y,
                                            cv=splits, scoring="accuracy").mean())
    reg_c = reg_c if reg_c is not None else 1.0  # one image of some class: CV impossible
    model = LogisticRegression(C=reg_c, max_iter=MAX_ITER).fit(z, y)
    weight, bias = _class_rows(model, num_classes)
    weight = weight / std  # W z + b = (W / std) x + (b - (W / std) mean)
    bias = bias - weight @ mean
    return LinearHead(weight.astype(np.float32), bias.astype(np.float32), reg_c, cv_accuracy)


# Weight of the log loss in the CV score: below the accuracy of one image in ~500 (log losses of
# the grid differ by at most ~2), so accuracy decides and log loss breaks its ties. Accuracy alone
# tied on easy data (every C 100%) and took the first C, 1e-4, whose probabilities sit near
# 1/classes (a perfect red/blue probe said 0.55); log loss alone picked C 100-1000x larger on
# CIFAR-10 with 10 labels a class and lost ~1 point of test accuracy (benchmarks/README.md).
LOG_LOSS_WEIGHT = 1e-3


def accuracy_then_log_loss(estimator, x: np.ndarray, y: np.ndarray) -> float:
    """sklearn scorer: held-out accuracy minus LOG_LOSS_WEIGHT x log loss."""
    from sklearn.metrics import log_loss

    probabilities = estimator.predict_proba(x)
    accuracy = float((estimator.classes_[probabilities.argmax(1)] == y).mean())
    return accuracy - LOG_LOSS_WEIGHT * log_loss(y, probabilities, labels=estimator.classes_)


def _class_rows(model, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, D) weights and (C,) biases in class-index order. sklearn keeps one row for two
    classes (the log-odds of class 1); split it as -z/2, +z/2, which gives the same softmax."""
    coef, intercept = model.coef_, model.intercept_
    if len(model.classes_) == 2 and coef.shape[0] == 1:
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    weight = np.zeros((num_classes, coef.shape[1]))
    bias = np.full(num_classes, -1e4)  # a class with no training image is never predicted
    weight[model.classes_] = coef
    bias[model.classes_] = intercept
    return weight, bias


def set_linear_head(model: nn.Module, head: LinearHead) -> None:
    """Copy the fitted head into the model's classifier layer (timm's get_classifier())."""
    layer = model.get_classifier()
    if not isinstance(layer, nn.Linear) or tuple(layer.weight.shape) != head.weight.shape:
        raise ModelError(f"{model.__class__.__name__}'s classifier is not a Linear layer of "
                         f"shape {head.weight.shape}; --linear-probe needs one (most timm models)")
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(head.weight))
        layer.bias.copy_(torch.from_numpy(head.bias))


def fit_linear_probe(config: TrainConfig, data, device: torch.device, run_dir, console: Console):
    """Embed the train and val images with the frozen backbone, fit the head, save the bundle
    and a one-row metrics.jsonl; returns a TrainResult like a training run."""
    t0 = time.perf_counter()
    if not (config.weights or config.pretrained):
        console.print("[yellow]the backbone has random weights (no --weights or --pretrained): a "
                      "linear probe only pays off on pretrained or self-supervised features")
    class_names = data.class_names
    model = create_model(config.model, num_classes=len(class_names), img_size=config.img_size,
                         pretrained=config.pretrained, weights=config.weights, **config.model_kwargs)
    cfg = pretrained_cfg(config.model)
    bundle_config = BundleConfig.for_model(
        architecture=config.model, class_names=class_names, preprocess=preprocess_for(config, cfg),
        model_kwargs={**config.model_kwargs,
                      **({"img_size": config.img_size} if cfg.get("fixed_input_size") else {})},
    )
    clf = Classifier(model.to(device), bundle_config, device, reject=False)
    with console.status(f"embedding {len(data.train) + len(data.val)} images with the frozen backbone..."):
        train = embed_samples(clf, data.train, batch_size=config.batch_size)
        val = embed_samples(clf, data.val, batch_size=config.batch_size) if data.val else None
    embed_s = time.perf_counter() - t0
    index = {name: i for i, name in enumerate(class_names)}
    y_train = np.array([index[label] for label in train.labels])
    head = fit_logistic_head(train.vectors, y_train, len(class_names), seed=config.seed)
    set_linear_head(model, head)
    record = {"epoch": 1, **_split_stats("train", head, train.vectors, y_train),
              "embed_seconds": round(embed_s, 2), "fit_seconds": round(time.perf_counter() - t0 - embed_s, 2),
              "reg_c": head.reg_c, "cv_accuracy": head.cv_accuracy, "linear_probe": True,
              "embedding_dim": train.dim}
    if val is not None and val.paths:
        y_val = np.array([index[label] for label in val.labels])
        record.update(_split_stats("val", head, val.vectors, y_val))
    logger = RunLogger(run_dir, tensorboard=False)
    logger.log_epoch(record)
    bundle_config.training = _probe_summary(config, data, record)
    bundle_dir = save_bundle(run_dir / runs.BUNDLE_DIR, model, bundle_config)
    (run_dir / runs.LINEAR_PROBE).write_text(json.dumps(record, indent=2))
    cv = f", CV accuracy {head.cv_accuracy:.3f}" if head.cv_accuracy is not None else ""
    val_text = f", val accuracy {record['val_accuracy']:.3f}" if "val_accuracy" in record else ""
    console.print(f"linear probe on {train.dim}-d embeddings: C={head.reg_c:.3g}{cv}{val_text} "
                  f"(embedding {embed_s:.1f}s, fit {record['fit_seconds']:.1f}s)")
    return TrainResult(run_dir=run_dir, bundle_dir=bundle_dir, best_epoch=1,
                       best_val_accuracy=record.get("val_accuracy"), epochs_run=1,
                       stopped_early=False, images_per_second=len(train.paths) / max(embed_s, 1e-9),
                       history=[record])


def _split_stats(prefix: str, head: LinearHead, x: np.ndarray, y: np.ndarray) -> dict:
    logits = torch.from_numpy(head.logits(x))
    loss = nn.functional.cross_entropy(logits, torch.from_numpy(y)).item()
    accuracy = float((logits.argmax(1).numpy() == y).mean())
    return {f"{prefix}_loss": loss, f"{prefix}_accuracy": accuracy}


def _probe_summary(config: TrainConfig, data, record: dict) -> dict:
    return {
        "method": "linear_probe", "dataset_fingerprint": data.fingerprint, "data": str(config.data),
        "epoch": 1, "epochs": 1, "best_val_accuracy": record.get("val_accuracy"),
        "best_val_loss": record.get("val_loss"), "train_images": len(data.train),
        "val_images": len(data.val), "seed": config.seed, "reg_c": record["reg_c"],
        "backbone_weights": config.weights or ("timm hub" if config.pretrained else "random init"),
        "trained_at": datetime.now().isoformat(timespec="seconds"),
    }
