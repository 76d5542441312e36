"""The three methods on tiny timm backbones: views of the right shapes, a finite loss that goes
down when the same batch is seen again, momentum copies that follow, heads left out of export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tests.tiny import CNN, VIT

from clarivis.models.factory import create_model
from clarivis.ssl.config import METHODS
from clarivis.ssl.methods import build_method
from clarivis.ssl.views import view_transform

STEPS = 6


def _images(n: int = 8, size: int = 32) -> list[Image.Image]:
    """Coloured squares on coloured grounds: different enough to tell apart."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        pixels = np.zeros((size, size, 3), np.uint8)
        color = rng.integers(0, 255, 3)
        pixels[:] = color
        x, y = rng.integers(0, size // 2, 2)
        pixels[y:y + size // 3, x:x + size // 3] = 255 - color
        images.append(Image.fromarray(pixels))
    return images


def _view_batch(method: str, images, size: int = 32, fixed: bool = False) -> list[torch.Tensor]:
    transform = view_transform(method, size, (0.5,) * 3, (0.5,) * 3, fixed_input_size=fixed)
    per_image = [transform(img) for img in images]  # N lists of V views
    return [torch.stack([views[k] for views in per_image]) for k in range(len(per_image[0]))]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", [CNN, VIT])
def test_loss_is_finite_and_falls_on_a_repeated_batch(model, method):
    torch.manual_seed(0)
    views = _view_batch(method, _images())
    ssl = build_method(method, create_model(model, num_classes=0, img_size=32))
    optimizer = torch.optim.AdamW([p for p in ssl.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(STEPS):
        ssl.momentum_update(step, STEPS)
        loss, features = ssl(views)
        optimizer.zero_grad()
        loss.backward()
        ssl.before_optimizer_step(warming_up=False)
        optimizer.step()
        losses.append(loss.item())
    assert features.shape == (2 * 8, ssl.backbone.num_features)
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < losses[0], losses


@pytest.mark.parametrize("method", ["byol", "dino"])
def test_momentum_copy_follows_the_online_backbone(method):
    ssl = build_method(method, create_model(CNN, num_classes=0))
    online = ssl.backbone
    target = ssl.backbone_momentum if method == "byol" else ssl.teacher_backbone
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    before = [p.clone() for p in target.parameters()]
    ssl.momentum_update(0, 100)
    moved = [not torch.equal(a, b) for a, b in zip(before, target.parameters(), strict=True)]
    assert all(moved) and not any(p.requires_grad for p in target.parameters())
    exported = ssl.export_backbone()
    assert exported is (online if method == "byol" else target)  # DINO evaluates its teacher
    assert not any(k.startswith(("fc.", "head")) for k in exported.state_dict())


def test_views_are_sized_to_the_input():
    images = _images(2, size=48)
    for method in ("simclr", "byol"):
        views = _view_batch(method, images, size=40)
        assert len(views) == 2 and all(v.shape == (2, 3, 40, 40) for v in views)
    small = _view_batch("dino", images, size=32)  # small images: global crops only
    assert [v.shape[-1] for v in small] == [32, 32]
    large = _view_batch("dino", images, size=96)  # CNN at 96 px: 2 global + 6 local crops
    assert [v.shape[-1] for v in large] == [96, 96] + [40] * 6
    fixed = _view_batch("dino", images, size=96, fixed=True)  # a ViT takes one size only
    assert [v.shape[-1] for v in fixed] == [96, 96]
