"""Robust accuracy under untargeted L-inf attacks (FGSM, PGD) at small pixel budgets, with
captum.robust. (torchattacks, which the design names, pins requests~=2.25.1 and so breaks the
Hugging Face hub client that timm uses; captum is already our attribution library.)

Attacks run in [0, 1] pixel space on the model-input image, so eps = 2/255 means "each pixel
moves by at most 2 grey levels": the bundle's normalisation sits inside the attacked function.

A multi-label model is attacked on its whole label set: each step raises the summed binary
cross-entropy of every class against the image's true set (labels dropped, labels added), and
robustness is the mAP left on the attacked images."""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as nnf
from captum.robust import FGSM, PGD
from torch import nn

from clarivis.evaluate.inputs import LabeledPixels
from clarivis.evaluate.robustness import known_images, random_subset, stratified_subset
from clarivis.evaluate.subgroups import average_precisions  # numpy; torchmetrics' numbers

METHODS = ("fgsm", "pgd")
# The budgets of the robustness literature for 32 px images (RobustBench reports 8/255); the
# smaller ones show how early an undefended model breaks.
DEFAULT_EPS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
# 256 class-stratified images x 4 eps x (1 FGSM + 10 PGD) gradient steps: about 20 s for
# resnet18 at 32 px on one CPU core (14 images/s measured, every image attacked); each accuracy
# is known to about +-6 points (95% binomial interval at n = 256), enough to tell 1/255 from 8/255.
DEFAULT_MAX_IMAGES = 256
# 10 steps of 2.5 eps / 10 from a uniform random start (Madry et al., 2018): each pixel can
# cross the eps ball 2.5 times; more steps lower an undefended model's accuracy little more.
PGD_STEPS = 10
STEP_FACTOR = 2.5  # step size = STEP_FACTOR * eps / steps


class PixelModel(nn.Module):
    """[0, 1] RGB (N, 3, S, S) -> logits (N, C), normalising as the bundle does."""

    def __init__(self, clf):
        super().__init__()
        self.clf = clf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clf.model(self.clf.normalize(x * 255))  # _normalize takes 0..255 floats


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Per-image cross-entropy on the logits: captum's default, -log(output), assumes the model
    # returns probabilities and gives NaN gradients (no step) for negative logits.
    return nnf.cross_entropy(logits, target, reduction="none")


def _label_set_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Multi-label: per-image BCE summed over the classes (target: (N, C) multi-hot floats).
    return nnf.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(dim=1)


@dataclass
class AdversarialResult:
    num_images: int
    clean_accuracy: float  # on the same subset
    pgd_steps: int
    attacks: dict  # {"fgsm": {"1/255": accuracy, ...}, "pgd": {...}}
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def eps_name(eps: float) -> str:
    """2/255 -> "2/255" (the unit everyone reports budgets in)."""
    return f"{round(eps * 255, 2):g}/255"


@contextmanager
def _frozen(model: nn.Module):
    """No weight gradients while attacking: only the input's are needed (less backward work,
    and no .grad left on the weights)."""
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
    """[0, 1] float (N, 3, S, S) -> adversarial images within eps (L-inf) of them, in [0, 1],
    pushed away from `targets` (int64 (N,), or (N, C) multi-hot floats for a multi-label model:
    away from the whole set); PGD takes `steps` steps from a seeded random start."""
    if method not in METHODS:
        raise ValueError(f"unknown attack {method!r}; choose fgsm or pgd")
    model = PixelModel(clf)
    images = images.detach()
    loss = _label_set_loss if targets.ndim == 2 else _loss
    # enable_grad: callers often sit in no_grad (inference code); the attack needs input gradients.
    with _frozen(clf.model), torch.enable_grad(), warnings.catch_warnings():
        # captum sets requires_grad on the input itself and warns each step that it had to.
        warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
        if method == "fgsm":
            adv = FGSM(model, loss_func=loss, lower_bound=0.0, upper_bound=1.0).perturb(images, eps, targets)
        else:
            with torch.random.fork_rng(devices=[]):  # captum's random start draws from the global RNG
                torch.manual_seed(seed)
                adv = PGD(model, loss_func=loss, lower_bound=0.0, upper_bound=1.0).perturb(
                    images, radius=eps, step_size=STEP_FACTOR * eps / steps, step_num=steps,
                    target=targets, random_start=True)
    return adv.detach()


