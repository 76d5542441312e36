"""Temperature scaling (Guo et al. 2017): one scalar T divides the logits so that confidence
matches accuracy. Fitted on the validation split at the end of training, stored in the
ModelBundle and applied by predict; accuracy is unchanged because argmax is."""

from __future__ import annotations

import math

import torch

from clarivis.evaluate.ood import fit_rejection
from clarivis.metrics import ECE_BINS, calibration_error
from clarivis.models.bundle import update_bundle_config

# Fewer validation images than this leave T to chance (a handful of samples can drive the NLL
# optimum to 0 or infinity); below it the bundle keeps T = 1 and says so.
MIN_CALIBRATION_IMAGES = 30
# Searching log T in [1/20, 20] covers every over/under-confidence seen in practice while
# stopping a separable validation set (NLL -> 0 as T -> 0) from running away.
_LOG_T_RANGE = (math.log(0.05), math.log(20.0))


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """logits: (N, C) raw, targets: (N,) -> the T minimising the NLL of softmax(logits / T)."""
    logits, targets = logits.detach().float().cpu(), targets.long().cpu()
    if len(targets) and bool((logits.argmax(1) == targets).all()):
        # Every image right: the NLL keeps falling as T -> 0, so a fit would only run to the
        # bound and make the model certain of everything, its future mistakes included.
        return 1.0
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    value = float(log_t.detach().clamp(*_LOG_T_RANGE).exp())
    return value if math.isfinite(value) else 1.0


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """probs: (N, C) softmax; ECE over 15 equal-width confidence bins, in 0..1."""
    return calibration_error(probs, targets.long(), ECE_BINS)


