"""Temperature scaling: recovers a known temperature, lowers ECE on over-confident logits."""

from __future__ import annotations

import pytest
import torch
from tests.tiny import train_bundle

from clarivis.evaluate.calibration import (
    MIN_CALIBRATION_IMAGES,
    calibrate_bundle,
    calibration_report,
    fit_temperature,
    reliability_bins,
)
from clarivis.spec import read_bundle_config


def sampled_logits(n=4000, classes=5, true_t=1.0, scale=3.0, seed=0):
    """Logits whose labels are drawn from softmax(logits / true_t): T = true_t is calibrated."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * scale
    targets = torch.multinomial(torch.softmax(logits / true_t, dim=1), 1, generator=g).squeeze(1)
    return logits, targets


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_recovers_the_temperature_labels_were_drawn_with(true_t):
    logits, targets = sampled_logits(true_t=true_t)
    assert fit_temperature(logits, targets) == pytest.approx(true_t, rel=0.1)


def test_scaling_lowers_ece_and_nll_of_an_overconfident_model():
    logits, targets = sampled_logits(true_t=3.0)  # the raw logits are 3x too sharp
    report = calibration_report(logits, targets, fit_temperature(logits, targets))
    assert report["ece_before"] > 0.1
    assert report["ece_after"] < report["ece_before"] / 3
    assert report["nll_after"] < report["nll_before"]


def test_separable_data_does_not_run_the_temperature_to_zero():
    logits = torch.eye(3).repeat(20, 1) * 5
    assert fit_temperature(logits, torch.arange(3).repeat(20)) == 1.0  # every image right: no fit
    logits[0] = torch.tensor([0.0, 5.0, 0.0])  # one mistake: a finite optimum, inside the bounds
    assert 0.05 <= fit_temperature(logits, torch.arange(3).repeat(20)) <= 20


def test_reliability_bins_count_every_image_and_match_accuracy():
    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    bins = reliability_bins(probs, torch.tensor([0, 1, 0, 0]), n_bins=10)
    assert sum(bins["count"]) == 4
    assert bins["accuracy"][9] == 0.5 and bins["confidence"][9] == pytest.approx(0.95)
    assert bins["accuracy"][5] == 1.0 and bins["count"][0] == 0 and bins["accuracy"][0] is None


def test_calibrate_bundle_stores_temperature_and_threshold(tmp_path):
    bundle = train_bundle(tmp_path)
    logits, targets = sampled_logits(n=200, classes=2, true_t=2.0)
    config = calibrate_bundle(bundle, logits, targets)
    stored = read_bundle_config(bundle)
    assert stored.temperature == config.temperature == pytest.approx(2.0, rel=0.35)
    assert stored.calibration["ece_after"] <= stored.calibration["ece_before"]
    assert stored.ood["score"] == "energy" and stored.ood["accept_rate"] == 0.95
    assert stored.baseline["num_images"] == 200 and len(stored.baseline["class_distribution"]) == 2
    # Too few images: T stays 1, no rejection, and the bundle says why.
    few = calibrate_bundle(bundle, logits[:MIN_CALIBRATION_IMAGES - 1], targets[:MIN_CALIBRATION_IMAGES - 1])
    assert few.temperature == 1.0 and few.ood is None and "not fitted" in few.calibration["note"]


def test_prediction_baseline_shares_and_histogram():
    from clarivis.evaluate.calibration import prediction_baseline

    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.55, 0.45]])
    base = prediction_baseline(probs, bins=10)
    assert base["num_images"] == 4 and base["class_distribution"] == [0.75, 0.25]
    counts = base["confidence_histogram"]["counts"]
    assert counts == [0, 0, 0, 0, 0, 1, 0, 1, 1, 1]  # 0.55, 0.7, 0.8, 0.9 (right edges closed)


def test_bundle_version_changes_with_the_weights(tmp_path):
    from clarivis.models.bundle import update_bundle_config
    from clarivis.spec import bundle_version

    bundle = train_bundle(tmp_path)
    first = bundle_version(bundle)
    assert len(first) == 12 and bundle_version(bundle) == first
    update_bundle_config(bundle, temperature=1.5)
    assert bundle_version(bundle) != first