def adversarial_robustness(clf, data: LabeledPixels, *, eps: tuple[float, ...] = DEFAULT_EPS,
                           max_images: int | None = DEFAULT_MAX_IMAGES, pgd_steps: int = PGD_STEPS,
                           batch_size: int = 64, seed: int = 0) -> AdversarialResult:
    """FGSM and PGD accuracy per eps on a class-stratified subset of the known-class images."""
    if not eps or min(eps) <= 0:
        raise ValueError(f"eps must be positive budgets on the 0-1 scale (got {eps})")
    if pgd_steps < 1:
        raise ValueError(f"pgd_steps must be at least 1 (got {pgd_steps})")
    started = time.perf_counter()
    data = stratified_subset(known_images(data), max_images, seed)
    model = PixelModel(clf)
    correct = {(m, e): 0 for m in METHODS for e in eps}
    clean = 0
    for start in range(0, len(data.targets), batch_size):
        images = data.pixels[start:start + batch_size].to(clf.device).float() / 255
        targets = data.targets[start:start + batch_size].to(clf.device)
        with torch.no_grad():
            right = model(images).argmax(dim=1) == targets
        clean += int(right.sum())
        # Only images the model gets right are attacked: a wrong one counts as wrong under
        # attack too (RobustBench's convention), so robust accuracy <= clean accuracy always.
        images, targets = images[right], targets[right]
        if not len(targets):
            continue
        for method in METHODS:
            for e in eps:
                adv = attack(clf, images, targets, method=method, eps=e, steps=pgd_steps, seed=seed + start)
                with torch.no_grad():
                    correct[(method, e)] += int((model(adv).argmax(dim=1) == targets).sum())
    n = len(data.targets)
    attacks = {m: {eps_name(e): correct[(m, e)] / n for e in eps} for m in METHODS}
    return AdversarialResult(num_images=n, clean_accuracy=clean / n, pgd_steps=pgd_steps,
                             attacks=attacks, seconds=time.perf_counter() - started)


@dataclass
class MultilabelAdversarialResult:
    num_images: int
    clean_map: float  # on the same subset
    pgd_steps: int
    attacks: dict  # {"fgsm": {"1/255": mAP, ...}, "pgd": {...}}
    seconds: float
    metric: str = "map"

    def to_dict(self) -> dict:
        return asdict(self)


def multilabel_adversarial_robustness(clf, data: LabeledPixels, *, eps: tuple[float, ...] = DEFAULT_EPS,
                                      max_images: int | None = DEFAULT_MAX_IMAGES,
                                      pgd_steps: int = PGD_STEPS, batch_size: int = 64,
                                      seed: int = 0) -> MultilabelAdversarialResult:
    """FGSM and PGD mAP per eps of a multi-label `clf` on a seeded subset of `data` (targets
    (N, C) multi-hot). Every image is attacked: with no single right answer there is no
    'already wrong' image to skip, so robust mAP is compared with clean mAP on the same images."""
    if not eps or min(eps) <= 0:
        raise ValueError(f"eps must be positive budgets on the 0-1 scale (got {eps})")
    if pgd_steps < 1:
        raise ValueError(f"pgd_steps must be at least 1 (got {pgd_steps})")
    started = time.perf_counter()
    data = random_subset(data, max_images, seed)
    model = PixelModel(clf)
    cells = [("clean", 0.0)] + [(m, e) for m in METHODS for e in eps]
    probs: dict[tuple[str, float], list[torch.Tensor]] = {cell: [] for cell in cells}
    for start in range(0, len(data.targets), batch_size):
        images = data.pixels[start:start + batch_size].to(clf.device).float() / 255
        targets = data.targets[start:start + batch_size].to(clf.device)
        for method, e in cells:
            adv = images if method == "clean" else attack(clf, images, targets, method=method, eps=e,
                                                          steps=pgd_steps, seed=seed + start)
            with torch.no_grad():
                probs[(method, e)].append(clf.probabilities(model(adv).float().cpu()))

    def mean_ap(cell) -> float:
        aps = average_precisions(torch.cat(probs[cell]).double().numpy(), data.targets.numpy())
        aps = aps[aps == aps]  # labels with no positive image have no AP
        return float(aps.mean()) if len(aps) else 0.0

    attacks = {m: {eps_name(e): mean_ap((m, e)) for e in eps} for m in METHODS}
    return MultilabelAdversarialResult(num_images=len(data.targets), clean_map=mean_ap(("clean", 0.0)),
                                       pgd_steps=pgd_steps, attacks=attacks,
                                       seconds=time.perf_counter() - started)