def reliability_bins(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = ECE_BINS) -> dict:
    """Per confidence bin: mean confidence, accuracy and count (the reliability diagram)."""
    confidence, predicted = probs.float().max(dim=1)
    correct = (predicted == targets).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    bins = torch.bucketize(confidence, edges[1:-1], right=True)  # (N,) in 0..n_bins-1
    rows = {"edges": edges.tolist(), "confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        members = bins == b
        n = int(members.sum())
        rows["count"].append(n)
        rows["confidence"].append(float(confidence[members].mean()) if n else None)
        rows["accuracy"].append(float(correct[members].mean()) if n else None)
    return rows


def calibration_report(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> dict:
    """ECE, NLL and reliability bins before (T = 1) and after the given temperature."""
    logits, targets = logits.float(), targets.long()
    report: dict = {"temperature": temperature, "num_images": len(targets)}
    for name, t in (("before", 1.0), ("after", temperature)):
        probs = torch.softmax(logits / t, dim=1)
        report[f"ece_{name}"] = expected_calibration_error(probs, targets)
        report[f"nll_{name}"] = float(torch.nn.functional.cross_entropy(logits / t, targets))
        report[f"reliability_{name}"] = reliability_bins(probs, targets)
    return report


def calibrate_bundle(bundle_dir, logits: torch.Tensor, targets: torch.Tensor):
    """Fit T and the open-set threshold on validation logits (N, C); store both in the bundle.
    Returns the updated BundleConfig."""
    if len(targets) < MIN_CALIBRATION_IMAGES:
        note = f"not fitted: {len(targets)} validation images, at least {MIN_CALIBRATION_IMAGES} needed"
        return update_bundle_config(bundle_dir, temperature=1.0, calibration={"note": note}, ood=None)
    temperature = fit_temperature(logits, targets)
    report = calibration_report(logits, targets, temperature)
    calibration = {k: report[k] for k in ("temperature", "num_images", "ece_before", "ece_after",
                                          "nll_before", "nll_after")}
    calibration["fitted_on"] = "val"
    return update_bundle_config(bundle_dir, temperature=temperature, calibration=calibration,
                                ood=fit_rejection(logits, temperature),
                                baseline=prediction_baseline(torch.softmax(logits / temperature, dim=1)))


def prediction_baseline(probs: torch.Tensor, bins: int = 10) -> dict:
    """probs: (N, C) calibrated -> the share of each predicted class and a histogram of top-1
    confidence: what a monitor compares live predictions with (drift)."""
    confidence, predicted = probs.max(dim=1)
    counts = torch.bincount(predicted, minlength=probs.shape[1]).float()
    edges = torch.linspace(0, 1, bins + 1)
    hist = torch.histc(confidence, bins=bins, min=0.0, max=1.0)
    return {"num_images": len(probs), "class_distribution": (counts / counts.sum()).tolist(),
            "confidence_histogram": {"edges": edges.tolist(), "counts": hist.int().tolist()}}


# ----------------------------------------------------------------------------- multi-label
# Each sigmoid output is its own binary classifier, so calibration is measured a class at a time:
# class-wise ECE (Kull et al. 2019), the count-weighted mean |observed rate - mean probability|
# over equal-width probability bins of one class, averaged over the classes; and the mean BCE.
# The reliability bins pool every (image, class) pair: is a label given 0.8 present 80% of the time?


def _binned(probs: torch.Tensor, targets: torch.Tensor, n_bins: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, C) probabilities and 0/1 targets -> (count, probability sum, positives) per class and
    bin, each (C, n_bins); a probability of exactly 1 falls in the last bin."""
    c = probs.shape[1]
    edges = torch.linspace(0, 1, n_bins + 1)
    bins = torch.bucketize(probs.contiguous(), edges[1:-1], right=True)  # (N, C) in 0..n_bins-1
    flat = (bins + torch.arange(c) * n_bins).flatten()  # one bin index per (class, bin)

    def per_bin(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(c * n_bins).scatter_add_(0, flat, values.flatten()).view(c, n_bins)

    return per_bin(torch.ones_like(probs)), per_bin(probs), per_bin(targets)


def classwise_ece(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = ECE_BINS) -> list[float]:
    """(N, C) sigmoid probabilities and 0/1 targets -> each class's binary ECE, in 0..1."""
    count, prob_sum, positives = _binned(probs.float(), targets.float(), n_bins)
    gap = (prob_sum - positives).abs()  # = count * |mean probability - observed rate|
    return (gap.sum(1) / max(len(probs), 1)).tolist()


def pooled_reliability_bins(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = ECE_BINS) -> dict:
    """reliability_bins' shape for every (image, class) pair pooled: per probability bin the
    mean probability ('confidence') and the share of pairs whose label is present ('accuracy')."""
    count, prob_sum, positives = (t.sum(0) for t in _binned(probs.float(), targets.float(), n_bins))
    rows = {"edges": torch.linspace(0, 1, n_bins + 1).tolist(), "confidence": [], "accuracy": [],
            "count": [int(n) for n in count.tolist()]}
    for n, p, y in zip(count.tolist(), prob_sum.tolist(), positives.tolist(), strict=True):
        rows["confidence"].append(p / n if n else None)
        rows["accuracy"].append(y / n if n else None)
    return rows


def multilabel_calibration_report(logits: torch.Tensor, targets: torch.Tensor,
                                  temperatures: list[float], class_names: list[str],
                                  biases: list[float] | None = None) -> dict:
    """Before (T = 1, b = 0) and after the per-class temperatures and biases: mean class-wise
    ECE, mean BCE and pooled reliability bins; per class its T, b, ECE and BCE. logits,
    targets: (N, C)."""
    logits, targets = logits.float(), targets.float()
    biases = list(biases) if biases is not None else [0.0] * len(temperatures)
    report: dict = {"temperatures": list(temperatures), "biases": biases, "num_images": len(targets),
                    "ece": "class-wise (mean over classes of each sigmoid's binary ECE)"}
    per_class: list[dict] = [{"class": name, "temperature": t, "bias": b}
                             for name, t, b in zip(class_names, temperatures, biases, strict=True)]
    ones, zeros = torch.ones(len(temperatures)), torch.zeros(len(temperatures))
    for name, t, b in (("before", ones, zeros), ("after", torch.tensor(temperatures), torch.tensor(biases))):
        scaled = logits / t + b
        probs = torch.sigmoid(scaled)
        eces = classwise_ece(probs, targets)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(scaled, targets, reduction="none")
        report[f"ece_{name}"] = sum(eces) / len(eces) if eces else 0.0
        report[f"bce_{name}"] = float(bce.mean()) if len(targets) else 0.0
        report[f"reliability_{name}"] = pooled_reliability_bins(probs, targets)
        for row, ece, loss in zip(per_class, eces, bce.mean(0).tolist(), strict=True):
            row[f"ece_{name}"], row[f"bce_{name}"] = ece, loss
    report["per_class"] = per_class
    return report
