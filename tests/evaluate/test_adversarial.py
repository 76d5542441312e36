"""FGSM/PGD through captum on a trained test_resnet and test_vit: perturbations stay within eps and
the pixel range, accuracy falls with eps, PGD is at least as strong as FGSM, the subset bounds work."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from tests.evaluate.test_robustness import train_stripes  # the same tiny stripe-orientation models
from tests.tiny import CNN, VIT

from clarivis.evaluate.adversarial import adversarial_robustness, attack, eps_name


@pytest.fixture(scope="module", params=[CNN, VIT])
def trained(request, tmp_path_factory):
    return train_stripes(tmp_path_factory.mktemp("adv"), request.param)


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_perturbation_stays_within_eps_and_the_pixel_range(trained, method):
    clf, data = trained
    images = data.pixels[:8].float() / 255
    with torch.no_grad():  # as inference code calls it: the attack turns gradients back on
        adv = attack(clf, images, data.targets[:8], method=method, eps=4 / 255)
    assert adv.shape == images.shape and not adv.requires_grad
    moved = (adv - images).abs()
    assert moved.max() <= 4 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert moved.max() > 3.9 / 255  # it did use the budget
    # Weights neither got gradients nor lost their requires_grad flag.
    assert all(p.requires_grad and p.grad is None for p in clf.model.parameters())
    again = attack(clf, images, data.targets[:8], method=method, eps=4 / 255)
    assert torch.equal(adv, again)  # seeded: PGD's random start too


def test_accuracy_falls_with_eps_and_pgd_is_stronger(trained):
    clf, data = trained
    result = adversarial_robustness(clf, data, max_images=40)
    n, clean = result.num_images, result.clean_accuracy
    assert n == 40 and clean >= 0.8 and result.pgd_steps == 10 and result.seconds > 0
    fgsm, pgd = result.attacks["fgsm"], result.attacks["pgd"]
    assert list(fgsm) == list(pgd) == ["1/255", "2/255", "4/255", "8/255"]
    for accs in (fgsm, pgd):  # non-increasing in eps (one image of slack for PGD's random start)
        values = [clean, *accs.values()]
        assert all(b <= a + 1 / n for a, b in pairwise(values))
    assert all(pgd[k] <= fgsm[k] + 1 / n for k in pgd)
    assert pgd["8/255"] < clean - 0.2  # an undefended model is fooled at the usual budget


def test_max_images_bounds_the_work(trained):
    clf, data = trained
    seen = []
    hook = clf.model.register_forward_hook(lambda module, args, out: seen.append(len(out)))
    try:
        result = adversarial_robustness(clf, data, eps=(8 / 255,), max_images=12, pgd_steps=3,
                                        batch_size=5)
    finally:
        hook.remove()
    assert result.num_images == 12 and result.pgd_steps == 3 and max(seen) <= 5
    # Per image at most: clean pass, FGSM (1 gradient + 1 check), PGD (3 gradients + 1 check).
    assert sum(seen) <= 12 * (1 + 2 + 4)


def test_bad_arguments_and_eps_names(trained):
    clf, data = trained
    with pytest.raises(ValueError, match="fgsm or pgd"):
        attack(clf, data.pixels[:2].float() / 255, data.targets[:2], method="cw", eps=1 / 255)
    with pytest.raises(ValueError, match="positive"):
        adversarial_robustness(clf, data, eps=(0.0,))
    assert [eps_name(e) for e in (1 / 255, 8 / 255, 0.5 / 255)] == ["1/255", "8/255", "0.5/255"]
