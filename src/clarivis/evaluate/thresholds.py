"""Multi-label calibration, fitted on the validation split at the end of training and stored in
the bundle: a temperature and a bias per class (Platt scaling; each sigmoid output is its own
binary classifier, with its own over- or under-confidence and shift), then a decision threshold
per class on the calibrated probability, for the best F1, or for a target precision (fewer false
alarms)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from clarivis.evaluate.calibration import MIN_CALIBRATION_IMAGES
from clarivis.models.bundle import update_bundle_config

DEFAULT_THRESHOLD = 0.5  # a class that val cannot fit (no positive image) keeps this
_LOG_T_RANGE = (math.log(0.05), math.log(20.0))  # as calibration.py: stops separable classes running away


def fit_label_calibration(logits: torch.Tensor, targets: torch.Tensor) -> tuple[list[float], list[float]]:
    """logits, targets: (N, C) -> (T_c, b_c) minimising each class's BCE of sigmoid(logit / T_c
    + b_c): Platt scaling with the slope written as a temperature. The bias matters: a loss that
    down-weights easy negatives (ASL) leaves every logit too high (measured on CIFAR mosaics:
    91% of pairs above 0.5, 34% positive), and a temperature alone then flattens every
    probability towards 0.5 (it ran to T = 20). A class with only positives or only negatives
    on val, or separated perfectly by the logits, keeps T = 1, b = 0 (nothing to fit)."""
    logits, targets = logits.detach().float().cpu(), targets.float().cpu()
    c = logits.shape[1]
    log_t = torch.zeros(c, requires_grad=True)
    bias = torch.zeros(c, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t, bias], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        # Summed over classes: each (T_c, b_c) only moves its own column's loss.
        scaled = logits / log_t.exp() + bias
        loss = F.binary_cross_entropy_with_logits(scaled, targets, reduction="none").mean(0).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    temps = log_t.detach().clamp(*_LOG_T_RANGE).exp().tolist()
    biases = bias.detach().tolist()
    positives = targets.sum(0)
    fittable = (positives > 0) & (positives < len(targets)) & ~separable(logits, targets)
    ok = [bool(fittable[i]) and math.isfinite(temps[i]) and math.isfinite(biases[i]) for i in range(c)]
    return ([t if ok[i] else 1.0 for i, t in enumerate(temps)],
            [b if ok[i] else 0.0 for i, b in enumerate(biases)])


def separable(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """bool (C,): every positive's logit above every negative's. There the BCE keeps falling as
    T -> 0, so a fitted T says nothing about calibration and would only make the model
    certain (p = 0 or 1) of everything, wrong answers on shifted data included."""
    positive = targets > 0.5
    lowest_positive = torch.where(positive, logits, torch.inf).min(0).values
    highest_negative = torch.where(~positive, logits, -torch.inf).max(0).values
    return lowest_positive > highest_negative


def fit_thresholds(probs: torch.Tensor, targets: torch.Tensor,
                   precision_target: float | None = None) -> tuple[list[float], list[dict]]:
    """(N, C) calibrated probabilities and 0/1 targets -> (a threshold a class, how each was
    chosen). F1 mode: the threshold of the best val F1, placed halfway to the next lower score
    so that a test image a hair below the val optimum still counts. Precision mode: the lowest
    threshold whose val precision reaches `precision_target` (the most recall at that precision);
    a class that never reaches it gets its most precise threshold, and says so."""
    from sklearn.metrics import precision_recall_curve

    probs, targets = probs.float().cpu().numpy(), targets.cpu().numpy().round().astype(int)
    thresholds, notes = [], []
    for c in range(probs.shape[1]):
        y, p = targets[:, c], probs[:, c]
        if y.sum() == 0:
            thresholds.append(DEFAULT_THRESHOLD)
            notes.append({"rule": "default", "reason": "no positive validation image"})
            continue
        precision, recall, cuts = precision_recall_curve(y, p)
        precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
        if precision_target is None:
            f1 = np.divide(2 * precision * recall, precision + recall,
                           out=np.zeros_like(precision), where=(precision + recall) > 0)
            best = int(np.argmax(f1))
            note = {"rule": "f1", "val_f1": float(f1[best])}
        else:
            reached = np.flatnonzero(precision >= precision_target)
            best = int(reached[0]) if len(reached) else int(np.argmax(precision))
            note = {"rule": "precision", "target": precision_target, "reached": bool(len(reached))}
        lower = p[p < cuts[best]]
        cut = (cuts[best] + lower.max()) / 2 if len(lower) else cuts[best]
        thresholds.append(float(cut))
        notes.append({**note, "val_precision": float(precision[best]), "val_recall": float(recall[best]),
                      "val_positive_share": float(y.mean()), "val_predicted_share": float((p >= cut).mean())})
    return thresholds, notes


# An F1-best threshold that says yes on nearly every image, for a label most images lack, is the
# F1 optimum of a weak classifier (Lipton et al. 2014: the optimal threshold is half the best F1,
# and saying yes to all scores 2p / (1 + p)); worth a warning, since its answers carry no
# information about that label (seen on CIFAR mosaics after 8 epochs: cat on 969 of 1000).
ALWAYS_YES_SHARE = 0.9


def always_yes_labels(calibration: dict, class_names: list[str]) -> list[str]:
    """Labels whose fitted threshold predicts them on >= ALWAYS_YES_SHARE of val images while
    fewer than that hold them."""
    notes = calibration.get("per_class") or []
    return [name for name, note in zip(class_names, notes, strict=False)
            if note.get("val_predicted_share", 0) >= ALWAYS_YES_SHARE
            and note.get("val_positive_share", 1) < ALWAYS_YES_SHARE]


def calibrated_probs(logits: torch.Tensor, temperatures: list[float], biases: list[float]) -> torch.Tensor:
    """(N, C) raw logits -> (N, C) sigmoid(logit_c / T_c + b_c)."""
    return torch.sigmoid(logits.float() / torch.as_tensor(temperatures, dtype=torch.float32)
                         + torch.as_tensor(biases, dtype=torch.float32))


def calibrate_multilabel_bundle(bundle_dir, logits: torch.Tensor, targets: torch.Tensor, *,
                                precision_target: float | None = None):
    """Fit the temperatures and thresholds on validation logits (N, C) and 0/1 targets (N, C);
    store them, and the baseline a monitor compares traffic with, in the bundle. Returns the
    updated BundleConfig."""
    c = logits.shape[1]
    if len(targets) < MIN_CALIBRATION_IMAGES:
        note = f"not fitted: {len(targets)} validation images, at least {MIN_CALIBRATION_IMAGES} needed"
        return update_bundle_config(bundle_dir, temperatures=[1.0] * c, biases=[0.0] * c,
                                    thresholds=[DEFAULT_THRESHOLD] * c,
                                    calibration={"note": note}, ood=None,
                                    baseline=multilabel_baseline(torch.sigmoid(logits), [0.5] * c))
    temperatures, biases = fit_label_calibration(logits, targets)
    probs = calibrated_probs(logits, temperatures, biases)
    thresholds, notes = fit_thresholds(probs, targets, precision_target)
    targets_f = targets.float()
    calibration = {
        "fitted_on": "val", "num_images": len(targets),
        "bce_before": float(F.binary_cross_entropy_with_logits(logits.float(), targets_f)),
        "bce_after": float(F.binary_cross_entropy(probs.clamp(1e-7, 1 - 1e-7), targets_f)),
        "threshold_rule": "precision" if precision_target is not None else "f1",
        "per_class": notes,
    }
    return update_bundle_config(bundle_dir, temperatures=temperatures, biases=biases, thresholds=thresholds,
                                calibration=calibration, ood=None,
                                baseline=multilabel_baseline(probs, thresholds))


def multilabel_baseline(probs: torch.Tensor, thresholds: list[float], bins: int = 10) -> dict:
    """What predictions on val look like, for the monitor: each label's rate (share of images
    predicted to hold it), those rates normalised to shares (`class_distribution`, as the
    single-label baseline has), and a histogram of each image's highest probability."""
    from clarivis.multilabel_metrics import decide

    decided = decide(probs.float(), thresholds).float()
    rates = decided.mean(0) if len(probs) else torch.zeros(probs.shape[1])
    total = float(rates.sum())
    shares = (rates / total).tolist() if total > 0 else [0.0] * probs.shape[1]
    edges = torch.linspace(0, 1, bins + 1)
    hist = torch.histc(probs.float().max(dim=1).values, bins=bins, min=0.0, max=1.0) if len(probs) \
        else torch.zeros(bins)
    return {"num_images": len(probs), "label_rates": rates.tolist(), "class_distribution": shares,
            "confidence_histogram": {"edges": edges.tolist(), "counts": hist.int().tolist()}}
