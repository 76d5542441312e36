"""Robust accuracy under untargeted L-inf attacks (FGSM, PGD) at small pixel budgets, with
captum.robust. (torchattacks, which the design names, pins requests~=2.25.1 and so breaks the
Hugging Face hub client that timm uses; captum is already our attribution library.)

Attacks run in [0, 1] pixel space on the model-input image, so eps = 2/255 means "each pixel
moves by at most 2 grey levels": the bundle's normalisation sits inside the attacked function."""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from captum.robust import FGSM, PGD
from torch import nn

from clarivis.evaluate.inputs import LabeledPixels
from clarivis.evaluate.robustness import stratified_subset

DEFAULT_EPS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
# 256 images x 4 eps x (1 FGSM + 10 PGD) gradient steps: about a minute for resnet18 at 32 px
# on 2 CPU cores; accuracy to about +-3 points.
DEFAULT_MAX_IMAGES = 256
# 10 steps of 2.5 eps / 10 from a random start: Madry et al.'s recipe, enough to cross the eps
# ball 2.5 times; more steps lower robust accuracy by little more on undefended models.
PGD_STEPS = 10


class PixelModel(nn.Module):
    """[0, 1] RGB (N, 3, S, S) -> logits, normalising as the bundle does."""

    def __init__(self, clf):
        super().__init__()
        self.clf = clf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clf.model(self.clf._normalize(x * 255))


@dataclass
class AdversarialResult:
    num_images: int
    clean_accuracy: float
    pgd_steps: int
    attacks: dict  # {"fgsm": {"1/255": accuracy, ...}, "pgd": {...}}
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def eps_name(eps: float) -> str:
    return f"{round(eps * 255):g}/255"


@contextmanager
def _frozen(model: nn.Module):
    """No weight gradients while attacking: only the input's are needed (half the backward)."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def attack(clf, images: torch.Tensor, targets: torch.Tensor, *, method: str, eps: float,
           steps: int = PGD_STEPS, seed: int = 0) -> torch.Tensor:
    """[0, 1] float (N, 3, S, S) -> adversarial images within eps (L-inf) of them, in [0, 1]."""
    model = PixelModel(clf)
    images = images.detach().clone().requires_grad_(True)  # captum attacks the input's gradient
    with _frozen(clf.model), warnings.catch_warnings():
        # PGD's inner FGSM steps start from tensors without grad; captum warns at each one.
        warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require")
        if method == "fgsm":
            adv = FGSM(model, lower_bound=0.0, upper_bound=1.0).perturb(images, eps, targets.tolist())
            return adv.detach()
        if method == "pgd":
            with torch.random.fork_rng(devices=[]):  # the random start draws from the global generator
                torch.manual_seed(seed)
                adv = PGD(model, lower_bound=0.0, upper_bound=1.0).perturb(
                    images, radius=eps, step_size=2.5 * eps / steps, step_num=steps,
                    target=targets.tolist(), random_start=True)
                return adv.detach()
    raise ValueError(f"unknown attack {method!r}; choose fgsm or pgd")


def adversarial_robustness(clf, data: LabeledPixels, *, eps: tuple[float, ...] = DEFAULT_EPS,
                           max_images: int = DEFAULT_MAX_IMAGES, pgd_steps: int = PGD_STEPS,
                           batch_size: int = 64, seed: int = 0) -> AdversarialResult:
    """FGSM and PGD accuracy per eps on a class-stratified subset of the known-class images."""
    started = time.perf_counter()
    data = stratified_subset(data.subset(torch.nonzero(data.known).squeeze(1)), max_images, seed)
    model = PixelModel(clf)
    correct = {(m, e): 0 for m in ("fgsm", "pgd") for e in eps}
    clean = 0
    for start in range(0, len(data.targets), batch_size):
        images = data.pixels[start:start + batch_size].to(clf.device).float() / 255
        targets = data.targets[start:start + batch_size].to(clf.device)
        with torch.no_grad():
            clean += int((model(images).argmax(dim=1) == targets).sum())
        for method in ("fgsm", "pgd"):
            for e in eps:
                adv = attack(clf, images, targets, method=method, eps=e, steps=pgd_steps, seed=seed)
                with torch.no_grad():
                    correct[(method, e)] += int((model(adv).argmax(dim=1) == targets).sum())
    n = len(data.targets)
    attacks = {m: {eps_name(e): correct[(m, e)] / n for e in eps} for m in ("fgsm", "pgd")}
    return AdversarialResult(num_images=n, clean_accuracy=clean / n, pgd_steps=pgd_steps,
                             attacks=attacks, seconds=time.perf_counter() - started)
