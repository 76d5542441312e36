"""The runtime's Pillow preprocessing against the torchvision one predict uses (measured)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clarivis.data.dataset import pil_to_uint8
from clarivis.data.transforms import Preprocess, resize_transform
from clarivis.runtime.preprocess import RuntimePreprocess, normalize, resize

# Sizes that hit every branch: smaller than the input (upsampling), square, odd aspect ratios,
# large photos (strong downsampling), and the input size itself (no resize at all).
SIZES = [(31, 47), (64, 64), (100, 37), (513, 380), (20, 20), (32, 32), (240, 320)]


def _natural(h: int, w: int, rng) -> Image.Image:
    """Smooth colour regions plus sensor-like noise: what resizing meets in photos."""
    base = Image.fromarray(rng.integers(0, 255, (max(2, h // 8), max(2, w // 8), 3)).astype(np.uint8))
    arr = np.asarray(base.resize((w, h), Image.Resampling.BICUBIC)) + rng.normal(0, 20, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("mode", ["pad", "crop", "crop-0.875", "squash"])
@pytest.mark.parametrize("interp", ["bilinear", "bicubic", "nearest"])
def test_resize_matches_torchvision_within_rounding(mode, interp):
    """Measured: nearest is bit-exact; bilinear/bicubic differ by at most 1-5 grey levels on
    0.4-3.7 % of values (mean 0.004-0.04 levels), the rounding of Pillow's fixed-point filters
    against torch's (5 once: bicubic, crop_pct 0.875). Any geometric slip (offset, size,
    padding) would show as tens of levels."""
    rng = np.random.default_rng(0)
    mode, _, crop_pct = mode.partition("-")  # crop-0.875: timm's centre crop of pretrained weights
    pp = Preprocess(img_size=32, resize_mode=mode, interpolation=interp,
                    crop_pct=float(crop_pct or 1))
    rp = RuntimePreprocess(32, mode, pp.mean, pp.std, interp, crop_pct=pp.crop_pct)
    reference = resize_transform(pp)
    diffs = []
    for h, w in SIZES:
        image = _natural(h, w, rng)
        expected = reference(pil_to_uint8(image)).permute(1, 2, 0).numpy().astype(int)
        got = resize(image, rp)
        assert got.shape == (32, 32, 3) and got.dtype == np.uint8
        diffs.append(np.abs(expected - got.astype(int)).ravel())
    d = np.concatenate(diffs)
    if interp == "nearest":
        assert d.max() == 0
    else:
        assert d.max() <= 6 and d.mean() < 0.05


def test_normalize_matches_predicts_bits():
    import torch

    from clarivis.data.batch_augment import Normalize

    pp = Preprocess(img_size=8)
    rp = RuntimePreprocess(8, "pad", pp.mean, pp.std, "bilinear")
    batch = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
    expected = Normalize(pp, torch.device("cpu"))(torch.from_numpy(batch).permute(0, 3, 1, 2)).numpy()
    got = normalize(batch, rp)
    assert got.shape == (3, 3, 8, 8) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_letterbox_pads_with_the_mean_colour():
    rp = RuntimePreprocess(32, "pad", (0.5, 0.25, 0.0), (0.2, 0.2, 0.2), "bilinear")
    out = resize(Image.new("RGB", (64, 16), (0, 0, 0)), rp)  # 4:1 -> 32 x 8 band, centred
    assert tuple(out[0, 0]) == (128, 64, 0) and tuple(out[16, 16]) == (0, 0, 0)
