"""Classification metrics from predicted probabilities: accuracy, top-5, calibration error, and
per-class precision/recall/F1 from the confusion matrix.

Computed here in a few lines of torch/numpy rather than with torchmetrics and scikit-learn, which
the training path would otherwise import for this alone: `import torchmetrics` costs 2.0 s and
`sklearn.metrics` 0.4 s on 2 CPU cores, against 11 s of epochs in a 3-epoch run (issue 12,
benchmarks/README.md "Fixed costs of a short run"). tests/evaluate/test_metrics.py checks every
number against both libraries on random and degenerate inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

ECE_BINS = 15  # the usual choice in the calibration literature (Guo et al. 2017)


@dataclass
class EvaluationResult:
    """Metrics of a model on a labeled dataset; fractions are in 0..1."""

    accuracy: float
    top5_accuracy: float | None  # None with fewer than 5 classes
    balanced_accuracy: float  # mean recall over the classes present
    precision_macro: float
    recall_macro: float
    f1_macro: float
    precision_weighted: float
    recall_weighted: float
    f1_weighted: float
    ece: float  # expected calibration error, 15 bins
    num_samples: int
    class_names: list[str]
    per_class: list[dict]  # {class, precision, recall, f1, support}
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class
    skipped: list[dict] = field(default_factory=list)  # {path, reason} of unreadable files

    def to_dict(self) -> dict:
        return asdict(self)


def compute_metrics(
    probs: torch.Tensor, targets: torch.Tensor, class_names: list[str]
) -> EvaluationResult:
    """probs: (N, C) softmax outputs; targets: (N,) class indices."""
    num_classes = len(class_names)
    probs, targets = probs.float().cpu(), targets.long().cpu()
    preds = probs.argmax(dim=1)
    matrix = confusion_counts(targets, preds, num_classes)  # int64 (C, C), rows: true class
    present = np.flatnonzero(matrix.sum(axis=1))  # classes absent from this data don't count in macros
    p, r, f, support = per_class_prf(matrix)
    weights = support[present] / support[present].sum()
    per_class = [
        {"class": name, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
         "support": int(support[i])}
        for i, name in enumerate(class_names)
    ]
    top5 = None
    if num_classes >= 5:
        top5 = float((probs.topk(5, dim=1).indices == targets[:, None]).any(dim=1).float().mean())
    return EvaluationResult(
        accuracy=float((preds == targets).float().mean()),
        top5_accuracy=top5,
        balanced_accuracy=float(np.mean(r[present])),
        precision_macro=float(np.mean(p[present])), recall_macro=float(np.mean(r[present])),
        f1_macro=float(np.mean(f[present])),
        precision_weighted=float(weights @ p[present]), recall_weighted=float(weights @ r[present]),
        f1_weighted=float(weights @ f[present]),
        ece=calibration_error(probs, targets),
        num_samples=len(targets),
        class_names=list(class_names),
        per_class=per_class,
        confusion_matrix=matrix.tolist(),
    )


def confusion_counts(targets: torch.Tensor, preds: torch.Tensor, num_classes: int) -> np.ndarray:
    """(N,) true and (N,) predicted class indices -> int64 (C, C) counts, rows: true class
    (sklearn's confusion_matrix with labels=range(C))."""
    flat = targets.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes).numpy()


def per_class_prf(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 (float64) and support (int) per class from a (C, C) confusion
    matrix; 0 where undefined (sklearn's precision_recall_fscore_support, zero_division=0)."""
    tp = np.diag(matrix).astype(np.float64)
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    # F1 = 2 TP / (2 TP + FP + FN), as sklearn computes it (not from rounded P and R).
    denominator = (predicted + support).astype(np.float64)
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return precision, recall, f1, support


def calibration_error(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error (L1) of (N, C) probabilities, in 0..1: the
    count-weighted mean |accuracy - confidence| over equal-width confidence bins. Binned as
    torchmetrics' multiclass_calibration_error is (bucketize on n_bins + 1 edges, right=True, so
    a confidence of exactly 1 has a bin of its own)."""
    if len(targets) == 0:
        return 0.0
    confidence, predicted = probs.float().max(dim=1)
    correct = predicted.eq(targets).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    index = torch.bucketize(confidence, edges, right=True) - 1  # (N,) in 0..n_bins
    count = torch.zeros(n_bins + 1).scatter_add_(0, index, torch.ones_like(confidence))
    conf_sum = torch.zeros(n_bins + 1).scatter_add_(0, index, confidence)
    acc_sum = torch.zeros(n_bins + 1).scatter_add_(0, index, correct)
    gap = torch.nan_to_num(acc_sum / count) - torch.nan_to_num(conf_sum / count)
    return float((gap.abs() * count / count.sum()).sum())


# Open-set scores from the logits alone: no extra state in the bundle and no cost at predict
# time. All are "higher = more in-distribution". Which one is the default was chosen by
# measurement (benchmarks/ood_scores.py: CIFAR-10 with held-out classes, benchmarks/README.md);
# evaluate/ood.py fits the threshold, runtime/predictor.py has the numpy twin.
OOD_SCORES = ("energy", "max_logit", "msp")
DEFAULT_OOD_SCORE = "energy"


def ood_score(logits: torch.Tensor, temperature: float, score: str = DEFAULT_OOD_SCORE) -> torch.Tensor:
    """logits: (N, C) raw -> (N,) in-distribution score (higher = more like the training data)."""
    scaled = logits.float() / temperature
    if score == "energy":  # negative free energy, Liu et al. 2020
        return temperature * torch.logsumexp(scaled, dim=1)
    if score == "max_logit":  # Hendrycks et al. 2022
        return logits.float().max(dim=1).values
    if score == "msp":  # maximum calibrated softmax probability, Hendrycks & Gimpel 2017
        return torch.softmax(scaled, dim=1).max(dim=1).values
    raise ValueError(f"unknown OOD score {score!r}; choose one of {', '.join(OOD_SCORES)}")
