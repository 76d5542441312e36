"""FGSM/PGD through captum: perturbations stay within eps, stronger attacks hurt more."""

from __future__ import annotations

import pytest
from tests.conftest import CNN, VIT, write_image

import clarivis
from clarivis.api import Classifier
from clarivis.data.sources import evaluation_samples, index_dataset
from clarivis.evaluate.adversarial import adversarial_robustness, attack
from clarivis.evaluate.inputs import load_labeled_pixels


@pytest.fixture(scope="module", params=[CNN, VIT])
def trained(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("adv")
    for i in range(16):
        write_image(root / "data" / "red" / f"r{i}.png", (150, 100, 100), size=(32, 32))
        write_image(root / "data" / "blue" / f"b{i}.png", (100, 100, 150), size=(32, 32))
    result = clarivis.train(root / "data", out=root / "run", model=request.param, epochs=4,
                            workers=0, img_size=32, val_fraction=0.0, report=False)
    clf = Classifier.load(result.bundle_dir)
    return clf, load_labeled_pixels(clf, evaluation_samples(index_dataset(root / "data")))


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_perturbation_stays_within_eps_and_the_pixel_range(trained, method):
    clf, data = trained
    images = data.pixels[:6].float() / 255
    adv = attack(clf, images, data.targets[:6], method=method, eps=4 / 255)
    assert adv.shape == images.shape and not adv.requires_grad
    assert (adv - images).abs().max() <= 4 / 255 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - images).abs().max() > 3 / 255  # it did move the pixels
    assert all(not p.requires_grad or p.grad is None for p in clf.model.parameters())


def test_accuracy_falls_with_eps_and_pgd_is_stronger(trained):
    clf, data = trained
    # (Much larger budgets are no test: on a toy model that is certain, the loss saturates and
    # its gradient underflows to 0, so sign-gradient attacks stall.)
    result = adversarial_robustness(clf, data, eps=(1 / 255, 16 / 255), max_images=12)
    fgsm, pgd = result.attacks["fgsm"], result.attacks["pgd"]
    assert list(pgd) == ["1/255", "16/255"] and result.num_images == 12
    assert pgd["16/255"] <= pgd["1/255"] <= result.clean_accuracy
    assert fgsm["16/255"] <= result.clean_accuracy
    assert pgd["16/255"] <= fgsm["16/255"] + 0.1  # PGD is the stronger attack (one image of slack)
    assert pgd["16/255"] < result.clean_accuracy  # 16 grey levels do fool the model
