"""Batched on-device augmentation: same shapes and value ranges as the per-image transforms,
and each op does what it says."""

from __future__ import annotations

import pytest
import torch

from clarivis.data.batch_augment import (
    BatchAugment,
    Normalize,
    random_hflip,
    random_resized_crop,
    random_translate,
)
from clarivis.data.transforms import Preprocess


def test_normalize_matches_mean_std_and_is_channels_last():
    pp = Preprocess(img_size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.full((2, 3, 8, 8), 255, dtype=torch.uint8)
    out = Normalize(pp, torch.device("cpu"))(x)
    assert torch.allclose(out, torch.full_like(out, 2.0))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_translate_shifts_each_image_by_at_most_pad_pixels():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 4] = 1.0  # one bright pixel in the centre
    out = random_translate(x, pad=2)
    ys, xs = [], []
    for img in out[:, 0]:
        (y, xx), = (img == 1).nonzero().tolist()
        ys.append(y)
        xs.append(xx)
    assert set(ys) <= set(range(2, 7)) and set(xs) <= set(range(2, 7))
    assert len(set(zip(ys, xs, strict=True))) > 5  # images get their own shifts


def test_hflip_flips_about_half_and_exactly():
    torch.manual_seed(0)
    x = torch.arange(16.0).view(1, 1, 1, 16).repeat(200, 1, 1, 1)
    out = random_hflip(x)
    flipped = (out[:, 0, 0, 0] == 15).sum().item()
    assert 70 < flipped < 130
    assert torch.equal(out[out[:, 0, 0, 0] == 15][0, 0, 0], x[0, 0, 0].flip(0))


def test_resized_crop_zooms_in():
    torch.manual_seed(0)
    x = torch.zeros(32, 1, 32, 32)
    x[:, :, 12:20, 12:20] = 1.0
    out = random_resized_crop(x)
    assert out.shape == x.shape
    assert out.mean() > x.mean()  # crops of >= 35% area enlarge the centre square on average


@pytest.mark.parametrize("augment", ["none", "light", "randaugment", "trivialaugment"])
@pytest.mark.parametrize("size", [32, 96])
def test_presets_keep_shape_and_range(augment, size):
    torch.manual_seed(0)
    pp = Preprocess(img_size=size)
    x = torch.randint(0, 256, (20, 3, size, size), dtype=torch.uint8)
    out = BatchAugment(pp, torch.device("cpu"), augment=augment, hflip=True)(x)
    assert out.shape == (20, 3, size, size) and out.dtype == torch.float32
    lo = (0 - max(pp.mean)) / min(pp.std)
    hi = (1 - min(pp.mean)) / min(pp.std)
    assert out.min() >= lo - 1e-4 and out.max() <= hi + 1e-4
    if augment == "none":
        assert torch.allclose(out, Normalize(pp, torch.device("cpu"))(x))


def test_resized_crop_of_the_whole_image_is_the_image_or_its_mirror():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 96, 96)
    out = random_resized_crop(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True)
    same = torch.isclose(out, x, atol=1e-5).flatten(1).all(1)
    mirrored = torch.isclose(out, x.flip(3), atol=1e-5).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 16 < int(mirrored.sum()) < 48  # about half are flipped


def test_resized_crop_takes_the_box_it_draws():
    """A box of a quarter of the area is half the side, shown 2x enlarged: a ramp of 1/127 per
    pixel becomes a ramp of half that slope."""
    torch.manual_seed(0)
    ramp = torch.linspace(0, 1, 128).view(1, 1, 1, 128).repeat(8, 1, 128, 1)
    out = random_resized_crop(ramp, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    slope = (out[:, 0, 64, 100] - out[:, 0, 64, 20]) / 80
    assert torch.allclose(slope, torch.full_like(slope, 0.5 / 127), rtol=0.02)
