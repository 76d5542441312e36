"""Corruptions: shapes, determinism, severity order, and the sweep's accuracy bookkeeping."""

from __future__ import annotations

import pytest
import torch

from clarivis.api import Classifier
from clarivis.data.sources import evaluation_samples, index_dataset
from clarivis.evaluate.inputs import load_labeled_pixels, model_logits
from clarivis.evaluate.robustness import (
    CORRUPTIONS,
    corrupt,
    corruption_robustness,
    stratified_subset,
)


@pytest.fixture(scope="module")
def pixels():
    g = torch.Generator().manual_seed(0)
    return torch.randint(40, 216, (4, 3, 32, 32), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruptions_keep_shape_and_range_and_are_deterministic(pixels, name):
    out = corrupt(pixels, name, 5, seed=3)
    assert out.shape == pixels.shape and out.dtype == torch.uint8
    assert torch.equal(out, corrupt(pixels, name, 5, seed=3))
    mild = (corrupt(pixels, name, 1, seed=3).float() - pixels.float()).abs().mean()
    severe = (out.float() - pixels.float()).abs().mean()
    assert severe > 0 and severe >= mild * 0.9  # severity 5 changes the image more than 1


def test_bad_corruption_or_severity(pixels):
    with pytest.raises(ValueError, match="gaussian_blur"):
        corrupt(pixels, "fog", 1)
    with pytest.raises(ValueError, match="1..5"):
        corrupt(pixels, "jpeg", 6)


@pytest.fixture(scope="module")
def lighting_test(lighting_run):
    result, manifest = lighting_run
    clf = Classifier.load(result.bundle_dir)
    return clf, load_labeled_pixels(clf, evaluation_samples(index_dataset(manifest)))


def test_subset_keeps_class_proportions(lighting_test):
    _, data = lighting_test
    subset = stratified_subset(data, 60, seed=1)
    counts = torch.bincount(subset.targets, minlength=6)
    assert len(subset.targets) == 60 and counts.min() >= 9 and counts.max() <= 11
    assert stratified_subset(data, None) is data


def test_sweep_measures_clean_and_corrupted_accuracy(lighting_test):
    clf, data = lighting_test
    result = corruption_robustness(clf, data, max_images=90)
    again = corruption_robustness(clf, data, max_images=90)
    assert result.to_dict() == again.to_dict() and result.num_images == 90
    subset = stratified_subset(data, 90)
    expected = (model_logits(clf, subset.pixels).argmax(1) == subset.targets).float().mean()
    assert result.clean_accuracy == pytest.approx(float(expected))
    assert set(result.corruptions) == set(CORRUPTIONS)
    first = sum(r["accuracy"][0] for r in result.corruptions.values())
    last = sum(r["accuracy"][4] for r in result.corruptions.values())
    assert last < first  # severity 5 hurts more than severity 1, summed over corruptions
    rows = result.corruptions.values()
    assert result.mean_corruption_accuracy == pytest.approx(sum(r["mean"] for r in rows) / len(rows))
    assert result.relative_drop == pytest.approx(1 - result.mean_corruption_accuracy / result.clean_accuracy)
    assert set(result.families) == {"lighting", "angle", "blur", "noise", "compression", "occlusion"}
