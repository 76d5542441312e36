"""Open-set rejection: a score that is high for images of the trained classes and low for
anything else, and a threshold fitted on the validation split, so predict can answer
"unknown" instead of a confident wrong label."""

from __future__ import annotations

import torch

from clarivis.metrics import DEFAULT_OOD_SCORE, OOD_SCORES, ood_score  # noqa: F401  (ood's own names)
from clarivis.prediction import UNKNOWN_LABEL  # noqa: F401  (re-exported: the answer on rejection)

# The threshold keeps this fraction of validation images (the usual "95% TPR" operating
# point): 1 in 20 known images is answered "unknown"; raise it to reject less.
DEFAULT_ACCEPT_RATE = 0.95


def fit_threshold(known_scores: torch.Tensor, accept_rate: float = DEFAULT_ACCEPT_RATE) -> float:
    """The score below which an image is rejected, accepting `accept_rate` of known images."""
    return float(torch.quantile(known_scores.float(), 1.0 - accept_rate))


def fit_rejection(logits: torch.Tensor, temperature: float, *, score: str = DEFAULT_OOD_SCORE,
                  accept_rate: float = DEFAULT_ACCEPT_RATE) -> dict:
    """The bundle's `ood` entry, fitted on validation logits (N, C)."""
    threshold = fit_threshold(ood_score(logits, temperature, score), accept_rate)
    return {"score": score, "threshold": threshold, "accept_rate": accept_rate,
            "fitted_on": "val", "num_images": len(logits)}


def rejection_report(logits: torch.Tensor, known: torch.Tensor, temperature: float, ood: dict) -> dict:
    """AUROC (known vs unknown classes) of every score, and rates at the stored threshold.
    logits: (N, C) raw; known: bool (N,), False for images of classes the model never saw."""
    stored = ood_score(logits, temperature, ood["score"])
    rejected = stored < ood["threshold"]
    report = {
        "score": ood["score"], "threshold": ood["threshold"],
        "num_known": int(known.sum()), "num_unknown": int((~known).sum()),
        "false_rejection_rate": float(rejected[known].float().mean()) if known.any() else None,
        "rejection_rate_unknown": float(rejected[~known].float().mean()) if (~known).any() else None,
        "auroc": {},
    }
    if known.any() and (~known).any():
        from sklearn.metrics import roc_auc_score  # here: training fits a threshold without it

        for name in OOD_SCORES:
            s = ood_score(logits, temperature, name)
            report["auroc"][name] = float(roc_auc_score(known.numpy(), s.numpy()))
    return report
