"""Corruptions: shape, range, seeding, severity order, size-relative levels; the sweep on a
trained test_resnet and test_vit: clean accuracy, severity 5 below 1, determinism, work bounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.tiny import CNN, VIT

import clarivis
from clarivis.api import Classifier
from clarivis.data.sources import evaluation_samples, index_dataset
from clarivis.errors import DataError
from clarivis.evaluate.inputs import UNKNOWN_TARGET, LabeledPixels, load_labeled_pixels
from clarivis.evaluate.robustness import (
    CORRUPTIONS,
    SEVERITIES,
    corrupt,
    corruption_robustness,
    generator_for,
    stratified_subset,
)

# Stripe orientation (degrees) per class: tiny CNNs and ViTs learn it in a few epochs, and it is
# what strong corruptions (rotation, blur, low contrast, darkness) destroy.
ORIENTATIONS = {"horizontal": 0.0, "diagonal": 45.0, "vertical": 90.0, "antidiagonal": 135.0}
STRONG = ("brightness_down", "contrast", "rotation", "motion_blur")


def stripes(degrees: float, n: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """uint8 (n, size, size, 3): sine stripes at `degrees`, random period, phase, colour, noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    t = np.deg2rad(degrees)
    out = []
    for _ in range(n):
        period, phase = rng.uniform(5, 8), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (xx * np.sin(t) + yy * np.cos(t)) / period + phase)
        img = rng.uniform(70, 180, 3) + rng.uniform(30, 60) * wave[..., None]
        img += rng.normal(0, 6, (size, size, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def write_stripes(root: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for name, degrees in ORIENTATIONS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(stripes(degrees, per_class, rng)):
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def train_stripes(root: Path, model: str) -> tuple[Classifier, LabeledPixels]:
    """`model` at 32 px trained on 160 stripe images (2-3 s on one core; 90-100% test
    accuracy), and its 100 labeled test images. No flips: a mirror swaps the two diagonals."""
    train = write_stripes(root / "train", per_class=40, seed=0)
    test = write_stripes(root / "test", per_class=25, seed=1)
    result = clarivis.train(train, out=root / "run", model=model, epochs=20, workers=0, img_size=32,
                            device="cpu", augment="none", val_fraction=0.0, report=False)
    clf = Classifier.load(result.bundle_dir, device="cpu")
    return clf, load_labeled_pixels(clf, evaluation_samples(index_dataset(test)))


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    """uint8 (8, 3, 32, 32) stripe images."""
    rng = np.random.default_rng(0)
    images = np.concatenate([stripes(d, 2, rng) for d in ORIENTATIONS.values()])
    return torch.from_numpy(images).permute(0, 3, 1, 2)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_keeps_shape_and_range_and_is_seeded(pixels, name):
    out = corrupt(pixels, name, SEVERITIES, seed=3)
    assert out.shape == pixels.shape and out.dtype == torch.uint8  # uint8: in 0..255 by type
    assert torch.equal(corrupt(pixels, name, 0), pixels)  # severity 0 is the clean image
    assert torch.equal(out, corrupt(pixels, name, SEVERITIES, seed=3))
    # Batch by batch with one generator gives exactly the images of one call.
    g = generator_for(name, 3, seed=1)
    split = torch.cat([corrupt(pixels[:3], name, 3, generator=g), corrupt(pixels[3:], name, 3, generator=g)])
    assert torch.equal(split, corrupt(pixels, name, 3, seed=1))
    change = [(corrupt(pixels, name, s).float() - pixels.float()).abs().mean() for s in (1, SEVERITIES)]
    assert 0 < change[0] < change[1]  # severity 5 changes the image more than severity 1


def test_table_covers_every_family_at_five_severities():
    assert {c.family for c in CORRUPTIONS.values()} == {
        "lighting", "angle", "blur", "noise", "compression", "occlusion"}
    assert all(len(c.levels) == SEVERITIES for c in CORRUPTIONS.values())
    assert len(CORRUPTIONS) >= 10


@pytest.mark.parametrize("side", [32, 64])
def test_occluder_is_a_fraction_of_the_image_side(side):
    black = torch.zeros(3, 3, side, side, dtype=torch.uint8)
    covered = (corrupt(black, "occlusion", SEVERITIES)[:, 0] != 0).float().mean(dim=(1, 2))
    assert torch.allclose(covered, torch.full((3,), 0.25))  # a half-side square, whatever the size


def test_bad_corruption_or_severity(pixels):
    with pytest.raises(ValueError, match="gaussian_blur"):
        corrupt(pixels, "fog", 1)
    with pytest.raises(ValueError, match="0..5"):
        corrupt(pixels, "jpeg", 6)


def test_subset_keeps_class_proportions_and_is_seeded():
    targets = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    data = LabeledPixels(torch.zeros(100, 3, 4, 4, dtype=torch.uint8), targets, [None] * 100)
    subset = stratified_subset(data, 50, seed=1)
    assert torch.bincount(subset.targets).tolist() == [30, 15, 5]
    assert torch.equal(stratified_subset(data, 50, seed=1).targets, subset.targets)
    assert stratified_subset(data, None) is data and stratified_subset(data, 100) is data


@pytest.fixture(scope="module", params=[CNN, VIT])
def trained(request, tmp_path_factory):
    return train_stripes(tmp_path_factory.mktemp("stripes"), request.param)


def test_sweep_on_a_trained_model(trained):
    clf, data = trained
    result = corruption_robustness(clf, data, max_images=60)
    assert result.to_dict() == corruption_robustness(clf, data, max_images=60).to_dict()
    subset = stratified_subset(data, 60)
    correct = int((clf.pixel_logits(subset.pixels).argmax(1) == subset.targets).sum())
    assert result.num_images == 60 and result.clean_accuracy == correct / 60 >= 0.8
    rows = result.corruptions
    assert list(rows) == list(CORRUPTIONS)
    assert all(len(r["accuracy"]) == SEVERITIES and 0 <= min(r["accuracy"]) <= max(r["accuracy"]) <= 1
               for r in rows.values())
    # Strong corruptions hurt a trained model more at severity 5 than at 1, and overall too.
    assert all(rows[n]["accuracy"][-1] <= rows[n]["accuracy"][0] for n in STRONG)
    assert sum(r["accuracy"][-1] for r in rows.values()) < sum(r["accuracy"][0] for r in rows.values())
    assert result.mean_corruption_accuracy == pytest.approx(sum(r["mean"] for r in rows.values()) / len(rows))
    assert result.relative_drop == pytest.approx(1 - result.mean_corruption_accuracy / result.clean_accuracy)
    assert result.relative_drop > 0
    angle = (rows["rotation"]["mean"] + rows["perspective"]["mean"]) / 2
    assert result.families["angle"] == pytest.approx(angle)


def test_max_images_and_severities_bound_the_work(trained):
    clf, data = trained
    seen = []
    hook = clf.model.register_forward_hook(lambda module, args, out: seen.append(len(out)))
    try:
        result = corruption_robustness(clf, data, max_images=20, severities=2, batch_size=8,
                                       corruptions=["jpeg", "rotation"])
    finally:
        hook.remove()
    assert sum(seen) == 20 * (1 + 2 * 2)  # clean + 2 corruptions x 2 severities, nothing more
    assert max(seen) <= 8 and result.num_images == 20
    assert [len(r["accuracy"]) for r in result.corruptions.values()] == [2, 2]
    assert set(result.families) == {"compression", "angle"}


def test_only_known_classes_count(trained):
    clf, data = trained
    targets = data.targets.clone()
    targets[:10] = UNKNOWN_TARGET
    mixed = LabeledPixels(data.pixels, targets, data.samples)
    result = corruption_robustness(clf, mixed, max_images=None, corruptions=["jpeg"], severities=1)
    assert result.num_images == len(targets) - 10
    none_known = LabeledPixels(data.pixels, torch.full_like(targets, UNKNOWN_TARGET), data.samples)
    with pytest.raises(DataError, match="model's classes"):
        corruption_robustness(clf, none_known)
