"""Multi-label metrics from calibrated sigmoid probabilities and 0/1 targets, with torchmetrics'
multilabel functions: mAP (macro and micro), per-class AP / F1 / precision / recall at the
bundle's per-class thresholds, subset accuracy and Hamming loss. torchmetrics is imported here
only (2 s on 2 cores), so single-label runs never pay for it (see metrics.py)."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class MultilabelEvaluation:
    """Metrics of a multi-label model on a labeled dataset; fractions are in 0..1. A class with
    no positive image has no AP (None) and does not count in the macro mean."""

    map_macro: float  # mean over classes of average precision (threshold-free ranking quality)
    map_micro: float  # AP of all (image, class) pairs pooled
    f1_macro: float  # at the per-class thresholds
    f1_micro: float
    precision_macro: float
    recall_macro: float
    subset_accuracy: float  # share of images whose predicted set is exactly right
    hamming_loss: float  # share of (image, class) decisions that are wrong
    num_samples: int
    class_names: list[str]
    per_class: list[dict]  # {class, ap, f1, precision, recall, threshold, support, predicted}
    task: str = "multilabel"
    skipped: list[dict] = field(default_factory=list)  # {path, reason} of unreadable files

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def headline(self) -> str:
        return (f"mAP {self.map_macro:.3f} (micro {self.map_micro:.3f}), F1 {self.f1_macro:.3f} "
                f"macro / {self.f1_micro:.3f} micro, subset accuracy {self.subset_accuracy:.3f}, "
                f"Hamming loss {self.hamming_loss:.3f}")


def decide(probs: torch.Tensor, thresholds: list[float] | torch.Tensor) -> torch.Tensor:
    """(N, C) probabilities -> bool (N, C): each class at its own threshold (>=, as predict)."""
    return probs >= torch.as_tensor(thresholds, dtype=probs.dtype)


def average_precision(probs: torch.Tensor, targets: torch.Tensor) -> tuple[list[float | None], float]:
    """(per-class AP, None for classes without positives; micro AP) of (N, C) scores."""
    from torchmetrics.functional.classification import multilabel_average_precision

    probs, targets = probs.float().cpu(), targets.cpu().round().int()
    num_classes = probs.shape[1]
    with warnings.catch_warnings():  # a class without positives has no AP: reported as None below
        warnings.filterwarnings("ignore", message="No positive samples found")
        per_class = multilabel_average_precision(probs, targets, num_labels=num_classes, average=None)
    has_positive = targets.sum(0) > 0
    aps = [float(ap) if has_positive[i] else None for i, ap in enumerate(per_class.tolist())]
    micro = float(multilabel_average_precision(probs, targets, num_labels=num_classes, average="micro"))
    return aps, micro


def mean_ap(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Macro mAP over the classes with a positive image (0 when none has one)."""
    aps = [ap for ap in average_precision(probs, targets)[0] if ap is not None]
    return sum(aps) / len(aps) if aps else 0.0


def compute_multilabel_metrics(probs: torch.Tensor, targets: torch.Tensor, class_names: list[str],
                               thresholds: list[float]) -> MultilabelEvaluation:
    """probs: (N, C) calibrated sigmoid outputs; targets: (N, C) 0/1."""
    from torchmetrics.functional.classification import (
        multilabel_exact_match,
        multilabel_f1_score,
        multilabel_hamming_distance,
        multilabel_precision,
        multilabel_recall,
    )

    probs, targets = probs.float().cpu(), targets.cpu().round().int()
    c = len(class_names)
    preds = decide(probs, thresholds).int()  # torchmetrics thresholds one value: decide first
    kw = {"num_labels": c, "threshold": 0.5, "zero_division": 0}
    f1 = multilabel_f1_score(preds, targets, average=None, **kw).tolist()
    precision = multilabel_precision(preds, targets, average=None, **kw).tolist()
    recall = multilabel_recall(preds, targets, average=None, **kw).tolist()
    aps, map_micro = average_precision(probs, targets)
    support = targets.sum(0).tolist()
    present = [i for i in range(c) if support[i] > 0]
    per_class = [{"class": name, "ap": aps[i], "f1": f1[i], "precision": precision[i],
                  "recall": recall[i], "threshold": float(thresholds[i]), "support": int(support[i]),
                  "predicted": int(preds[:, i].sum())} for i, name in enumerate(class_names)]

    def macro(values: list[float]) -> float:
        return sum(values[i] for i in present) / len(present) if present else 0.0

    return MultilabelEvaluation(
        map_macro=macro([ap or 0.0 for ap in aps]), map_micro=map_micro,
        f1_macro=macro(f1),
        f1_micro=float(multilabel_f1_score(preds, targets, average="micro", **kw)),
        precision_macro=macro(precision), recall_macro=macro(recall),
        subset_accuracy=float(multilabel_exact_match(preds, targets, num_labels=c, threshold=0.5)),
        hamming_loss=float(multilabel_hamming_distance(preds, targets, num_labels=c, threshold=0.5,
                                                       average="micro")),
        num_samples=len(targets), class_names=list(class_names), per_class=per_class,
    )
