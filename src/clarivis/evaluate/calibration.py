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
