"""Classification metrics from predicted probabilities: torchmetrics for accuracy and
calibration error, scikit-learn for per-class precision/recall/F1 and the confusion matrix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_calibration_error

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
    y_true, y_pred = targets.numpy(), preds.numpy()
    present = sorted(set(y_true.tolist()))  # classes absent from this data don't count in macros

    def prf(labels, average):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        return float(p), float(r), float(f)

    pm, rm, fm = prf(present, "macro")
    pw, rw, fw = prf(present, "weighted")
    p, r, f, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(num_classes)), average=None, zero_division=0
    )
    per_class = [
        {"class": name, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
         "support": int(support[i])}
        for i, name in enumerate(class_names)
    ]
    top5 = None
    if num_classes >= 5:
        top5 = float(multiclass_accuracy(probs, targets, num_classes, average="micro", top_k=5))
    return EvaluationResult(
        accuracy=float((preds == targets).float().mean()),
        top5_accuracy=top5,
        balanced_accuracy=float(np.mean([r[i] for i in present])),
        precision_macro=pm, recall_macro=rm, f1_macro=fm,
        precision_weighted=pw, recall_weighted=rw, f1_weighted=fw,
        ece=float(multiclass_calibration_error(probs, targets, num_classes, n_bins=ECE_BINS)),
        num_samples=len(y_true),
        class_names=list(class_names),
        per_class=per_class,
        confusion_matrix=confusion_matrix(y_true, y_pred, labels=list(range(num_classes))).tolist(),
    )
